"""The Trainer: a short loop that techniques extend through events (see ``events.py``).

It accepts any ``nn.Module``, any ``torch.optim.Optimizer`` (or a factory for one), and
training data as full-batch tensors, a ``Split``, or a ``DataLoader``.

Example:
    >>> model = torch.nn.Linear(4, 3)
    >>> x, y = torch.randn(32, 4), torch.randint(0, 3, (32,))
    >>> trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y),
    ...                   max_steps=5, eval_data={"train": (x, y)})
    >>> history = trainer.fit()
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.augment import augmentation_generator
from heldout.core.callback import Callback
from heldout.core.measure import Measure, NonFiniteOutputError, evaluate
from heldout.core.state import Logger, State
from heldout.core.technique import Technique, check_combination
from heldout.engine.checkpoint import capture_rng, load_checkpoint, restore_rng, save_checkpoint
from heldout.engine.data import make_batches
from heldout.engine.events import REVERSED_EVENTS, Event

__all__ = ["Logger", "NonFiniteLossError", "State", "Trainer", "cross_entropy", "mse_to_one_hot"]

PRECISIONS = ("float32", "bf16-mixed")  # see Trainer._forward
OptimizerLike = torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


class NonFiniteLossError(RuntimeError):
    """The loss, or the model's outputs at an evaluation, became NaN or infinite; the run
    stops at ``step``. ``checkpoint_kept`` says whether a checkpoint saved before that step
    is kept (None: not known, so the message does not say)."""

    def __init__(self, step: int, loss: float, checkpoint_kept: bool | None = None,
                 what: str | None = None) -> None:
        kept = {True: ", its last good checkpoint is kept",
                False: "; no checkpoint was saved before it", None: ""}[checkpoint_kept]
        super().__init__(f"{what or f'non-finite loss ({loss})'} at step {step}; the run "
                         f"stopped{kept}")
        self.step = step
        self.loss = loss


def cross_entropy(logits: Tensor, targets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """Softmax cross-entropy computed in ``dtype`` (float64 delays Softmax Collapse)."""
    return F.cross_entropy(logits.to(dtype), targets)


def mse_to_one_hot(logits: Tensor, targets: Tensor,
                   dtype: torch.dtype = torch.float32) -> Tensor:
    """Mean over all N·K entries of (z − one_hot(y))²: the square loss of the modular-arithmetic
    and local-complexity papers (Doshi et al. arXiv:2310.13061; Humayun et al.
    arXiv:2402.15555)."""
    one_hot = F.one_hot(targets.long(), logits.shape[-1]).to(dtype)
    return F.mse_loss(logits.to(dtype), one_hot)


class Trainer:
    """Train ``model`` with ``optimizer`` on ``train`` for ``max_steps`` optimizer steps.

    ``precision="bf16-mixed"`` runs the training forward under bfloat16 autocast (weights,
    gradients, optimizer state and the loss stay float32); evaluation and measures always run
    in float32, so what a run reports does not depend on the precision it trained in.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: OptimizerLike,
        train: Any,
        *,
        max_steps: int,
        eval_data: Mapping[str, Any] | None = None,
        techniques: Sequence[Technique] = (),
        measures: Sequence[Measure] | None = None,
        callbacks: Sequence[Callback] = (),
        loss_fn: Callable[[Tensor, Tensor], Tensor] = cross_entropy,
        batch_size: int | None = None,
        eval_every: int = 10,
        checkpoint_every: int | None = None,
        checkpoint_path: str | Path | None = None,
        loggers: Sequence[Logger] = (),
        seed: int = 0,
        device: Any = None,
        precision: str = "float32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r}; valid: {', '.join(PRECISIONS)}")
        self.precision = precision
        self.techniques = list(techniques)
        check_combination(self.techniques)
        self.callbacks = list(callbacks)
        self.device = torch.device(device) if device is not None else None
        for technique in self.techniques:
            model = technique.transform_model(model)
        self.model = model.to(self.device) if self.device is not None else model
        base = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(
            self.model.parameters()
        )
        _check_optimizer_covers(self.model, base)
        # the weights before training, for measures relative to the initialization
        self.initial_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        order = {"optimizer": 0, "gradients": 1, "step": 2}
        wrappers = sorted(
            (t for t in self.techniques if t.touches & set(order)),
            key=lambda t: min(order[p] for p in t.touches & set(order)),
        )
        for technique in wrappers:  # gradient wrappers inside, the step strategy outermost
            base = technique.wrap_optimizer(base, self.model)
        self.optimizer: Any = base  # a torch optimizer or a wrapper: step(closure) -> loss
        self.loss_technique = next((t for t in self.techniques if "loss" in t.touches), None)
        self.loss_terms = [t for t in self.techniques if "loss_term" in t.touches]
        self.loss_fn = loss_fn
        self.batches = make_batches(train, batch_size, seed, self.device)
        self.eval_data = dict(eval_data or {})
        if measures is None:
            from heldout.measures import default_measures

            measures = default_measures()
        self.measures = list(measures)
        self.eval_every = eval_every
        self.checkpoint_every = checkpoint_every
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path else None
        self.loggers = list(loggers)
        self.history: list[tuple[int, dict[str, float]]] = []
        self.state = State(self.model, self.optimizer, max_steps, **self.batches.sizes(),
                           train_data=getattr(self.batches, "tensors", None),
                           train_groups=_train_groups(train, self.device), seed=seed)
        self.augmentations = [t for t in self.techniques if "augment" in t.touches]
        self.state.acted = {
            e.value: [t.name for t in self.techniques if _overrides(t, e.value)] for e in Event
        }
        self.seconds = 0.0

    # ------------------------------------------------------------------------ the loop
    def fit(self) -> list[tuple[int, dict[str, float]]]:
        """Train to ``max_steps`` (from the current step, after a resume) and return history."""
        state, model, optimizer = self.state, self.model, self.optimizer
        started = time.perf_counter()
        self._fire(Event.FIT_START)
        if state.step == 0:
            self._evaluate()
        model.train()

        def closure() -> Tensor:
            optimizer.zero_grad(set_to_none=True)
            x, y, _ = state.batch  # type: ignore[misc]
            loss = self._loss(self._forward(x), y)
            loss.backward()  # type: ignore[no-untyped-call]  # torch leaves it unannotated
            self._fire(Event.AFTER_BACKWARD)
            return loss

        while state.step < state.max_steps:
            state.epoch = self.batches.epoch
            state.batch = next(self.batches)
            self._fire(Event.BATCH_START)
            if self.augmentations:
                self._augment()
            loss = optimizer.step(closure)
            state.loss = loss.detach()
            if not math.isfinite(value := float(state.loss)):
                self.seconds += time.perf_counter() - started
                raise NonFiniteLossError(state.step + 1, value, self._checkpoint_kept())
            state.step += 1
            self._fire(Event.AFTER_STEP)
            if state.step % self.eval_every == 0 or state.step == state.max_steps:
                self._evaluate()
            if self._checkpoint_due():
                self.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.save_checkpoint()
        self._fire(Event.FIT_END)
        self.seconds += time.perf_counter() - started
        return self.history

    # ------------------------------------------------------------------------ pieces
    def _augment(self) -> None:
        """Apply the augmentations to the drawn batch, each with its generator of this step
        (:func:`~heldout.core.augment.augmentation_generator`)."""
        state = self.state
        x, y, index = state.batch  # type: ignore[misc]
        groups = None
        if state.train_groups is not None and index is not None:
            groups = state.train_groups[index.to(state.train_groups.device)].to(x.device)
        for technique in self.augmentations:
            generator = augmentation_generator(state.seed, technique.name, state.step,
                                               x.device)
            x, y = technique.augment(x, y, generator, groups)  # type: ignore[attr-defined]
        state.batch = (x, y, index)

    def _forward(self, x: Tensor) -> Tensor:
        """The training forward: under bfloat16 autocast for ``precision="bf16-mixed"`` (the
        logits come back as float32, so losses and techniques see full precision)."""
        if self.precision == "float32":
            return cast(Tensor, self.model(x))
        device = self.device or next(self.model.parameters(), x).device
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return cast(Tensor, self.model(x).float())

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        if self.loss_technique is not None:
            loss = self.loss_technique.loss(logits, targets, self.state)
        else:
            loss = self.loss_fn(logits, targets)
        for technique in self.loss_terms:
            loss = loss + technique.loss_term(logits, targets, self.state)
        return loss

    def _fire(self, event: Event, *args: Any) -> None:
        techniques = reversed(self.techniques) if event in REVERSED_EVENTS else self.techniques
        for technique in techniques:
            getattr(technique, event.value)(self.state, *args)
        for callback in self.callbacks:  # observers last, once the techniques have acted
            getattr(callback, event.value)(self.state, *args)

    def measure(self, measures: Sequence[Measure] | None = None,
                splits: Sequence[str] | None = None,
                outputs: Mapping[str, tuple[Tensor, Tensor]] | None = None) -> dict[str, float]:
        """Compute ``measures`` (default: the Trainer's) on ``splits`` (default: all) with the
        weights evaluation uses (an EMA average, say), without logging. ``outputs``: logits
        and targets of some splits already computed with those weights (see
        :func:`~heldout.measures.evaluate`)."""
        eval_model = next(
            (m for t in self.techniques if (m := t.eval_model(self.state)) is not None),
            self.model,
        )
        data = self.eval_data if splits is None else {s: self.eval_data[s] for s in splits}
        return evaluate(eval_model, data, self.measures if measures is None else measures,
                        device=self.device, initial_state=self.initial_state, outputs=outputs)

    def _evaluate(self) -> None:
        state = self.state
        try:
            metrics = self.measure()
        except NonFiniteOutputError as err:  # diverged between two losses: stop as non-finite
            raise NonFiniteLossError(state.step, math.nan, self._checkpoint_kept(),
                                     what=f"non-finite outputs at evaluation ({err})") from None
        if state.loss is not None:
            metrics["train/step_loss"] = float(state.loss)
        state.metrics = metrics
        self._fire(Event.EVAL, metrics)
        self.history.append((state.step, metrics))
        for logger in self.loggers:
            logger.log(state.step, metrics)

    def _checkpoint_kept(self) -> bool:
        return self.checkpoint_path is not None and self.checkpoint_path.exists()

    def _checkpoint_due(self) -> bool:
        if self.checkpoint_path is None:
            return False
        step = self.state.step
        every = self.checkpoint_every or self.state.max_steps
        return step % every == 0 or step == self.state.max_steps

    # ------------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-identically: weights, optimizer (wrappers
        included), technique and measure state, data position, global RNG states, the step,
        and the metric history so far (so no evaluation is lost with a killed process)."""
        return {
            "step": self.state.step,
            "model": self.model.state_dict(),
            "initial_model": self.initial_state,
            "optimizer": self.optimizer.state_dict(),
            "techniques": {t.name: t.state_dict() for t in self.techniques},
            "callbacks": {c.name: c.state_dict() for c in self.callbacks},
            "measures": [m.state_dict() for m in self.measures],
            "history": [[step, dict(metrics)] for step, metrics in self.history],
            "batches": self.batches.state_dict(),
            "rng": capture_rng(),
            "loss": None if self.state.loss is None else self.state.loss.cpu(),
        }

    def load_state_dict(self, ckpt: Mapping[str, Any]) -> None:
        self.model.load_state_dict(ckpt["model"])
        self.initial_state = ckpt["initial_model"]
        self.optimizer.load_state_dict(ckpt["optimizer"])
        saved = ckpt["techniques"]
        names = [t.name for t in self.techniques]
        if sorted(saved) != sorted(names):
            raise ValueError(f"checkpoint has techniques {sorted(saved)}, trainer has {names}")
        for technique in self.techniques:
            technique.load_state_dict(saved[technique.name])
        watched = ckpt.get("callbacks", {})  # checkpoints written before callbacks have none
        for callback in self.callbacks:
            if callback.name in watched:
                callback.load_state_dict(watched[callback.name])
        if len(ckpt["measures"]) != len(self.measures):
            raise ValueError(f"checkpoint has {len(ckpt['measures'])} measure states, trainer "
                             f"has {len(self.measures)} measures")
        for measure, state in zip(self.measures, ckpt["measures"], strict=True):
            measure.load_state_dict(state)
        self.batches.load_state_dict(ckpt["batches"])  # may replay RNG: restore RNG after
        restore_rng(ckpt["rng"])
        self.state.step = ckpt["step"]
        self.state.loss = ckpt["loss"]
        self.history = [(int(step), dict(metrics)) for step, metrics in ckpt.get("history", [])]

    def save_checkpoint(self, path: str | Path | None = None) -> Path:
        """Save :meth:`state_dict` atomically, keeping the previous checkpoint. Loggers are
        flushed first; a logger with ``checkpointed(step, sha256)`` hears of the new file
        before it replaces the old one (the store records its digest there)."""
        for logger in self.loggers:  # metrics reach the store before the checkpoint does
            logger.flush()
        target = Path(path) if path else self.checkpoint_path
        if target is None:
            raise ValueError("no checkpoint path given")
        step = self.state.step

        def written(sha256: str) -> None:
            for logger in self.loggers:
                if hasattr(logger, "checkpointed"):
                    logger.checkpointed(step, sha256)

        return save_checkpoint(self.state_dict(), target, on_written=written)

    def resume(self, path: str | Path | None = None, *,
               digests: Collection[str] | None = None) -> int:
        """Load the checkpoint at ``path`` (default: ``checkpoint_path``), or the previous
        one if it is unusable (see :func:`~heldout.engine.checkpoint.load_checkpoint`);
        return its step."""
        target = Path(path) if path else self.checkpoint_path
        if target is None:
            raise ValueError("no checkpoint path given")
        self.load_state_dict(load_checkpoint(target, digests=digests))
        return self.state.step


def _overrides(technique: Technique, hook: str) -> bool:
    return getattr(type(technique), hook) is not getattr(Technique, hook)


def _train_groups(train: Any, device: Any) -> Tensor | None:
    groups = getattr(train, "groups", None)
    if not isinstance(groups, Tensor):
        return None
    return groups.to(device) if device is not None else groups


def _check_optimizer_covers(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    known = {id(p) for group in optimizer.param_groups for p in group["params"]}
    missing = [n for n, p in model.named_parameters() if p.requires_grad and id(p) not in known]
    if missing:
        raise ValueError(
            f"the optimizer does not hold the model parameters {missing[:5]}: a model transform "
            "replaced them; pass an optimizer factory, e.g. lambda params: AdamW(params, lr=...)"
        )
