"""Augmentation techniques: batch transforms plugged in through
:class:`heldout.core.augment.Augmentation` (random-field, style and synthetic-domain
augmentations)."""
