"""Multi-domain tasks: the convention (:class:`DomainSuite`) and the built-in shift suites."""

from heldout.tasks.domains.base import DomainData, DomainSuite
from heldout.tasks.domains.label_shift import LabelShift
from heldout.tasks.domains.shifted import DigitsShift, MNIST1DShift, rotate_images
from heldout.tasks.domains.spurious import SpuriousCue

__all__ = [
    "DigitsShift",
    "DomainData",
    "DomainSuite",
    "LabelShift",
    "MNIST1DShift",
    "SpuriousCue",
    "rotate_images",
]
