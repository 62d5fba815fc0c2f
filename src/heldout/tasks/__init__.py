"""Tasks: the data heldout trains and evaluates on, as train / val / test splits.

Importing this package registers the built-in tasks in :data:`heldout.registry.TASKS`.
"""

from heldout.core.inputs import InputSpec
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.bits import BitPatterns
from heldout.tasks.digits import Digits
from heldout.tasks.domains import (
    DigitsShift,
    DomainData,
    DomainSuite,
    LabelShift,
    MNIST1DShift,
    SpuriousCue,
    rotate_images,
)
from heldout.tasks.loaders import ImageFolderDomains, TableDomains
from heldout.tasks.mnist1d import MNIST1D
from heldout.tasks.modular import ModularArithmetic, modular_table
from heldout.tasks.regression import SingleIndexQuadratic
from heldout.tasks.tabular import BreastCancer, Moons
from heldout.tasks.xor import XORClusters

__all__ = [
    "MNIST1D",
    "BitPatterns",
    "BreastCancer",
    "Digits",
    "DigitsShift",
    "DomainData",
    "DomainSuite",
    "ImageFolderDomains",
    "InputSpec",
    "LabelShift",
    "MNIST1DShift",
    "ModularArithmetic",
    "Moons",
    "SingleIndexQuadratic",
    "Split",
    "Splits",
    "SpuriousCue",
    "TableDomains",
    "Task",
    "XORClusters",
    "modular_table",
    "rotate_images",
]
