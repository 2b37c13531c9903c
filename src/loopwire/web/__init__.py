"""The web console: a read-only page of what arrived, what was delivered and what went wrong."""
