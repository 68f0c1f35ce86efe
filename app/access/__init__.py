"""Who a user is and what they may do: accounts, passwords, tokens, sessions, identity, rate
limits, the audit trail.
"""
