"""Callbacks: what observes training without changing it (see :class:`heldout.core.Callback`)."""

from heldout.callbacks.grad_norms import GradNormReport, layer_gradient_norms

__all__ = ["GradNormReport", "layer_gradient_norms"]
