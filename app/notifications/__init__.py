"""Confirmations and reminders: planning, the outbox, delivery by e-mail and SMS."""
