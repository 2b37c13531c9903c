"""The durable store: event log, per-destination outboxes, dead letters. SQLite is the embedded default."""

from loopwire.store.sqlite import Claimed, SentMemory, Settlement, Store

__all__ = ["Claimed", "SentMemory", "Settlement", "Store"]
