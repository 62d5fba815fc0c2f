"""heldout: a PyTorch toolkit for the science and practice of generalization.

Techniques that make models generalize better (``heldout.methods``), measures of
generalization (``heldout.measures``), a Trainer they plug into (``heldout.engine``), a runs
store, and the claims ledger that re-checks the literature's headline claims.
"""

__version__ = "0.1.0"

from heldout.config import ConfigError, RunConfig, load_config, parse_overrides  # noqa: E402
from heldout.engine import Technique, Trainer  # noqa: E402
from heldout.registry import (  # noqa: E402
    CLAIMS,
    MEASURES,
    MODELS,
    TASKS,
    TECHNIQUES,
    UnknownNameError,
)

__all__ = [
    "CLAIMS",
    "MEASURES",
    "MODELS",
    "TASKS",
    "TECHNIQUES",
    "ConfigError",
    "RunConfig",
    "Technique",
    "Trainer",
    "UnknownNameError",
    "__version__",
    "load_config",
    "parse_overrides",
]
