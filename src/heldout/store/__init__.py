"""The runs store."""

from heldout.store.sqlite import RunRecord, Store, default_home

__all__ = ["RunRecord", "Store", "default_home"]
