"""The Trainer's events, and the order in which techniques act on them.

Events reference — the whole loop as pseudocode (see ``Trainer.fit`` for the real thing)::

    model = technique.transform_model(model)        # for each technique, in list order (build)
    optimizer = technique.wrap_optimizer(optimizer)  # gradient wrappers first, step strategy last
    FIT_START                                        # on_fit_start, in list order
    while step < max_steps:
        batch = next(batches)                        # full batch, tensor minibatch or DataLoader
        BATCH_START                                  # on_batch_start, in list order
        def closure():                               # the optimizer may call it more than once
            optimizer.zero_grad()
            logits = model(x)
            loss = technique.loss(logits, y, state)  # the one loss technique, else the default CE
            loss += technique.loss_term(logits, y, state)   # every added term, in list order
            loss.backward()
            AFTER_BACKWARD                           # on_after_backward, in list order
            return loss
        loss = optimizer.step(closure)               # SAM et al. call closure twice
        if loss is not finite: stop, run failed, last good checkpoint kept
        step += 1
        AFTER_STEP                                   # on_after_step, in REVERSE list order
        if step % eval_every == 0 or step == max_steps:
            eval_model = technique.eval_model(state) or model   # EMA weights, say
            metrics = measures on every split
            EVAL                                     # on_eval, in REVERSE list order
            loggers.log(step, metrics)
        if step % checkpoint_every == 0 or step == max_steps:
            CHECKPOINT                               # model, optimizer, techniques, RNG, data
    FIT_END                                          # on_fit_end, in REVERSE list order

"After" events run in reverse so that paired changes unwind like a stack (as in Composer).
The evaluation at step 0 runs before the first batch. At every event the callbacks
(:class:`~heldout.core.callback.Callback`, observers that change nothing) run after the
techniques, in list order.
"""

from __future__ import annotations

import enum

__all__ = ["REVERSED_EVENTS", "Event"]


class Event(enum.Enum):
    """A point in the training loop at which a technique may act (and a callback observe)."""

    FIT_START = "on_fit_start"
    BATCH_START = "on_batch_start"
    AFTER_BACKWARD = "on_after_backward"
    AFTER_STEP = "on_after_step"
    EVAL = "on_eval"
    FIT_END = "on_fit_end"


REVERSED_EVENTS = frozenset({Event.AFTER_STEP, Event.EVAL, Event.FIT_END})
