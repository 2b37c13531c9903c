"""The durable store: event log, per-destination outboxes, dead letters. SQLite is the embedded default."""

from loopwire.store.sqlite import Claimed, Settlement, Store

__all__ = ["Claimed", "Settlement", "Store"]
