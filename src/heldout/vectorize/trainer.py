"""Vectorized seeds: train K copies of a small model in one process with ``torch.func``.

The copies differ in ``seed`` and optionally in ``optimizer.lr`` / ``optimizer.weight_decay``
and the per-copy hyper-parameters of their techniques (each technique that vectorizes declares
them in ``vectorizable`` and its action on the stack in ``stacked_rule``, see
:mod:`heldout.core.stacked`; :func:`vectorizable_techniques` lists them); everything else in
their configs is equal.
Each copy is built exactly as :func:`heldout.run.assembly.build` builds it alone (the task splits
from its seed, then ``seed_everything(seed)``, then the model), so the initial weights, the training
data and the minibatch order are the ones of the separate run. Then:

* the copies' parameters are stacked along a new leading dimension
  (``torch.func.stack_module_state``), kept as the columns of one (K, P) tensor, and the K
  logits are one call of ``torch.vmap(functional_call(model, params, x))`` (for MLPs, a
  forward written with batched matrix products), then each copy's loss (cross-entropy, label
  smoothing with its ε, or the runner's loss vmapped): each copy sees its
  own batch (its own split when the data depends on the seed; minibatches gathered with its own
  per-epoch order, the permutation its ``TensorBatches`` draws);
* row ``k`` of the gradient of the summed losses is the gradient of copy ``k``'s loss alone
  (with an ascent rule such as SAM's, a second gradient is taken at ``w + e``, ``e`` computed
  per copy as :meth:`heldout.methods.SAM.first_step` does, and the weights return to ``w``),
  and the optimizer update (SGD with momentum / dampening / Nesterov, Adam, AdamW) is written
  out on the (K, P) tensor op for op as torch's single-tensor implementations do it (L2 or
  decoupled decay, ``lerp`` of the first moment, bias corrections, ``eps`` added after the
  square root and its bias correction): every op is elementwise, so fed the same gradients it
  equals K torch optimizers bit for bit. A hyper-parameter shared by all copies is a Python
  scalar, exactly as in torch; one that differs (lr, weight decay) is a (K, 1) float64 column,
  cast to float32 where torch casts its scalar; the techniques' stacked rules then act after
  the step (EMA: a second (K, P) tensor of the copies' averages, one ``lerp`` per step,
  evaluated in place of the weights when the technique evaluates the average);
* at step 0, every ``eval_every`` steps and the last step each copy's weights are copied into
  its own module and evaluated with the regular :func:`heldout.measures.evaluate` (through its
  own Trainer, so stateful measures and measures relative to the initialization behave as in
  the separate run); each copy keeps its own global-RNG state (torch, NumPy, Python; not
  CUDA's), restored around its evaluations, so measures that draw random numbers see the stream
  the separate run gives them;
* every copy is its own run in the store, written like :func:`heldout.run.execute.execute` writes
  it: ``create_run`` → ``start_run`` → metrics of each evaluation (with ``train/step_loss``
  after step 0) → final checkpoint (the :meth:`Trainer.state_dict` format, so ``heldout
  resume``, ``init_from`` and post-hoc measures work on it) → ``finish_run``.

The metric history of each copy equals the separate run's to float rounding (a batched matrix
product may round differently from the plain one; about 1e-7 relative in the tests), not bit
for bit.

Checkpoints and resume: every ``checkpoint_every`` steps and at the end each copy writes its
checkpoint, as the run alone would (metrics first); a killed group, run again, continues from
its copies' last checkpoints when every copy has one at the same step — its metrics then
end exactly as the uninterrupted group's — and otherwise deletes the partial set and starts
the copies over together. Between checkpoints, metrics reach the store every
:data:`FLUSH_SECONDS` (the checkpoints carry the history, which a resumed group writes again).
Runs already ``done`` are skipped. A copy whose loss becomes non-finite is marked ``failed`` at
that step, with the Trainer's message, keeping its last good checkpoint, and the others go on.
Each copy records the group's training time divided by the number of copies as its
``seconds``.

What is faster: one vmapped step replaces K small steps, so the gain is the per-step overhead
(Python, dispatch) of K - 1 runs; a step whose arithmetic dominates (large batches on a CPU)
gains little. Evaluation, the store writes and the checkpoints stay per copy.

Example:
    >>> from heldout.config import RunConfig
    >>> configs = [RunConfig(seed=s, steps=50) for s in range(8)]
    >>> can_vectorize(configs)
    (True, '')
    >>> # skipped: trains 8 runs into a store
    >>> results = train_vectorized(configs, store)  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import json
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import stack_module_state

from heldout.config import RunConfig, config_to_dict
from heldout.core.functional import functional_call
from heldout.core.stacked import Stack, StackedRule, cast, per_copy
from heldout.engine.checkpoint import load_checkpoint
from heldout.engine.data import TensorBatches
from heldout.engine.trainer import NonFiniteLossError, Trainer
from heldout.models.layers import Square, TokenLinear
from heldout.models.mlp import MLPNetwork
from heldout.registry import MODELS, TASKS, TECHNIQUES
from heldout.run.assembly import build
from heldout.run.execute import ProgressPrinter, RunResult
from heldout.run.recorder import RunRecorder
from heldout.store.sqlite import Store

__all__ = ["can_vectorize", "train_vectorized", "vectorizable_techniques", "vectorization_key"]

# Metrics of the copies reach the store at most this often, and before each checkpoint: a
# killed group resumes from its checkpoints, which carry the history, so writing every
# evaluation at once buys nothing.
FLUSH_SECONDS = 10.0

# Each finished copy records the group it was trained in (the run ids, its index) in this file
# of its run directory, stored as the artifact "vectorized_group".
GROUP_NAME = "vectorized_group.json"

# Examples per copy in one stacked forward at evaluation (the measures' default chunk).
EVAL_CHUNK = 8192

_OPTIMIZERS = (torch.optim.SGD, torch.optim.Adam)  # AdamW is an Adam (decoupled weight decay)


# ----------------------------------------------------------------------------- the check

def vectorizable_techniques() -> dict[str, frozenset[str]]:
    """The registered techniques that vectorize, each with the hyper-parameters in which the
    copies may differ (what each technique declares in ``vectorizable``)."""
    out = {}
    for entry in TECHNIQUES.entries():
        fields = getattr(entry.cls, "vectorizable", None)
        if fields is not None:
            out[entry.name] = fields
    return out


def per_copy_fields() -> str:
    """The config fields copies may differ in, for messages and help: ``seed, name, ...``."""
    techniques = [f"techniques.{name}.{field}" for name, fields in
                  vectorizable_techniques().items() for field in sorted(fields)]
    return ", ".join(["seed", "name", "optimizer.lr", "optimizer.weight_decay", *techniques])


def vectorization_key(cfg: RunConfig) -> dict[str, Any]:
    """The config without the fields copies may differ in: seed, name, optimizer.lr and
    optimizer.weight_decay, and each technique's ``vectorizable`` hyper-parameters
    (``techniques.sam.rho``, ...)."""
    data = config_to_dict(cfg)
    for key in ("seed", "name"):
        data.pop(key)
    data["optimizer"] = {k: v for k, v in data["optimizer"].items()
                         if k not in ("lr", "weight_decay")}
    free = vectorizable_techniques()
    data["techniques"] = [{k: v for k, v in t.items() if k not in free.get(t["name"], ())}
                          for t in data["techniques"]]
    return data


def _first_difference(a: Any, b: Any, key: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            found = _first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else k)
            if found:
                return found
        return None
    return None if a == b else f"{key} ({a!r} vs {b!r})"


def _module_problem(model: nn.Module) -> str | None:
    """Why the module's training step cannot be vmapped over copies exactly, if it cannot."""
    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return (f"the model uses BatchNorm ({name}): its running statistics are updated "
                    "in place during training, which vectorized training does not support")
        if isinstance(module, nn.modules.dropout._DropoutNd) and module.p > 0:
            return (f"the model uses dropout ({name}, p={module.p}): its masks draw from the "
                    "global RNG, which copies trained together cannot share")
    return None


def can_vectorize(configs: Sequence[RunConfig]) -> tuple[bool, str]:
    """Whether ``configs`` can be trained together by :func:`train_vectorized`, and if not why.

    They can when they differ only in ``seed``, ``name``, ``optimizer.lr`` and
    ``optimizer.weight_decay`` (and the per-copy hyper-parameters their techniques declare,
    e.g. ``techniques.sam.rho``); use only techniques that vectorize
    (:func:`vectorizable_techniques`); use SGD, Adam or AdamW; train in float32
    (``precision="float32"``); and their model has no BatchNorm and no dropout. Any measures
    are fine (each copy is evaluated on its own module). The model check builds the first
    config's task and model (with the global RNG state preserved).

    Example:
        >>> from heldout.config import RunConfig, parse_overrides
        >>> base = RunConfig(steps=10)
        >>> can_vectorize([base, parse_overrides(base, ["seed=1", "optimizer.lr=0.01"])])
        (True, '')
        >>> ok, reason = can_vectorize([base, parse_overrides(base, ["seed=1", "steps=20"])])
        >>> ok, reason.split(";")[0]
        (False, 'configs differ in steps (10 vs 20)')
    """
    if not configs:
        return False, "no configs"
    first = vectorization_key(configs[0])
    for cfg in configs[1:]:
        difference = _first_difference(first, vectorization_key(cfg))
        if difference:
            return False, (f"configs differ in {difference}; copies may differ only in "
                           f"{per_copy_fields()}")
    cfg = configs[0]
    supported = vectorizable_techniques()
    for technique in cfg.techniques:
        if technique.name not in supported:
            return False, (f"technique {technique.name!r} is not supported by vectorized "
                           f"training (supported: {', '.join(sorted(supported))})")
    if cfg.optimizer.name not in ("sgd", "adam", "adamw"):
        return False, f"optimizer {cfg.optimizer.name!r} is not supported"
    if cfg.precision != "float32":
        return False, f"precision {cfg.precision!r} is not supported (only 'float32')"
    with torch.random.fork_rng(devices=[]):
        splits = TASKS.build(cfg.task.name, **dict(cfg.task.params)).splits(cfg.seed)
        model = MODELS.build(cfg.model.name, **dict(cfg.model.params)).build(
            splits.input, splits.num_classes)
    problem = _module_problem(model)
    if problem:
        return False, problem
    return True, ""


# ----------------------------------------------------------------------------- the optimizer

def _add_scaled(tensor: Tensor, other: Tensor, alpha: float | Tensor) -> Tensor:
    """``tensor + alpha * other`` (torch's ``add(other, alpha=...)``), out of place."""
    if isinstance(alpha, float):
        return tensor.add(other, alpha=alpha)
    return torch.addcmul(tensor, other, alpha.to(other.dtype))


def _scalar_dtype() -> torch.dtype:
    # torch keeps Adam's step count as a float tensor of this dtype (its _get_scalar_dtype)
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class _StackedOptimizer:
    """K independent SGD / Adam / AdamW updates of a (K, P) tensor (row k: copy k's
    parameters, flattened), with torch's single-tensor formulas. Every op is elementwise, so
    one op on the flat tensor is each copy's op on each of its parameters."""

    def __init__(self, optimizers: Sequence[torch.optim.Optimizer], flat: Tensor) -> None:
        groups = []
        for optimizer in optimizers:
            if len(optimizer.param_groups) != 1:
                raise ValueError("vectorized training needs one parameter group per optimizer")
            groups.append(optimizer.param_groups[0])
        group = groups[0]
        self.adam = isinstance(optimizers[0], torch.optim.Adam)
        for key in ("maximize", "amsgrad", "differentiable", "capturable", "fused"):
            if group.get(key):
                raise ValueError(f"vectorized training does not support {key}=True")
        shared = ("betas", "eps", "decoupled_weight_decay") if self.adam else (
            "momentum", "dampening", "nesterov")
        for key in shared:
            if any(g[key] != group[key] for g in groups):
                raise ValueError(f"the copies' optimizers differ in {key}")
        self.group = group
        self.lr = per_copy([g["lr"] for g in groups], flat)
        self.weight_decay = per_copy([g["weight_decay"] for g in groups], flat)
        self.decay_on = any(g["weight_decay"] != 0 for g in groups)
        self.step_count = 0
        self.state: dict[str, Tensor] = {}

    @torch.no_grad()
    def step(self, param: Tensor, grad: Tensor) -> None:
        self.step_count += 1
        if self.adam:
            self._adam(param, grad)
        else:
            self._sgd(param, grad)

    def _sgd(self, param: Tensor, grad: Tensor) -> None:
        group, state = self.group, self.state
        if self.decay_on:
            grad = _add_scaled(grad, param, self.weight_decay)
        momentum = group["momentum"]
        if momentum != 0:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - group["dampening"])
            grad = grad.add(buf, alpha=momentum) if group["nesterov"] else buf
        if isinstance(self.lr, float):
            param.add_(grad, alpha=-self.lr)
        else:
            param.addcmul_(grad, (-self.lr).to(param.dtype))

    def _adam(self, param: Tensor, grad: Tensor) -> None:
        group, state = self.group, self.state
        beta1, beta2 = group["betas"]
        if not state:
            state["exp_avg"] = torch.zeros_like(param)
            state["exp_avg_sq"] = torch.zeros_like(param)
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        lr, decay = self.lr, self.weight_decay
        if self.decay_on:
            if group["decoupled_weight_decay"]:
                param.mul_(cast(1 - lr * decay, param))
            else:
                grad = _add_scaled(grad, param, decay)
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        step = float(self.step_count)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(group["eps"])
        if isinstance(step_size, float):
            param.addcdiv_(exp_avg, denom, value=-step_size)
        else:  # torch's addcdiv computes self + (value * t1) / t2
            param.add_(cast(-step_size, param) * exp_avg / denom)

    def load_copies(self, optimizers: Sequence[torch.optim.Optimizer],
                    params: Sequence[Sequence[Tensor]]) -> None:
        """Take the state of K torch optimizers (copy k's parameters ``params[k]``, in the
        layout's order): the inverse of :meth:`copy_state`."""
        self.state, self.step_count = {}, 0
        first = optimizers[0].state.get(params[0][0], {})
        for key in ("exp_avg", "exp_avg_sq") if self.adam else ("momentum_buffer",):
            if first.get(key) is not None:
                self.state[key] = torch.stack([
                    torch.cat([opt.state[p][key].reshape(-1) for p in copy])
                    for opt, copy in zip(optimizers, params, strict=True)])
        if self.adam and "step" in first:
            steps = {int(opt.state[copy[0]]["step"])
                     for opt, copy in zip(optimizers, params, strict=True)}
            if len(steps) != 1:
                raise ValueError(f"the copies' optimizers are at different steps {steps}")
            self.step_count = steps.pop()

    def copy_state(self, index: int, layout: Sequence[tuple[str, int, int, torch.Size]]
                   ) -> dict[int, dict[str, Tensor]]:
        """Copy ``index``'s state in ``torch.optim`` form: parameter number → its state."""
        if not self.state:
            return {}
        out: dict[int, dict[str, Tensor]] = {}
        for number, (_, start, end, shape) in enumerate(layout):
            entry = {key: value[index, start:end].view(shape).clone()
                     for key, value in self.state.items()}
            if self.adam:
                entry = {"step": torch.tensor(float(self.step_count), dtype=_scalar_dtype()),
                         **entry}
            out[number] = entry
        return out


# ----------------------------------------------------------------------------- the forward

_ELEMENTWISE = (nn.ReLU, nn.GELU, nn.Tanh, nn.Sigmoid, nn.SiLU, nn.LeakyReLU, nn.ELU,
                nn.Identity, Square)


def _stacked_forward(model: nn.Module) -> Any:
    """For an ``nn.Sequential`` of linear layers (``TokenLinear`` included), ``Flatten`` and
    elementwise activations — the MLPs — the forward of K stacked copies written with batched
    matrix products: ``forward(params, x)`` maps (K, batch, ...) inputs to (K, batch, out)
    outputs, the same function as vmapping the model over the copies without its per-call
    overhead (about twice as fast for small MLPs). ``None`` for any other model (then the
    whole model is vmapped)."""
    if type(model) not in (nn.Sequential, MLPNetwork):
        return None
    plan: list[tuple[str, str, nn.Module]] = []
    for name, module in model.named_children():
        if isinstance(module, nn.Linear) and type(module) in (nn.Linear, TokenLinear):
            plan.append(("linear", name, module))
        elif type(module) is nn.Flatten and (module.start_dim, module.end_dim) == (1, -1):
            plan.append(("flatten", name, module))
        elif type(module) in _ELEMENTWISE:
            plan.append(("elementwise", name, module))
        else:
            return None

    def forward(params: dict[str, Tensor], x: Tensor) -> Tensor:
        h = x
        for kind, name, module in plan:
            if kind == "flatten":
                h = h.reshape(h.shape[0], h.shape[1], -1)
            elif kind == "elementwise":
                h = module(h)
            else:
                weight, bias = params[f"{name}.weight"], params.get(f"{name}.bias")
                if isinstance(module, TokenLinear) and not h.is_floating_point():
                    h = _stacked_token_linear(module, weight, h)
                    h = h if bias is None else h + bias.unsqueeze(1)
                elif bias is None:
                    h = torch.bmm(h, weight.transpose(1, 2))
                else:
                    h = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        return h

    return forward


def _stacked_token_linear(layer: TokenLinear, weight: Tensor, tokens: Tensor) -> Tensor:
    """:class:`TokenLinear` of K copies: (K, batch, n_positions) tokens, (K, out, in) weights
    → (K, batch, out), one lookup in the copies' stacked weight columns."""
    if tokens.shape[-1] != layer.n_positions:
        raise ValueError(f"expected tokens of shape (..., {layer.n_positions}), got "
                         f"{tuple(tokens.shape)}")
    k = weight.shape[0]
    if not bool(((tokens >= 0) & (tokens < layer.vocab)).all()):
        raise IndexError(f"token out of range [0, {layer.vocab})")
    offsets = torch.arange(layer.n_positions, device=tokens.device) * layer.vocab
    copies = torch.arange(k, device=tokens.device).view(k, 1, 1) * layer.in_features
    rows = weight.transpose(1, 2).reshape(k * layer.in_features, weight.shape[1])
    return F.embedding(tokens + offsets + copies, rows).sum(dim=-2)


# ----------------------------------------------------------------------------- the group

def _rng_state() -> tuple[Tensor, Any, Any]:
    return torch.get_rng_state(), np.random.get_state(), random.getstate()


def _set_rng_state(state: tuple[Tensor, Any, Any]) -> None:
    torch.set_rng_state(state[0])
    np.random.set_state(state[1])
    random.setstate(state[2])


def _tensors(data: Any) -> tuple[Tensor, Tensor] | None:
    """An evaluation split's ``(inputs, targets)`` if it holds tensors (not a DataLoader)."""
    if hasattr(data, "x") and hasattr(data, "y"):
        return data.x, data.y
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data
    return None


class _Data:
    """The copies' training batches: full batch, or minibatches with each copy's own order."""

    def __init__(self, streams: Sequence[TensorBatches]) -> None:
        x0, y0 = streams[0].tensors
        for stream in streams[1:]:
            x, y = stream.tensors
            if x.shape != x0.shape or y.shape != y0.shape or x.dtype != x0.dtype:
                raise ValueError(
                    f"the copies' training sets differ in shape ({tuple(x0.shape)} vs "
                    f"{tuple(x.shape)}), so their batches cannot be stacked; run them separately"
                )
        self.shared = all(torch.equal(s.x, x0) and torch.equal(s.y, y0) for s in streams[1:])
        self.x = x0 if self.shared else torch.stack([s.x for s in streams])
        self.y = y0 if self.shared else torch.stack([s.y for s in streams])
        self.streams = streams
        self.batch_size = streams[0].batch_size
        self.per_epoch = streams[0].batches_per_epoch
        self.epoch = self.index = 0
        self._orders: Tensor | None = None
        self._copies = torch.arange(len(streams), device=x0.device).unsqueeze(1)

    def next(self) -> tuple[Tensor, Tensor]:
        """The next batch of every copy, stacked: (K, batch, ...)."""
        if self.batch_size is None:
            self.epoch += 1
            if self.shared:  # batched all the same (a free expand): layers that take another
                # path for unbatched inputs under vmap (TokenLinear) see what they support
                k = len(self.streams)
                return self.x.expand(k, *self.x.shape), self.y.expand(k, *self.y.shape)
            return self.x, self.y
        if self._orders is None:  # each copy's own permutation of this epoch
            orders = []
            for stream in self.streams:
                stream.load_state_dict({"epoch": self.epoch, "index": 0})
                orders.append(stream._epoch_order())
            self._orders = torch.stack(orders)
        start = self.index * self.batch_size
        idx = self._orders[:, start : start + self.batch_size]
        self.index += 1
        if self.index == self.per_epoch:
            self.epoch, self.index, self._orders = self.epoch + 1, 0, None
        if self.shared:
            return self.x[idx], self.y[idx]
        return self.x[self._copies, idx], self.y[self._copies, idx]

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def seek(self, position: dict[str, int]) -> None:
        """Continue from ``position`` (as :meth:`position` gives it)."""
        self.epoch, self.index, self._orders = position["epoch"], position["index"], None


class _Group:
    """K copies trained together: their Trainers (for building, evaluating, checkpointing),
    their parameters as one (K, P) tensor, and the stacked optimizer."""

    def __init__(self, configs: Sequence[RunConfig], store: Store, device: Any) -> None:
        self.configs = list(configs)
        self.trainers: list[Trainer] = []
        self.rng: list[tuple[Tensor, Any, Any]] = []
        for cfg in self.configs:  # exactly the separate run's construction and seeding
            trainer = build(cfg, device=device, store=store)
            self.trainers.append(trainer)
            self.rng.append(_rng_state())  # what the separate run's RNG holds after build
        models = [t.model for t in self.trainers]
        for model in models:
            problem = _module_problem(model)
            if problem:
                raise ValueError(problem)
        if not all(isinstance(t.batches, TensorBatches) for t in self.trainers):
            raise ValueError("vectorized training needs tensor training data")
        # the optimizer torch steps: the base of a wrapper such as SAM
        bases = [getattr(t.optimizer, "base", t.optimizer) for t in self.trainers]
        for trainer, base in zip(self.trainers, bases, strict=True):
            if not isinstance(base, _OPTIMIZERS):
                raise ValueError(f"optimizer {type(base).__name__} is not supported by "
                                 "vectorized training")
            refused = [t.name for t in trainer.techniques if t.vectorizable is None]
            if refused:
                raise ValueError(f"techniques {refused} do not vectorize")
        params, self.buffers = stack_module_state(models)
        k = len(models)
        # One (K, P) tensor holds every parameter of every copy, so each optimizer op is one
        # call for all of them; the stacked parameters are views of its columns.
        self.layout: list[tuple[str, int, int, torch.Size]] = []
        start = 0
        for name, _ in models[0].named_parameters():
            shape = params[name].shape[1:]
            self.layout.append((name, start, start + shape.numel(), shape))
            start += shape.numel()
        self.flat = torch.cat([params[name].detach().reshape(k, -1)
                               for name, *_ in self.layout], dim=1)
        self.base = copy.deepcopy(models[0]).to("meta")
        self.base.train()
        self.loss_fn = self.trainers[0].loss_fn
        self.stacked_forward = _stacked_forward(self.base)  # None: vmap the whole model
        cfg = self.configs[0]
        classes = not self.trainers[0].batches.y.is_floating_point()  # type: ignore[union-attr]
        # the runner's default loss, per copy without vmap's decomposed cross-entropy
        plain_ce = cfg.loss == "cross_entropy" and classes
        self.ce_dtype = getattr(torch, cfg.loss_dtype) if plain_ce else None
        self.optimizer = _StackedOptimizer(bases, self.flat)
        # each technique's action on the stack, at its position in the technique list
        stack = Stack(self.flat, self.layout, models)
        self.rules: list[tuple[int, StackedRule]] = []
        for position, technique in enumerate(self.trainers[0].techniques):
            copies = [t.techniques[position] for t in self.trainers]
            rule = type(technique).stacked_rule(copies, stack)
            if rule is not None:
                self.rules.append((position, rule))
        self.data = _Data([t.batches for t in self.trainers])  # type: ignore[misc]
        self.max_steps = self.trainers[0].state.max_steps
        self.eval_every = self.trainers[0].eval_every
        self.checkpoint_every = self.trainers[0].checkpoint_every

    def resume(self, paths: Sequence[Path]) -> int:
        """Continue from the copies' checkpoints if every copy has one at the same step (a
        group killed midway); return that step, or 0 after deleting any partial set."""
        steps = []
        for path in paths:
            try:
                steps.append(int(load_checkpoint(path)["step"]) if path.exists() else -1)
            except Exception:  # noqa: BLE001 - unreadable: start over
                steps.append(-1)
        if len(set(steps)) != 1 or steps[0] <= 0:
            for path in paths:
                path.unlink(missing_ok=True)
            return 0
        positions = []
        for index, (trainer, path) in enumerate(zip(self.trainers, paths, strict=True)):
            trainer.resume(path)  # weights, optimizer, measures, history, data position, RNG
            self.rng[index] = _rng_state()
            positions.append(trainer.batches.state_dict())
        if any(p != positions[0] for p in positions):
            raise ValueError(f"the copies' checkpoints are at different data positions "
                             f"{positions}")
        with torch.no_grad():
            self.flat.copy_(torch.stack([
                torch.cat([p.detach().reshape(-1) for p in t.model.parameters()])
                for t in self.trainers]))
        self.optimizer.load_copies(
            [getattr(t.optimizer, "base", t.optimizer) for t in self.trainers],
            [list(t.model.parameters()) for t in self.trainers])
        for position, rule in self.rules:  # the state the copies' techniques restored
            rule.load([t.techniques[position] for t in self.trainers],
                      [t.model for t in self.trainers])
        self.data.seek(positions[0])
        return steps[0]

    def params(self, flat: Tensor) -> dict[str, Tensor]:
        """The stacked parameters (K, *shape) as views of ``flat``."""
        return {name: flat[:, start:end].view(-1, *shape)
                for name, start, end, shape in self.layout}

    def eval_weights(self) -> Tensor:
        """The (K, P) weights evaluation uses: a rule's (an EMA average), else the weights."""
        for _, rule in self.rules:
            weights = rule.eval_weights(self.flat)
            if weights is not None:
                return weights
        return self.flat

    def _copy_logits(self, params: dict[str, Tensor], buffers: dict[str, Tensor],
                     x: Tensor) -> Tensor:
        return functional_call(self.base, (params, buffers), (x,))

    def losses(self, logits: Tensor, y: Tensor) -> Tensor:
        """Each copy's training loss on its batch: (K, batch, C) logits → (K,)."""
        for _, rule in self.rules:  # a loss technique's rule (label smoothing, say)
            losses = rule.loss(logits, y)
            if losses is not None:
                return losses
        if self.ce_dtype is not None:  # mean cross-entropy of each copy's batch
            return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).to(self.ce_dtype),
                                   y.reshape(-1), reduction="none").view(y.shape).mean(dim=1)
        return torch.vmap(self.loss_fn)(logits, y)

    def gradient(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """The K losses at the current weights and their gradients as one (K, P) tensor."""
        # fresh leaves sharing the flat tensor's memory: autograd returns each parameter's
        # gradient without scattering it into a (K, P) buffer per parameter
        leaves = {name: view.detach().requires_grad_()
                  for name, view in self.params(self.flat).items()}
        if self.stacked_forward is not None:
            logits = self.stacked_forward(leaves, x)
        else:
            logits = torch.vmap(self._copy_logits)(leaves, self.buffers, x)
        losses = self.losses(logits, y)
        # row k of the gradient of the sum is the gradient of copy k's loss alone
        grads = torch.autograd.grad(losses.sum(), list(leaves.values()))
        k = self.flat.shape[0]
        return losses.detach(), torch.cat([g.reshape(k, -1) for g in grads], dim=1)

    def train_step(self) -> Tensor:
        """One optimizer step of every copy; returns the K losses (detached)."""
        x, y = self.data.next()
        losses, grad = self.gradient(x, y)
        for _, rule in self.rules:  # an ascent rule (SAM): the gradient at w + e, back to w
            e = rule.ascent(self.flat, grad)
            if e is not None:
                with torch.no_grad():
                    self.flat.add_(e)
                _, grad = self.gradient(x, y)
                with torch.no_grad():
                    self.flat.sub_(e)
                break
        self.optimizer.step(self.flat, grad)
        for _, rule in reversed(self.rules):  # as on_after_step: in reverse list order
            rule.after_step(self.flat)
        return losses

    @torch.no_grad()
    def load_copy(self, index: int) -> Trainer:
        """Copy ``index``'s current weights (and its rules' state, e.g. an EMA average) into its
        own modules and techniques; return its Trainer."""
        trainer = self.trainers[index]
        stacked = self.params(self.flat)
        for name, param in trainer.model.named_parameters():
            param.copy_(stacked[name][index])
        for position, rule in self.rules:
            rule.export(index, trainer.techniques[position], trainer.model)
        return trainer

    @torch.no_grad()
    def eval_outputs(self) -> list[dict[str, tuple[Tensor, Tensor]]]:
        """Every copy's logits and targets on each evaluation split whose data the copies can
        stack (tensors of equal shapes), computed together by the stacked forward; empty
        dicts when the model has none (then each copy's evaluation runs its model)."""
        per_copy: list[dict[str, tuple[Tensor, Tensor]]] = [{} for _ in self.trainers]
        if self.stacked_forward is None:
            return per_copy
        params = self.params(self.eval_weights())
        for split in self.trainers[0].eval_data:
            data = [_tensors(t.eval_data.get(split)) for t in self.trainers]
            if any(d is None for d in data):
                continue
            x0, y0 = data[0]  # type: ignore[misc]
            if any(x.shape != x0.shape or x.dtype != x0.dtype for x, _ in data):  # type: ignore[misc]
                continue
            shared = all(x is x0 or torch.equal(x, x0) for x, _ in data)  # type: ignore[misc]
            chunks = []
            for start in range(0, len(y0), EVAL_CHUNK):
                part = slice(start, start + EVAL_CHUNK)
                xs = (x0[part].expand(len(data), *x0[part].shape) if shared
                      else torch.stack([x[part] for x, _ in data]))  # type: ignore[misc]
                chunks.append(self.stacked_forward(params, xs.to(self.flat.device)))
            logits = torch.cat(chunks, dim=1)
            for index, (_, y) in enumerate(data):  # type: ignore[misc]
                per_copy[index][split] = (logits[index], y.to(self.flat.device))
        return per_copy

    def evaluate(self, index: int, step: int, loss: Tensor | None,
                 outputs: dict[str, tuple[Tensor, Tensor]] | None = None) -> dict[str, float]:
        trainer = self.load_copy(index)
        _set_rng_state(self.rng[index])
        metrics = trainer.measure(outputs=outputs)
        self.rng[index] = _rng_state()
        if loss is not None:
            metrics["train/step_loss"] = float(loss)
        trainer.state.step = step
        trainer.state.metrics = metrics
        trainer.history.append((step, metrics))  # checkpoints carry the history
        return metrics

    def checkpoint(self, index: int, step: int, loss: Tensor | None, path: Path) -> None:
        """Write copy ``index``'s checkpoint in the Trainer's format."""
        trainer = self.load_copy(index)
        optimizer = getattr(trainer.optimizer, "base", trainer.optimizer)
        by_number = dict(enumerate(trainer.model.parameters()))
        optimizer.state.clear()
        for number, entry in self.optimizer.copy_state(index, self.layout).items():
            optimizer.state[by_number[number]] = entry
        trainer.batches.load_state_dict(self.data.position())
        trainer.state.step = step
        trainer.state.loss = None if loss is None else loss.clone()
        _set_rng_state(self.rng[index])
        trainer.save_checkpoint(path)


def train_vectorized(
    configs: Sequence[RunConfig],
    store: Store | None = None,
    *,
    progress: bool = False,
    device: Any = None,
) -> list[RunResult]:
    """Train ``configs`` together (see the module docstring); one result per config, in order.

    Raises ``ValueError`` (before writing to the store) when :func:`can_vectorize` refuses the
    configs or their training sets differ in shape. Configs whose run is already ``done`` are
    skipped (``skipped=True``); if all are, nothing is built. A copy whose loss turns
    non-finite comes back with ``status="failed"`` (not raised: the others finished).
    """
    ok, reason = can_vectorize(configs)
    if not ok:
        raise ValueError(f"cannot vectorize: {reason}")
    store = store or Store()
    unique: dict[str, RunConfig] = {}
    for cfg in configs:
        unique.setdefault(cfg.identity, cfg)
    done = {run_id for run_id in unique
            if store.has_run(run_id) and store.get_run(run_id).status == "done"}
    pending = [cfg for run_id, cfg in unique.items() if run_id not in done]
    results: dict[str, RunResult] = {}
    group = _Group(pending, store, device) if pending else None
    for run_id, cfg in unique.items():
        record = store.create_run(run_id, config_to_dict(cfg), cfg.seed, cfg.name)
        if run_id in done:
            results[run_id] = RunResult(run_id, "done", store.final_metrics(run_id), None,
                                        True, record)
    if group is not None:
        results.update(_train(group, store, progress))
    return [results[cfg.identity] for cfg in configs]


def _train(group: _Group, store: Store, progress: bool) -> dict[str, RunResult]:
    ids = [cfg.identity for cfg in group.configs]
    k = len(ids)
    printer = ProgressPrinter(group.max_steps, label=f"{k} copies ") if progress else None
    paths = [store.checkpoint_path(run_id) for run_id in ids]
    step = group.resume(paths)  # from the copies' last checkpoints, or 0
    active = [True] * k
    recorders = [RunRecorder(store, run_id, flush_seconds=FLUSH_SECONDS) for run_id in ids]
    for index, recorder in enumerate(recorders):  # with the history the checkpoints carry,
        recorder.start(step, group.trainers[index].history)  # again: nothing is lost
    losses: Tensor | None = None
    started = time.perf_counter()

    def evaluate() -> None:
        shown: dict[str, list[float]] = {}
        outputs = group.eval_outputs()
        for index in range(k):
            if not active[index]:
                continue
            loss = None if losses is None else losses[index]
            metrics = group.evaluate(index, step, loss, outputs[index])
            recorders[index].log(step, metrics)
            for key, value in metrics.items():
                shown.setdefault(key, []).append(value)
        if printer is not None:
            printer.log(step, {key: sum(v) / len(v) for key, v in shown.items()})

    def seconds() -> float:
        return (time.perf_counter() - started) / k

    def checkpoint(index: int) -> None:
        recorders[index].flush()  # metrics reach the store before the checkpoint does
        group.checkpoint(index, step, None if losses is None else losses[index], paths[index])
        store.set_checkpoint(ids[index], str(paths[index]), step)

    try:
        if step == 0:
            evaluate()
        while step < group.max_steps and any(active):
            losses = group.train_step()
            finite = torch.isfinite(losses)
            if not bool(finite.all()):  # as the Trainer: fail at the step that broke
                for index in torch.nonzero(~finite).flatten().tolist():
                    if active[index]:
                        err = NonFiniteLossError(step + 1, float(losses[index]),
                                                 checkpoint_kept=paths[index].exists())
                        recorders[index].fail(err.step, seconds(), str(err))
                        active[index] = False
            step += 1
            if step % group.eval_every == 0 or step == group.max_steps:
                evaluate()
            if (group.checkpoint_every and step % group.checkpoint_every == 0
                    and step < group.max_steps):  # as each run alone: resumable midway
                for index in range(k):
                    if active[index]:
                        checkpoint(index)
        for index, run_id in enumerate(ids):
            if not active[index]:
                continue
            checkpoint(index)
            provenance = store.run_dir(run_id) / GROUP_NAME  # trained with these copies
            provenance.write_text(json.dumps({"copies": ids, "index": index}, indent=1))
            recorders[index].finish(step, seconds(), paths[index],
                                    {"vectorized_group": provenance})
            active[index] = False
    except BaseException as err:
        for index in range(k):
            if active[index]:
                recorders[index].fail(step, seconds(), err)
        raise
    results = {}
    for run_id in ids:
        record = store.get_run(run_id)
        results[run_id] = RunResult(run_id, record.status, store.final_metrics(run_id), None,
                                    False, record)
    return results
