"""Techniques that change the training data or its features to hold up on unseen domains:
batch transforms plugged in through :class:`heldout.core.augment.Augmentation` (random
fields, random convolutions, AdaIN recombination, conditioned synthesis, rare compositions)
and feature-statistics perturbations (AdvStyle, MixStyle)."""
