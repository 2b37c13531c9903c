"""Routing (which event goes where) and delivery (batch, retry, dead-letter)."""
