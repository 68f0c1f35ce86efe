"""The waitlist: patients waiting for an earlier time, and the offers that refill freed slots."""
