"""A config assembled into a run: the task's splits, the seeded model, the optimizer, the
techniques, measures and callbacks (each the object the config's check built), as a Trainer."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from heldout.config import (
    Component,
    ConfigError,
    OptimizerConfig,
    RunConfig,
    config_from_dict,
)
from heldout.core.state import Logger
from heldout.engine.checkpoint import has_checkpoint, load_checkpoint
from heldout.engine.trainer import (
    Trainer,
    cross_entropy,
    mse_to_one_hot,
)
from heldout.registry import CALLBACKS, MEASURES, MODELS, TASKS, TECHNIQUES
from heldout.store.sqlite import Store

__all__ = ["build", "check_init_from", "evaluation_model", "make_optimizer", "seed_everything"]


def make_optimizer(cfg: OptimizerConfig):
    """A factory ``params → torch.optim.Optimizer`` for the base optimizer of ``cfg``."""

    def factory(params):
        if cfg.name == "sgd":
            return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum,
                                   nesterov=cfg.nesterov, weight_decay=cfg.weight_decay)
        cls = torch.optim.AdamW if cfg.name == "adamw" else torch.optim.Adam
        return cls(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps,
                   weight_decay=cfg.weight_decay)

    return factory


def check_init_from(cfg: RunConfig, store: Store) -> Path | None:
    """The checkpoint that ``cfg.init_from`` names (None without ``init_from``); a run that
    is unknown, unfinished or has no checkpoint file is a one-line :class:`ConfigError`."""
    if not cfg.init_from:
        return None
    try:
        record = store.get_run(cfg.init_from)
    except KeyError as err:
        raise ConfigError(f"init_from: {err.args[0]}") from None
    if record.status != "done":
        raise ConfigError(f"init_from: needs a finished run; run {record.id} is {record.status}")
    checkpoint = store.checkpoint_path(record.id)
    if not has_checkpoint(checkpoint):
        raise ConfigError(f"init_from: run {record.id} has no checkpoint ({checkpoint} is "
                          "missing)")
    return checkpoint


def _load_weights(model: torch.nn.Module, cfg: RunConfig, store: Store) -> None:
    checkpoint = check_init_from(cfg, store)
    assert checkpoint is not None and cfg.init_from  # called only with init_from set
    record = store.get_run(cfg.init_from)
    state = load_checkpoint(checkpoint, digests=store.checkpoint_digests(record.id))["model"]
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ValueError(f"init_from {cfg.init_from}: its weights do not fit this model "
                         f"({str(err).splitlines()[0]})") from None


def _build(registry, component: Component) -> Any:
    return component.take(registry)  # the object checking the config built, if not yet used


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build(
    cfg: RunConfig,
    *,
    checkpoint_path: Any = None,
    loggers: Sequence[Logger] = (),
    device: Any = None,
    store: Store | None = None,
) -> Trainer:
    """The Trainer for ``cfg``: task splits, seeded model, optimizer, techniques, measures.
    With ``cfg.init_from`` the model starts from that run's final weights (from ``store``)."""
    task = _build(TASKS, cfg.task)
    splits = task.splits(cfg.seed)
    seed_everything(cfg.seed)
    model = _build(MODELS, cfg.model).build(splits.input, splits.num_classes)
    if cfg.init_from:
        _load_weights(model, cfg, store or Store())
    dtype = getattr(torch, cfg.loss_dtype)
    if splits.regression:
        def loss_fn(outputs, targets):
            return F.mse_loss(outputs.to(dtype), targets.to(dtype))
    elif cfg.loss == "mse":
        def loss_fn(logits, targets):
            return mse_to_one_hot(logits, targets, dtype)
    else:
        def loss_fn(logits, targets):
            return cross_entropy(logits, targets, dtype)
    trainer = Trainer(
        model,
        make_optimizer(cfg.optimizer),
        splits.train,
        max_steps=cfg.steps,
        eval_data=dict(splits.items()),
        techniques=[_build(TECHNIQUES, t) for t in cfg.techniques],
        measures=[_build(MEASURES, m) for m in cfg.measures],
        callbacks=[_build(CALLBACKS, c) for c in cfg.callbacks],
        loss_fn=loss_fn,
        batch_size=cfg.batch_size,
        eval_every=cfg.eval_every,
        checkpoint_every=cfg.checkpoint_every,
        checkpoint_path=checkpoint_path,
        loggers=loggers,
        seed=cfg.seed,
        device=device,
        precision=cfg.precision,
    )
    for technique in trainer.techniques:
        technique.resolve_runs(lambda run, home: evaluation_model(
            run, Store(home) if home else store or Store()))
    return trainer


def finished_trainer(run: str, store: Store) -> tuple[Trainer, torch.nn.Module]:
    """A finished run's Trainer at its last checkpoint (its data in ``eval_data``) and the
    model it evaluates with (the weights its techniques evaluate, e.g. an EMA average), in
    eval mode."""
    record = store.get_run(run)
    if record.status != "done":
        raise ValueError(f"run {record.id} is {record.status}, not done")
    trainer = build(config_from_dict(record.config), store=store,
                    checkpoint_path=store.checkpoint_path(record.id))
    trainer.resume(digests=store.checkpoint_digests(record.id))
    model = next((m for t in trainer.techniques if (m := t.eval_model(trainer.state)) is not None),
                 trainer.model)
    return trainer, model.eval()


def evaluation_model(run: str, store: Store) -> torch.nn.Module:
    """The model a finished run evaluates with (see :func:`finished_trainer`)."""
    return finished_trainer(run, store)[1]
