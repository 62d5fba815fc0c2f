"""Techniques that change the training data or its features: augmentations and synthetic domains."""
