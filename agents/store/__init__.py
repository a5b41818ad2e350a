"""SQLite persistence: the hash-chained event log and the projections derived from it."""

from agents.store.store import GENESIS, Store, StoredEvent, StoreError, chain_hash

__all__ = ["GENESIS", "Store", "StoreError", "StoredEvent", "chain_hash"]
