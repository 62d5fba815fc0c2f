"""The runs store."""

from heldout.store.sqlite import (
    Lease,
    LeaseLost,
    RunFinishedError,
    RunLeased,
    RunRecord,
    Store,
    StoreError,
    default_home,
)

__all__ = ["Lease", "LeaseLost", "RunFinishedError", "RunLeased", "RunRecord", "Store",
           "StoreError", "default_home"]
