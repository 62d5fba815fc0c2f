"""The extension point for everything that adapts a trained model at test time: :class:`Adapter`.

An adapter is a dataclass of its hyper-parameters (the paper's defaults) that takes a trained
model and unlabeled test inputs and returns predictions (logits). It declares

* its ``mode``: **online** adapters see the test data batch by batch and carry their state
  (statistics, parameters, a memory) from one batch to the next; with ``episodic=True`` the
  caller resets them at every new domain (:meth:`Adapter.reset`). **Transductive** adapters
  see the whole query set at once (:meth:`Adapter.transduce`), optionally with labeled
  supports (few-shot episodes);
* what it ``changes``: nothing, the BatchNorm statistics, some parameters, or a memory;
* whether it needs labeled source data to get ready (``needs_source``: a memory of training
  features, per-domain heads), and whether it needs labeled supports with each query set
  (``needs_support``: few-shot episodes, ``transduce(x, support_x=..., support_y=...)``).

It is usable in a plain loop::

    adapter = AlphaBN(model, alpha=0.1)   # binds a copy of the model; the model is untouched
    logits = adapter(x_batch)             # adapts (online) and predicts

and from the run layer, which builds it from the registry (``ADAPTERS``), binds it to a
finished run's model and streams a held-out domain through it, checkpointing its
:meth:`~Adapter.state_dict` so a killed adaptation resumes exactly.

The math of an adapter lives in plain functions (mixing BatchNorm statistics, a k-NN vote,
an EM step); the Adapter subclass is the thin piece that keeps its state.
"""

from __future__ import annotations

import copy
from dataclasses import InitVar, dataclass
from typing import Any, ClassVar, Literal

from torch import Tensor, nn

__all__ = [
    "CHANGES",
    "Adapter",
    "Source",
    "batchnorm_layers",
    "freeze_except",
    "split_head",
]

CHANGES = {
    "nothing": "predicts with the source model as it is",
    "bn_statistics": "replaces the BatchNorm statistics with ones computed on test batches",
    "parameters": "updates some parameters by gradient steps on unlabeled test batches",
    "memory": "keeps a memory of (test) features that its predictions read",
}


@dataclass(frozen=True)
class Source:
    """Labeled data of the training domains, for adapters that need it (``needs_source``):
    inputs, labels and each example's training-domain index (``groups``)."""

    x: Tensor
    y: Tensor
    groups: Tensor | None = None

    def __post_init__(self) -> None:
        for name in ("y", "groups"):
            value = getattr(self, name)
            if value is not None and len(value) != len(self.x):
                raise ValueError(f"source data: {name} has {len(value)} rows but x has "
                                 f"{len(self.x)}")


def batchnorm_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    """The BatchNorm layers of ``model`` (1-D, 2-D and 3-D), in module order."""
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def freeze_except(model: nn.Module, keep: list[nn.Parameter]) -> None:
    """Set ``requires_grad`` on the parameters in ``keep`` and clear it on all others."""
    ids = {id(p) for p in keep}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in ids)


def split_head(model: nn.Module) -> tuple[nn.Module, nn.Linear]:
    """``(featurizer, head)`` of a model whose last layer is a linear classifier named
    ``head`` (heldout's MLP and CNN models) or any ``nn.Sequential`` ending in ``nn.Linear``.

    The featurizer shares its modules with ``model``: adapting one adapts the other.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> features, head = split_head(net)
        >>> features(torch.zeros(5, 4)).shape, head.out_features
        (torch.Size([5, 3]), 2)
    """
    if isinstance(model, nn.Sequential) and len(model) > 1 and isinstance(model[-1], nn.Linear):
        return model[:-1], model[-1]
    head = getattr(model, "head", None)
    features = getattr(model, "features", None)
    if isinstance(head, nn.Linear) and isinstance(features, nn.Module):
        return features, head
    if isinstance(head, nn.Linear) and callable(features):  # a ``features(x)`` method
        return _FeaturesOf(model), head
    raise ValueError(f"cannot split {type(model).__name__} into features and a linear head: "
                     "give an nn.Sequential whose last layer is nn.Linear, or a module with "
                     "`features` (a module or method) and a linear `head`")


class _FeaturesOf(nn.Module):
    """The featurizer of a model with a ``features(x)`` method (it shares the model's
    modules)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model.features(x)  # type: ignore[operator,no-any-return]


@dataclass(eq=False)
class Adapter:
    """Base of the registered adapters. Subclasses are dataclasses of their hyper-parameters.

    ``Adapter(model, **hparams)`` binds a deep copy of ``model`` at once; ``Adapter(**hparams)``
    leaves it unbound until :meth:`bind` (the registry builds adapters this way). Subclasses
    override :meth:`prepare` (get ready on the bound copy ``self.net``), :meth:`forward`
    (online: adapt on and predict one batch) or :meth:`transduce` (transductive), and
    :meth:`extra_state` / :meth:`load_extra_state` for state that is not in ``self.net``
    (an optimizer, a memory).
    """

    registry_name: ClassVar[str]
    component_kind: ClassVar[str] = "adapter"
    mode: ClassVar[Literal["online", "transductive"]] = "online"
    changes: ClassVar[frozenset[str]] = frozenset({"nothing"})
    needs_source: ClassVar[bool] = False
    needs_support: ClassVar[bool] = False

    model: InitVar[nn.Module | None] = None
    episodic: bool = False  # online: reset to the source state at the start of each domain

    def __post_init__(self, model: nn.Module | None = None) -> None:
        """Subclasses check their parameters here (then call this); bounds declared on the
        fields are checked before, by the registry."""
        self.net: nn.Module | None = None
        self._initial: dict[str, Any] | None = None
        if model is not None:
            self.bind(model)

    @property
    def name(self) -> str:
        return getattr(self, "registry_name", type(self).__name__)

    # ------------------------------------------------------------------ binding and state

    def bind(self, model: nn.Module, source: Source | None = None) -> Adapter:
        """Bind a deep copy of ``model`` (the caller's model never changes) and get ready;
        ``source`` is the labeled training data, required when ``needs_source``."""
        if not isinstance(model, nn.Module):
            raise TypeError(f"{self.component_kind} {self.name}: model must be an nn.Module, "
                            f"got {type(model).__name__}")
        if self.needs_source and source is None:
            raise ValueError(f"{self.component_kind} {self.name} needs the labeled source "
                             "(training) data: bind(model, source=Source(x, y, groups))")
        self.net = copy.deepcopy(model)
        self.net.eval()
        self.prepare(self.net, source)
        self._initial = copy.deepcopy(self.state_dict())
        return self

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        """Get ready on the bound copy ``net`` (configure layers, build a memory, an
        optimizer); the state after it is what :meth:`reset` returns to."""

    def reset(self) -> None:
        """Return to the state right after :meth:`bind` (the source model)."""
        if self._initial is None:
            raise RuntimeError(self._unbound())
        self.load_state_dict(copy.deepcopy(self._initial))

    def state_dict(self) -> dict[str, Any]:
        """Everything that changes while adapting (tensors and plain Python values), so a
        checkpoint of it resumes the adaptation exactly."""
        if self.net is None:
            raise RuntimeError(self._unbound())
        return {"net": self.net.state_dict(), "extra": self.extra_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.net is None:
            raise RuntimeError(self._unbound())
        self.net.load_state_dict(state["net"])
        self.load_extra_state(state.get("extra", {}))

    def extra_state(self) -> dict[str, Any]:
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if state:
            raise ValueError(f"adapter {self.name} keeps no extra state but was given "
                             f"{list(state)}")

    def _unbound(self) -> str:
        return (f"adapter {self.name} is not bound to a model: call bind(model) or build it "
                f"as {type(self).__name__}(model, ...)")

    # ------------------------------------------------------------------ prediction

    def __call__(self, x: Tensor, **kwargs: Any) -> Tensor:
        if self.net is None:
            raise RuntimeError(self._unbound())
        if self.mode == "transductive":
            return self.transduce(x, **kwargs)
        if kwargs:
            raise TypeError(f"online adapter {self.name} takes only a batch of inputs, got "
                            f"{sorted(kwargs)}")
        return self.forward(x)

    def forward(self, x: Tensor) -> Tensor:
        """Online: adapt on the unlabeled batch ``x`` and return its logits."""
        raise NotImplementedError(f"adapter {self.name} is {self.mode}: it has no forward")

    def transduce(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Transductive: the logits (or class scores) of the whole query set ``x`` at once;
        few-shot adapters also take ``support_x`` and ``support_y``."""
        raise NotImplementedError(f"adapter {self.name} is {self.mode}: it has no transduce")
