"""Rich Feature Construction (RFC, the "Bonsai" algorithm; catalog #55): build a representation
that holds several features, through discovery episodes and a synthesis, before the training
stage that must pick the robust ones.

Discovery episodes: episode 1 trains a network by ERM. Episode k trains a fresh network with
the training examples partitioned by how the previous k − 1 networks fare on them (each
example's group is its pattern of right and wrong answers, :func:`failure_groups`), and with
a robust, distributionally adversarial objective over those groups: the group weights q rise
multiplicatively with their loss (:func:`adversarial_weights`, q_g ∝ q_g exp(η L_g), group
DRO's exponentiated-gradient ascent) and the network minimizes Σ_g q_g L_g
(:func:`robust_loss`). So the examples that the features found so far get wrong weigh as much
as those they get right, and the new network cannot settle on the old features.

Synthesis: the episodes' representations are put side by side, :class:`RichFeatures`
(the concatenation of each network's penultimate features); a linear head on top is then
trained by the run's own loss (ERM, or any loss technique after it), the "OOD training on a
rich initialization" stage.

Simplified here, against the paper: the partition is the full correctness pattern of all
previous networks with one DRO over its groups (the paper builds a multi-objective criterion
from the pairs of sets each previous network gets right and wrong); the synthesis
concatenates the episodes' features instead of distilling them into one network of the
original size; the OOD stage is whatever the run trains on top (heldout has no IRM/vREx
technique yet), with the features frozen by default.

References:
    Zhang, Lopez-Paz, Bottou. Rich Feature Construction for the Optimization-Generalization
    Dilemma. ICML 2022. arXiv:2203.15516.
    Sagawa, Koh, Hashimoto, Liang. Distributionally Robust Neural Networks for Group Shifts.
    arXiv:1911.08731 (the exponentiated-gradient group weights).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import split_head
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.sampling import stream_generator
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = [
    "RichFeatureModel",
    "RichFeatures",
    "RichFeatureConstruction",
    "adversarial_weights",
    "discovery_episode",
    "failure_groups",
    "rich_feature_construction",
    "robust_loss",
]

REFERENCE = ("Rich Feature Construction for the Optimization-Generalization Dilemma "
             "(arXiv:2203.15516)")


def failure_groups(correct: Tensor) -> Tensor:
    """Each example's group from the right/wrong answers of the previous networks: ``correct``
    is (E, N) booleans (network e right on example n); the group is the binary number
    Σ_e 2^e [wrong_e], so 0 is "all right". With E = 0 every example is in group 0.

    Example:
        >>> failure_groups(torch.tensor([[True, False, True], [True, True, False]])).tolist()
        [0, 1, 2]
    """
    if correct.dim() != 2:
        raise ValueError(f"correct must be (E, N), got shape {tuple(correct.shape)}")
    powers = 2 ** torch.arange(len(correct), device=correct.device)
    return ((~correct.bool()).long() * powers[:, None]).sum(0)


def adversarial_weights(weights: Tensor, group_losses: Tensor, step_size: float,
                        present: Tensor | None = None) -> Tensor:
    """One exponentiated-gradient ascent step on the group weights: q_g ∝ q_g exp(η L_g),
    over the groups ``present`` (all by default; absent groups keep their weight share).

    Example:
        >>> q = adversarial_weights(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]),
        ...                         step_size=float(torch.log(torch.tensor(2.0))))
        >>> [round(v, 4) for v in q.tolist()]
        [0.6667, 0.3333]
    """
    if weights.shape != group_losses.shape:
        raise ValueError(f"weights {tuple(weights.shape)} and group_losses "
                         f"{tuple(group_losses.shape)} must have the same shape")
    if step_size < 0:
        raise ValueError(f"step_size must be >= 0, got {step_size}")
    mask = torch.ones_like(weights, dtype=torch.bool) if present is None else present
    raised = torch.where(mask, weights * torch.exp(step_size * group_losses.detach()), weights)
    share = weights[mask].sum()
    raised[mask] = raised[mask] / raised[mask].sum() * share  # absent groups keep their share
    return raised / raised.sum()


def robust_loss(losses: Tensor, groups: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Σ_g q_g L_g over the groups present in the batch (q renormalized over them), with L_g
    the mean of ``losses`` in group g; returns ``(loss, group_losses)`` (absent groups: 0)."""
    if groups.shape != losses.shape:
        raise ValueError(f"groups must have the shape of losses {tuple(losses.shape)}, got "
                         f"{tuple(groups.shape)}")
    count = torch.bincount(groups, minlength=len(weights)).to(losses.dtype)
    total = torch.zeros(len(weights), dtype=losses.dtype, device=losses.device)
    group_losses = total.index_add(0, groups, losses) / count.clamp(min=1)
    present = count > 0
    q = weights * present
    return (q / q.sum() * group_losses).sum(), group_losses


class RichFeatures(nn.Module):
    """The synthesized representation: the concatenation of each episode network's
    penultimate features (one network: exactly its features)."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        if not networks:
            raise ValueError("RichFeatures needs at least one network")
        self.networks = nn.ModuleList(networks)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([split_head(net)[0](x) for net in self.networks], dim=-1)


def discovery_episode(net: nn.Module, x: Tensor, y: Tensor, groups: Tensor, *, steps: int,
                      batch_size: int, lr: float, step_size: float,
                      generator: torch.Generator) -> Tensor:
    """Train ``net`` in place for ``steps`` Adam steps on minibatches drawn from ``generator``
    with :func:`robust_loss` over ``groups`` and weights updated by
    :func:`adversarial_weights` each step; return the final group weights. One group: ERM."""
    num_groups = int(groups.max()) + 1
    weights = torch.full((num_groups,), 1.0 / num_groups)
    optimizer = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(steps):
        rows = torch.randint(len(x), (min(batch_size, len(x)),), generator=generator)
        losses = F.cross_entropy(net(x[rows]).float(), y[rows], reduction="none")
        batch_groups = groups[rows]
        present = torch.bincount(batch_groups, minlength=num_groups) > 0
        loss, group_losses = robust_loss(losses, batch_groups, weights)
        weights = adversarial_weights(weights, group_losses, step_size, present)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return weights


def _fresh(model: nn.Module) -> nn.Module:
    fresh = copy.deepcopy(model)
    for module in fresh.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and module is not fresh:
            reset()
    return fresh


def rich_feature_construction(make_network: Callable[[], nn.Module], x: Tensor, y: Tensor, *,
                              episodes: int = 2, steps: int = 200, batch_size: int = 64,
                              lr: float = 1e-3, step_size: float = 0.01,
                              seed: int = 0) -> RichFeatures:
    """Discovery episodes then synthesis (module docstring), in a plain loop: ``make_network``
    returns a fresh classifier (a ``nn.Sequential`` ending in ``nn.Linear``, or a module with
    ``features`` and ``head``); each episode trains one on ``(x, y)``.

    Example:
        >>> x, y = torch.randn(64, 4), torch.randint(0, 2, (64,))
        >>> rich = rich_feature_construction(
        ...     lambda: nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)), x, y,
        ...     episodes=2, steps=5)
        >>> rich(x).shape
        torch.Size([64, 16])
    """
    networks = [make_network() for _ in range(episodes)]
    _discover(networks, x, y, steps=steps, batch_size=batch_size, lr=lr, step_size=step_size,
              seed=seed)
    return RichFeatures(networks).eval()


def _discover(networks: list[nn.Module], x: Tensor, y: Tensor, *, steps: int, batch_size: int,
              lr: float, step_size: float, seed: int) -> None:
    if not networks:
        raise ValueError("episodes must be >= 1")
    correct: list[Tensor] = []
    for episode, net in enumerate(networks):
        groups = failure_groups(torch.stack(correct) if correct else
                                torch.ones(0, len(x), dtype=torch.bool))
        discovery_episode(net, x, y, groups, steps=steps, batch_size=batch_size, lr=lr,
                          step_size=step_size,
                          generator=stream_generator(seed, f"rich_features/episode{episode}"))
        net.eval()
        with torch.no_grad():
            correct.append(net(x).argmax(-1) == y)


class RichFeatureModel(nn.Module):
    """E episode networks (the first is the run's model, the others re-initialized copies)
    and a linear ``head`` on their concatenated features. ``constructed`` (a buffer, so it
    is checkpointed) says whether the discovery episodes have run."""

    def __init__(self, model: nn.Module, episodes: int) -> None:
        super().__init__()
        _, head = split_head(model)
        self.rich = RichFeatures([model, *(_fresh(model) for _ in range(episodes - 1))])
        self.head = nn.Linear(episodes * head.in_features, head.out_features)
        self.constructed: Tensor
        self.register_buffer("constructed", torch.zeros((), dtype=torch.bool))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.rich(x))


@TECHNIQUES.register(
    "rich_features",
    summary="Rich Feature Construction (Bonsai): discovery episodes reweighted toward what "
    "earlier features fail on, concatenated into one representation; train a head on top.",
    papers=(55,),
    search_space={"episodes": ("int_uniform", 1, 4), "dro_step_size": ("log_uniform", 1e-3, 1.0)},
    references=(REFERENCE,),
)
@dataclass
class RichFeatureConstruction(Technique):
    """Replace the model by :class:`RichFeatureModel` and, at the start of training (once:
    a resumed run finds ``constructed`` set in its checkpoint), run the discovery episodes
    on the training tensors (``State.train_data``) with batches seeded by the run's seed.
    The run then trains the head on the concatenated features (frozen with ``freeze``) with
    its own loss. The episodes use Adam and the run's batch size; they run in the
    ``on_fit_start`` event, before the first evaluation.

    With one episode and ``freeze=False`` it is ERM on the model with a fresh last layer.
    """

    episodes: Annotated[int, Ge(1)] = 2  # discovery episodes (networks in the representation)
    episode_steps: Annotated[int, Ge(1)] = 200  # Adam steps per discovery episode
    episode_lr: Annotated[float, Gt(0)] = 1e-3  # Adam learning rate of the episodes
    dro_step_size: Annotated[float, Ge(0)] = 0.01  # η of the group weights' ascent
    freeze: bool = True  # keep the synthesized features fixed while the head trains

    touches = frozenset({"model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        return RichFeatureModel(model, self.episodes)

    def on_fit_start(self, state: State) -> None:
        model = state.model
        if not isinstance(model, RichFeatureModel):
            raise ValueError("rich_features needs the RichFeatureModel its transform_model "
                             f"returns, got {type(model).__name__}")
        if not bool(model.constructed):
            if state.train_data is None:
                raise ValueError("rich_features runs its discovery episodes on the training "
                                 "tensors: train on tensors or a Split, not a DataLoader")
            x, y = state.train_data
            _discover(list(model.rich.networks), x, y, steps=self.episode_steps,
                      batch_size=state.batch_size or len(x), lr=self.episode_lr,
                      step_size=self.dro_step_size, seed=state.seed)
            model.constructed.fill_(True)
        for parameter in model.rich.parameters():
            parameter.requires_grad_(not self.freeze)
