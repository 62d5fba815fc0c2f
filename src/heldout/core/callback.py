"""The extension point for what only watches training: :class:`Callback`.

A callback has the Trainer's event hooks, runs after the techniques at every event, and changes
no part of training: it reads the :class:`~heldout.core.state.State` (model, gradients, batch,
step) and may add its own metrics to an evaluation's. It takes no part in the techniques'
combination checks, so any number of callbacks observe any combination of techniques. State that
must survive a resume goes through ``state_dict`` / ``load_state_dict``, as for techniques.

Example:
    >>> import torch
    >>> from heldout.engine import Trainer
    >>> class LossAtEval(Callback):
    ...     def on_eval(self, state, metrics):
    ...         if state.loss is not None:
    ...             metrics["watch/loss"] = float(state.loss)
    >>> model = torch.nn.Linear(2, 2)
    >>> x, y = torch.randn(8, 2), torch.randint(0, 2, (8,))
    >>> history = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y),
    ...                   max_steps=2, eval_every=1, eval_data={"train": (x, y)},
    ...                   callbacks=[LossAtEval()]).fit()
    >>> [("watch/loss" in metrics) for _, metrics in history]
    [False, True, True]
"""

from __future__ import annotations

from heldout.core.hooks import EventHooks

__all__ = ["Callback"]


class Callback(EventHooks):
    """Base of the registered callbacks (subclasses are dataclasses of their parameters).

    Hooks (all optional): ``on_fit_start``, ``on_batch_start``, ``on_after_backward``,
    ``on_after_step``, ``on_eval`` (may add entries to ``metrics``), ``on_fit_end``; state
    through ``state_dict`` / ``load_state_dict`` (see :class:`~heldout.core.hooks.EventHooks`).
    """

    component_kind = "callback"
