"""The console's pages: each module gathers what it shows (called in a thread: it reads the store)
and renders it (pure, escaped HTML)."""
