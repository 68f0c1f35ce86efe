"""Booking, rescheduling and status changes of appointments, and the rules they follow."""
