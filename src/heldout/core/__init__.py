"""The floor every layer stands on; it imports nothing else of heldout.

What training, measures, techniques, callbacks and the store share: the run's :class:`State`,
the :class:`Logger` protocol, the :class:`Technique` and :class:`Measure` extension points (with
:class:`EvalContext` and :func:`evaluate`), :func:`eval_mode`, a ``functional_call`` that leaves
models as it found them, per-example gradients, and seeded sampling.
"""

from heldout.core.callback import Callback
from heldout.core.digest import file_sha256
from heldout.core.functional import functional_call
from heldout.core.hooks import EventHooks
from heldout.core.measure import EvalContext, Measure, eval_mode, evaluate
from heldout.core.per_example import (
    iter_per_example_gradients,
    per_example_gradients,
    per_example_loss,
)
from heldout.core.sampling import sample_indices, stream_generator
from heldout.core.state import Batch, Logger, State
from heldout.core.technique import (
    EXCLUSIVE,
    TOUCHES,
    CombinationError,
    Technique,
    check_combination,
)

__all__ = [
    "EXCLUSIVE",
    "TOUCHES",
    "Batch",
    "Callback",
    "CombinationError",
    "EvalContext",
    "EventHooks",
    "Logger",
    "Measure",
    "State",
    "Technique",
    "check_combination",
    "eval_mode",
    "evaluate",
    "file_sha256",
    "functional_call",
    "iter_per_example_gradients",
    "per_example_gradients",
    "per_example_loss",
    "sample_indices",
    "stream_generator",
]
