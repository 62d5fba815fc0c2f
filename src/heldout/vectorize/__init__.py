"""Vectorized seeds: K runs of one config that differ only in seed (and per-copy
hyper-parameters) trained as one stacked model with ``torch.func``."""
