"""UNEM: generalized EM for transductive few-shot learning, unrolled into layers whose
hyper-parameters (temperature, class-balance weight) are learned on validation episodes.

The generalized EM (Gaussian case, identity covariance) alternates, at layer ``l``:

* E-step: ``u_qc = softmax_c(−‖f_q − w_c‖² / T_l + γ_l v_c)``, with
  ``v_c = log π_c + 1`` and ``π_c`` the mean assignment of class ``c`` over the queries at
  the previous layer (the gradient of the partition term ``Σ_c π_c log π_c``; at the first
  layer ``v`` is constant, so ``γ_1`` has no effect). ``γ > 0`` favours the classes that
  already hold many queries (tolerates imbalance, PADDLE's term), ``γ < 0`` pushes towards
  balanced classes, ``γ = 0`` is soft k-means at temperature ``T``;
* M-step: ``w_c = (Σ_{s∈S_c} f_s + Σ_q u_qc f_q) / (|S_c| + Σ_q u_qc)``.

``w`` starts at the support prototypes; the output is the E-step of the last layer (so
``L`` layers are ``L`` E-steps and ``L − 1`` M-steps: with ``γ = 0`` and one shared ``T``,
UNEM with ``L`` layers equals :func:`~heldout.adapt.few_shot.kmeans` with ``soft=True`` and
``iterations = L − 1``). The per-layer ``T_l`` (as ``log T_l``) and ``γ_l`` are trained by
backpropagation through the unrolled layers, minimizing the cross-entropy of the last
layer's assignments on the query labels of validation episodes (:meth:`UNEM.fit`), instead
of a grid search. Deviation: the log-likelihood is scaled as ``−‖f − w‖² / T`` (the paper's
``½`` is absorbed in ``T``).

References:
    Zhou, Shakeri, Sadraoui, Kaaniche, Pesquet, Ben Ayed. UNEM: UNrolled Generalized EM for
    Transductive Few-Shot Learning. arXiv:2412.16739 (catalog #31).
    Martin, Boudiaf, Chouzenoux, Pesquet, Ben Ayed. Towards Practical Few-shot Query Sets:
    Transductive Minimum Description Length Inference. arXiv:2210.14545 (PADDLE).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.adapt.few_shot import FewShotAdapter, check_episode, prototypes, squared_distances
from heldout.core.adapter import Source
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.registry import ADAPTERS
from heldout.tasks.few_shot import Episode

__all__ = ["UNEM", "unrolled_em"]


def unrolled_em(support: Tensor, support_y: Tensor, query: Tensor, temperatures: Tensor,
                balances: Tensor) -> Tensor:
    """The ``(Q, N)`` log assignments of the last layer of the unrolled generalized EM, one
    layer per entry of ``temperatures`` (``T_l > 0``) and ``balances`` (``γ_l``);
    differentiable in both.

    Example:
        >>> s, sy = torch.tensor([[0.0], [4.0]]), torch.tensor([0, 1])
        >>> one = unrolled_em(s, sy, torch.tensor([[1.0]]), torch.tensor([1.0]),
        ...                   torch.tensor([0.0]))
        >>> [round(p, 5) for p in one.exp()[0].tolist()]  # softmax(−1, −9)
        [0.99966, 0.00034]
    """
    n_way = check_episode(support, support_y, query)
    if temperatures.shape != balances.shape or temperatures.dim() != 1 or not len(temperatures):
        raise ValueError("temperatures and balances must be 1-D, one entry per layer, of the "
                         f"same length; got {tuple(temperatures.shape)} and "
                         f"{tuple(balances.shape)}")
    one_hot = F.one_hot(support_y, n_way).to(support.dtype)
    support_sum, support_count = one_hot.T @ support, one_hot.sum(0)
    centers = prototypes(support, support_y, n_way)
    prior = torch.zeros(n_way, dtype=query.dtype)
    log_assign = query.new_zeros(len(query), n_way)
    for layer, (temperature, balance) in enumerate(zip(temperatures, balances, strict=True)):
        log_assign = torch.log_softmax(
            -squared_distances(query, centers) / temperature + balance * prior, dim=1)
        if layer == len(temperatures) - 1:
            break
        assign = log_assign.exp()
        prior = torch.log(assign.mean(0) + 1e-12) + 1
        centers = (support_sum + assign.T @ query) / (support_count + assign.sum(0)).unsqueeze(1)
    return log_assign


@ADAPTERS.register(
    "unem",
    summary="UNEM: generalized EM unrolled into layers, temperature and class-balance weight "
    "learned on validation episodes.",
    papers=(31,),
    search_space={"temperature": ("log_uniform", 0.01, 1.0),
                  "balance": ("uniform", -5.0, 5.0)},
    references=("UNEM: UNrolled Generalized EM for Transductive Few-Shot Learning "
                "(arXiv:2412.16739)",),
)
@dataclass(eq=False)
class UNEM(FewShotAdapter):
    """UNEM (Zhou et al.; arXiv:2412.16739): the generalized EM of :func:`unrolled_em` with
    ``layers`` layers, each with its own temperature ``T_l`` and class-balance weight
    ``γ_l``. Unfitted, every layer uses ``temperature`` and ``balance``; :meth:`fit` learns
    them by backpropagation on labeled validation episodes (Adam on the query
    cross-entropy). The learned values are the adapter's state (``extra_state``)."""

    layers: Annotated[int, Ge(1)] = 10  # unrolled EM iterations
    temperature: Annotated[float, Gt(0.0)] = 0.1  # initial T of every layer
    balance: float = 0.0  # initial class-balance weight γ of every layer

    def __post_init__(self, model: nn.Module | None = None) -> None:
        self.log_temperatures = torch.full((self.layers,), float(torch.tensor(
            self.temperature).log()))
        self.balances = torch.full((self.layers,), float(self.balance))
        super().__post_init__(model)

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        super().prepare(net, source)
        self.log_temperatures = torch.full_like(self.log_temperatures,
                                                float(torch.tensor(self.temperature).log()))
        self.balances = torch.full_like(self.balances, float(self.balance))

    def classify(self, support: Tensor, support_y: Tensor, query: Tensor) -> Tensor:
        return unrolled_em(support, support_y, query, self.log_temperatures.exp().to(query),
                           self.balances.to(query))

    def fit(self, episodes: Sequence[Episode], *, epochs: int = 20, lr: float = 0.05,
            batch: int = 10) -> list[float]:
        """Learn every layer's ``log T_l`` and ``γ_l`` on labeled validation ``episodes``
        (raw inputs): their features are extracted and normalized, then :meth:`fit_features`.
        Returns the mean loss of each pass. The backbone stays frozen."""
        if self.net is None:
            raise RuntimeError(self._unbound())
        featured = []
        for e in episodes:
            support, query = self.normalized(self.features(e.support_x),
                                             self.features(e.query_x))
            featured.append(Episode(support, e.support_y, query, e.query_y))
        return self.fit_features(featured, epochs=epochs, lr=lr, batch=batch)

    def fit_features(self, episodes: Sequence[Episode], *, epochs: int = 20, lr: float = 0.05,
                     batch: int = 10) -> list[float]:
        """:meth:`fit` on episodes of already normalized features: Adam steps on the mean
        query cross-entropy of the last layer over mini-batches of ``batch`` episodes (in
        order), ``epochs`` passes. Returns the mean loss of each pass (measured during it)."""
        if not episodes or epochs < 1 or batch < 1 or not lr > 0:
            raise ValueError(f"fit needs episodes, epochs >= 1, batch >= 1 and lr > 0; got "
                             f"{len(episodes)} episodes, {epochs}, {batch}, {lr}")
        log_t = self.log_temperatures.clone().requires_grad_(True)
        gamma = self.balances.clone().requires_grad_(True)
        optimizer = torch.optim.Adam([log_t, gamma], lr=lr)
        history = []
        for _ in range(epochs):
            losses = []
            for start in range(0, len(episodes), batch):
                loss = torch.stack([
                    F.nll_loss(unrolled_em(e.support_x, e.support_y, e.query_x, log_t.exp(),
                                           gamma), e.query_y)
                    for e in episodes[start:start + batch]]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                losses.append(float(loss.detach()))
            history.append(sum(losses) / len(losses))
        self.log_temperatures = log_t.detach()
        self.balances = gamma.detach()
        return history

    def extra_state(self) -> dict[str, Any]:
        return {"log_temperatures": self.log_temperatures.clone(),
                "balances": self.balances.clone()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.log_temperatures = state["log_temperatures"].clone()
        self.balances = state["balances"].clone()
