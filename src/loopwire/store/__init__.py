"""The durable store: event log, per-destination outboxes, dead letters. SQLite is the embedded default."""

from loopwire.store.sqlite import Appender, Claimed, SentMemory, Settlement, Store

__all__ = ["Appender", "Claimed", "SentMemory", "Settlement", "Store"]
