"""Live updates: what a commit publishes, the per-process websocket hub, the read models of the
live pages.
"""
