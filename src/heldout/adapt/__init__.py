"""Test-time and transductive adaptation: the registered adapters
(:data:`~heldout.registry.ADAPTERS`).

Importing this package registers the built-in adapters. The base class and its contract are
in :mod:`heldout.core.adapter`; running an adapter over a held-out domain with checkpoints and
records in the store is :mod:`heldout.run.adaptation`.
"""

from heldout.adapt.normalization import AlphaBN, BNAdapt, SourceModel, Tent, mixed_batch_norm

__all__ = ["AlphaBN", "BNAdapt", "SourceModel", "Tent", "mixed_batch_norm"]
