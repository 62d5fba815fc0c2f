"""LOOK (catalog #26): the leave-one-out k-nearest-neighbour loss within a batch.

Each example of a batch is classified by a weighted vote of its k nearest neighbours among the
*other* examples of the batch, in the space of the network's penultimate features, and the
loss is the negative log-probability that vote gives its own label. With L2-normalized
features z, cosine similarities s_ij = z_i·z_j and N_k(i) the k most similar j ≠ i,

    w_ij = exp(s_ij / τ) / Σ_{l ∈ N_k(i)} exp(s_il / τ)         (j ∈ N_k(i))
    p_i  = Σ_{j ∈ N_k(i), y_j = y_i} w_ij
    L    = −(1/B) Σ_i log(p_i + ε)                              (:func:`look_loss`)

so an example only has to share its label with most of its k neighbours, not with the whole
class: a class may keep several modes, and an example whose neighbours all carry another
label (a mislabeled one, typically) gets p_i = 0 and no gradient. ``temperature=None`` is the
unweighted vote (w_ij = 1/k). The prediction rule is the paper's k-NN classifier: a test
example gets the same weighted vote from its k nearest training examples
(:func:`knn_log_probs`); the technique's evaluation model (:class:`KNNClassifier`) holds the
features of the whole training set, recomputed with the current weights at each evaluation.

Deviations from the paper, which pre-trains on ImageNet: the neighbours come from the batch
only (the paper's efficient implementation scales the neighbour search to large data sets;
the brief of heldout's stand-in is the within-batch loss), the features are those of the
layer before the model's linear ``head`` (which LOOK leaves untrained), and ε (default 1e-6)
keeps the loss finite when no neighbour shares the label.

References:
    Feng, Jiang, Tang, Jin, Gao. Rethinking Supervised Pre-training for Better Downstream
    Transferring. ICLR 2022. arXiv:2110.06014.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import split_head
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.core.technique import Technique
from heldout.registry import TECHNIQUES

if TYPE_CHECKING:
    from heldout.core.state import State

__all__ = ["LOOK", "KNNClassifier", "LOOKNetwork", "knn_log_probs", "look_loss",
           "neighbour_votes"]

REFERENCE = ("Rethinking Supervised Pre-training for Better Downstream Transferring "
             "(arXiv:2110.06014)")


def _check_vote(k: int, temperature: float | None) -> None:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be > 0 (or None for an unweighted vote), got "
                         f"{temperature!r}")


def _similarities(queries: Tensor, keys: Tensor, normalize: bool) -> Tensor:
    if normalize:
        queries, keys = F.normalize(queries, dim=1), F.normalize(keys, dim=1)
    return queries @ keys.T


def neighbour_votes(similarities: Tensor, k: int, temperature: float | None = 0.1
                    ) -> tuple[Tensor, Tensor]:
    """``(weights, neighbours)``, both (Q, k): each row's k most similar columns and their
    vote weights, softmax(s / τ) over those k (``temperature=None``: 1/k each). Columns set
    to −inf never vote.

    Example:
        >>> s = torch.tensor([[0.0, 2.0, 1.0]])
        >>> w, j = neighbour_votes(s, k=2, temperature=None)
        >>> j.tolist(), w.tolist()
        ([[1, 2]], [[0.5, 0.5]])
    """
    _check_vote(k, temperature)
    if k > similarities.shape[1]:
        raise ValueError(f"k={k} is more than the {similarities.shape[1]} candidate neighbours")
    values, neighbours = similarities.topk(k, dim=1)
    if temperature is None:
        return torch.full_like(values, 1.0 / k), neighbours
    return (values / temperature).softmax(dim=1), neighbours


class _Gram(torch.autograd.Function):
    """``z @ z.T`` whose backward is one matmul, ``(G + Gᵀ) z``, instead of autograd's two."""

    @staticmethod
    def forward(ctx: Any, z: Tensor) -> Tensor:
        ctx.save_for_backward(z)
        return z @ z.T

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (z,) = ctx.saved_tensors
        return (grad + grad.T) @ z


def look_loss(features: Tensor, labels: Tensor, k: int, temperature: float | None = 0.1, *,
              normalize: bool = True, eps: float = 1e-6) -> Tensor:
    """LOOK's loss: mean over the batch of −log(p_i + ε), p_i the leave-one-out k-NN vote
    for example i's own label among the other B − 1 examples (the module docstring has the
    equations). ``features`` (B, D), ``labels`` (B,) integer classes, 1 <= k <= B − 1.

    Example:
        >>> z = torch.tensor([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [0.1, 1.0]])
        >>> round(float(look_loss(z, torch.tensor([0, 0, 1, 1]), k=1)), 4) + 0.0  # all agree
        0.0
    """
    if features.dim() != 2:
        raise ValueError(f"features must be (B, D), got shape {tuple(features.shape)}")
    if labels.shape != (len(features),):
        raise ValueError(f"labels must be (B,) = ({len(features)},), got {tuple(labels.shape)}")
    _check_vote(k, temperature)
    if not k <= len(features) - 1:
        raise ValueError(f"k must be <= B - 1 = {len(features) - 1} (the other examples of the "
                         f"batch), got k={k}")
    if not eps >= 0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    z = features.float()
    if normalize:
        z = F.normalize(z, dim=1)
    all_pairs = cast(Tensor, _Gram.apply(z))
    # Who the neighbours are needs no gradient: search a detached copy with the diagonal masked
    # (leave one out: an example never votes for itself), then gather the k that vote.
    with torch.no_grad():
        search = all_pairs.detach().clone().fill_diagonal_(float("-inf"))
        neighbours = search.topk(k, dim=1, sorted=False).indices
    similarities = all_pairs.gather(1, neighbours)  # (B, k)
    weights = (similarities / temperature).softmax(dim=1) if temperature is not None else (
        torch.full_like(similarities, 1.0 / k))
    agree = (labels[neighbours] == labels[:, None]).to(weights.dtype)
    own_label = (weights * agree).sum(dim=1)
    return -torch.log(own_label + eps).mean()


def knn_log_probs(queries: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int,
                  k: int, temperature: float | None = 0.1, *, normalize: bool = True,
                  eps: float = 1e-6) -> Tensor:
    """The k-NN rule at test time: log of each class's share of the weighted vote of the
    query's k nearest rows of ``bank`` (labels ``bank_labels``), floored at ``eps``; (Q, C).

    Example:
        >>> bank = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> knn_log_probs(torch.tensor([[2.0, 0.1]]), bank, torch.tensor([0, 1]), 2, k=1).argmax(1)
        tensor([0])
    """
    if len(bank) != len(bank_labels):
        raise ValueError(f"bank has {len(bank)} rows but bank_labels has {len(bank_labels)}")
    weights, neighbours = neighbour_votes(
        _similarities(queries.float(), bank.float(), normalize), min(k, len(bank)), temperature)
    votes = torch.zeros(len(queries), num_classes, device=queries.device)
    votes.scatter_add_(1, bank_labels[neighbours], weights)
    return torch.log(votes + eps)


class LOOKNetwork(nn.Module):
    """A model split into ``features`` and its linear ``head``: in training mode ``forward``
    returns the penultimate features (what :func:`look_loss` needs), in eval mode the head's
    logits (used only when LOOK's k-NN rule is not: a linear probe fitted later, say)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.features, self.head = split_head(model)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)
        return cast(Tensor, z if self.training else self.head(z))


class KNNClassifier(nn.Module):
    """Predict with :func:`knn_log_probs` against a fixed bank of training features; the
    outputs are log vote shares (argmax = the k-NN prediction)."""

    def __init__(self, features: nn.Module, bank: Tensor, bank_labels: Tensor,
                 num_classes: int, k: int, temperature: float | None, normalize: bool) -> None:
        super().__init__()
        self.features = features
        self.register_buffer("bank", bank)
        self.register_buffer("bank_labels", bank_labels)
        self.num_classes, self.k = num_classes, k
        self.temperature, self.normalize = temperature, normalize

    def forward(self, x: Tensor) -> Tensor:
        return knn_log_probs(self.features(x), cast(Tensor, self.bank),
                             cast(Tensor, self.bank_labels), self.num_classes, self.k,
                             self.temperature, normalize=self.normalize)


@torch.no_grad()
def _feature_bank(features: nn.Module, x: Tensor, chunk: int = 1024) -> Tensor:
    was_training = features.training
    features.eval()
    device = next(features.parameters(), x).device
    bank = torch.cat([features(x[i:i + chunk].to(device)).float()
                      for i in range(0, len(x), chunk)])
    features.train(was_training)
    return bank


@TECHNIQUES.register(
    "look",
    summary="LOOK: leave-one-out k-NN loss within the batch on normalized penultimate "
    "features; predicts by a k-NN vote over the training features.",
    papers=(26,),
    search_space={"k": ("choice", [5, 10, 20]), "temperature": ("choice", [0.05, 0.1, 0.5])},
    references=(REFERENCE,),
)
@dataclass
class LOOK(Technique):
    """Train with :func:`look_loss` on the features before the model's linear ``head``
    (:class:`LOOKNetwork`) instead of cross-entropy, and evaluate with the k-NN rule
    (:class:`KNNClassifier`) over the features of the training set, recomputed from the
    current weights at each evaluation (the training set's own accuracy therefore counts
    each example's vote for itself). The head gets no gradient. A batch smaller than k + 1
    uses k = B − 1. Needs the training data as tensors or a Split (``State.train_data``).
    """

    k: Annotated[int, Ge(1)] = 10  # neighbours that vote, among the other examples
    temperature: Annotated[float, Gt(0)] = 0.1  # τ of the vote weights exp(s / τ)
    normalize: bool = True  # cosine similarity of L2-normalized features (the paper's)
    eps: Annotated[float, Gt(0)] = 1e-6  # floor inside the log, for p_i = 0

    touches = frozenset({"model", "loss", "eval_model"})

    def transform_model(self, model: nn.Module) -> nn.Module:
        return LOOKNetwork(model)

    def loss(self, logits: Tensor, targets: Tensor, state: State) -> Tensor:
        if len(targets) < 2:
            raise ValueError("look needs batches of at least 2 examples (leave-one-out "
                             f"neighbours), got {len(targets)}")
        return look_loss(logits, targets, min(self.k, len(targets) - 1), self.temperature,
                         normalize=self.normalize, eps=self.eps)

    def eval_model(self, state: State) -> nn.Module | None:
        net = state.model
        if not isinstance(net, LOOKNetwork):
            raise ValueError("look evaluates with the LOOKNetwork its transform_model returns, "
                             f"got {type(net).__name__}")
        if state.train_data is None:
            raise ValueError("look's k-NN prediction needs the training data as tensors or a "
                             "Split (State.train_data), not a DataLoader")
        x, y = state.train_data
        bank = _feature_bank(net.features, x)
        return KNNClassifier(net.features, bank, y.to(bank.device), net.head.out_features,
                             self.k, self.temperature, self.normalize)
