"""The training engine: Trainer, events, techniques' extension point, checkpoints."""

from heldout.core.state import Logger, State
from heldout.core.technique import EXCLUSIVE, TOUCHES, CombinationError, Technique
from heldout.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from heldout.engine.data import LoaderBatches, TensorBatches, make_batches
from heldout.engine.events import Event
from heldout.engine.trainer import NonFiniteLossError, Trainer, cross_entropy

__all__ = [
    "EXCLUSIVE",
    "TOUCHES",
    "CombinationError",
    "Event",
    "LoaderBatches",
    "Logger",
    "NonFiniteLossError",
    "State",
    "Technique",
    "TensorBatches",
    "Trainer",
    "capture_rng",
    "cross_entropy",
    "load_checkpoint",
    "make_batches",
    "restore_rng",
    "save_checkpoint",
]
