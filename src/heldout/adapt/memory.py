"""AdaNPC: a k-nearest-neighbour memory classifier that absorbs the test features it sees.

The memory holds L2-normalized features (from the trained featurizer) and labels of the
labeled source data. A test instance with normalized feature z is classified by its k
nearest memory entries under cosine similarity s_j = ⟨z, m_j⟩, each voting for its label with
weight softmax(s / τ)_j:

    p(c | z) = Σ_{j ∈ kNN(z)} softmax(s / τ)_j · 1[y_j = c]          (:func:`knn_vote`)

Then, online, z joins the memory with its predicted label ŷ = argmax_c p(c | z) when its
confidence max_c p(c | z) is at least β, so the memory drifts from the training distribution
towards the test one without any gradient step.

References:
    Zhang, Wang, Jin, Tan, Zhao, Wang. AdaNPC: Exploring Non-Parametric Classifier for
    Test-Time Adaptation. ICML 2023. arXiv:2304.12566 (catalog #33).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from heldout.core.adapter import Adapter, Source, split_head
from heldout.core.bounds import Annotated, Ge, Gt
from heldout.registry import ADAPTERS

__all__ = ["FAISS_FROM", "AdaNPC", "KNNMemory", "knn_vote"]

Search = Literal["auto", "torch", "faiss"]
_REFERENCE = "AdaNPC: Exploring Non-Parametric Classifier for Test-Time Adaptation " \
             "(arXiv:2304.12566)"
# "auto" searches with faiss from this many memory entries on. bench/adapt_adanpc.py: at 50,000
# entries and k = 100 a torch matmul + topk is 2-3x faster than IndexFlatIP on one thread, but
# it holds a (batch x entries) similarity matrix; faiss scans the memory in blocks, so for
# memories this large (256 MB of similarities for a batch of 256) it bounds the memory used.
FAISS_FROM = 262_144


def knn_vote(similarities: Tensor, labels: Tensor, num_classes: int, tau: float) -> Tensor:
    """Class probabilities from the k nearest neighbours of each query.

    ``similarities`` (B, k) are the cosine similarities of the k neighbours, ``labels`` (B, k)
    their labels; each neighbour votes for its label with weight ``softmax(s / τ)``, so each
    row of the result (B, ``num_classes``) sums to 1.

    Example:
        >>> import math
        >>> s = torch.tensor([[1.0, 0.0, 0.0]])  # one query, three neighbours
        >>> y = torch.tensor([[0, 1, 1]])
        >>> p = knn_vote(s, y, num_classes=2, tau=1.0)  # weights e, 1, 1 over e + 2
        >>> round(float(p[0, 0]), 4) == round(math.e / (math.e + 2), 4)
        True
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if similarities.shape != labels.shape or similarities.dim() != 2:
        raise ValueError(f"similarities and labels must both be (B, k), got "
                         f"{tuple(similarities.shape)} and {tuple(labels.shape)}")
    weights = (similarities / tau).softmax(dim=1)
    scores = torch.zeros(len(similarities), num_classes, dtype=weights.dtype,
                         device=weights.device)
    return scores.scatter_add_(1, labels.long(), weights)


def _faiss() -> Any:
    try:
        return importlib.import_module("faiss")
    except ImportError as error:
        raise ImportError("the faiss search path of AdaNPC's memory needs faiss: "
                          "pip install heldout[adapt] (or search='torch')") from error


class KNNMemory:
    """A bounded memory of L2-normalized features and labels with exact cosine k-NN search.

    The first ``source_size`` entries are the source (training) data and are never evicted;
    test entries follow in the order they were admitted. **Eviction rule**: when an addition
    would take the memory past ``capacity`` entries, the oldest test entries are dropped
    first (FIFO over admitted test entries); if a single addition alone holds more entries
    than the room left for test entries, only its last ones are kept.

    Search is exact either way: ``"torch"`` is a matmul and ``topk``; ``"faiss"`` an
    ``IndexFlatIP`` over the same float32 features (inner product = cosine on normalized
    rows); ``"auto"`` uses faiss from :data:`FAISS_FROM` entries on when faiss is installed.
    The tensors are the state (:meth:`state`); the faiss index is rebuilt from them on load.
    """

    def __init__(self, features: Tensor, labels: Tensor, capacity: int,
                 search: Search = "auto") -> None:
        if search not in ("auto", "torch", "faiss"):
            raise ValueError(f"search must be 'auto', 'torch' or 'faiss', got {search!r}")
        if features.dim() != 2 or labels.shape != (len(features),):
            raise ValueError(f"features must be (N, d) and labels (N,), got "
                             f"{tuple(features.shape)} and {tuple(labels.shape)}")
        if len(features) > capacity:
            raise ValueError(f"capacity ({capacity}) must hold the {len(features)} source "
                             "entries; raise capacity")
        if search == "faiss":
            _faiss()  # fail now, with the install hint, not at the first batch
        self.capacity = capacity
        self.search_path = search
        self.load(F.normalize(features.detach().float(), dim=1), labels, len(features))

    # ------------------------------------------------------------------ state
    def load(self, features: Tensor, labels: Tensor, source_size: int) -> None:
        """Set the entries (features already normalized, as :meth:`state` holds them)."""
        self.features = features.detach().float().contiguous()
        self.labels = labels.detach().long().clone()
        self.source_size = int(source_size)
        self._index: Any = None
        if self._use_faiss():
            self._index = _faiss().IndexFlatIP(self.features.shape[1])
            self._index.add(self.features.cpu().numpy())

    def state(self) -> dict[str, Any]:
        return {"features": self.features.clone(), "labels": self.labels.clone(),
                "source_size": self.source_size}

    def __len__(self) -> int:
        return len(self.features)

    def test_share(self) -> float:
        """The fraction of the memory's entries that are admitted test features."""
        return (len(self) - self.source_size) / len(self)

    def _use_faiss(self) -> bool:
        if self.search_path == "auto":
            if len(self) < FAISS_FROM:
                return False
            try:
                _faiss()
            except ImportError:
                return False
            return True
        return self.search_path == "faiss"

    # ------------------------------------------------------------------ search and growth
    def search(self, queries: Tensor, k: int) -> tuple[Tensor, Tensor]:
        """``(similarities, labels)`` of the ``min(k, len(self))`` nearest entries of each
        normalized query row, nearest first."""
        k = min(k, len(self))
        queries = queries.detach().float()
        if self._index is not None:
            sims, rows = self._index.search(queries.cpu().contiguous().numpy(), k)
            sims_t = torch.from_numpy(sims).to(queries.device)
            rows_t = torch.from_numpy(rows).to(self.labels.device)
        else:
            sims_t, rows_t = (queries @ self.features.T).topk(k, dim=1)
        return sims_t, self.labels[rows_t]

    def add(self, features: Tensor, labels: Tensor) -> None:
        """Admit test entries, evicting the oldest test entries beyond ``capacity``."""
        room = self.capacity - self.source_size  # entries left for test features
        features = F.normalize(features.detach().float(), dim=1)
        labels = labels.detach().long()
        if len(features) > room:  # one addition larger than the room: keep its newest
            features, labels = features[len(features) - room:], labels[len(labels) - room:]
        if not len(features):
            return
        evict = max(0, len(self) + len(features) - self.capacity)
        kept = slice(self.source_size + evict, None)  # the oldest ``evict`` test entries go
        self.features = torch.cat([self.features[:self.source_size], self.features[kept],
                                   features])
        self.labels = torch.cat([self.labels[:self.source_size], self.labels[kept], labels])
        if self._index is not None and evict:
            selector = _faiss().IDSelectorRange(self.source_size, self.source_size + evict)
            self._index.remove_ids(selector)
        if self._index is not None:
            self._index.add(features.cpu().contiguous().numpy())
        elif self._use_faiss():  # grew past FAISS_FROM: build the index once
            self.load(self.features, self.labels, self.source_size)


@ADAPTERS.register(
    "adanpc",
    summary="AdaNPC: classify by a k-NN vote over a memory of source features, which absorbs "
    "confident test features.",
    papers=(33,),
    search_space={"k": ("int_uniform", 1, 200), "tau": ("log_uniform", 0.01, 0.5),
                  "beta": ("uniform", 0.0, 1.0)},
    references=(_REFERENCE,),
)
@dataclass(eq=False)
class AdaNPC(Adapter):
    """AdaNPC (Zhang et al., ICML 2023; arXiv:2304.12566). At bind, the memory is filled with
    the normalized features (``split_head(model)[0]``, in eval mode) and labels of the source
    data. Each test batch is predicted by :func:`knn_vote` over its k nearest memory entries
    (cosine similarity, weights ``softmax(s / τ)``); then every instance whose **confidence**,
    the largest vote share ``max_c p(c | z)``, is at least ``beta`` joins the memory with its
    predicted label. The model's parameters never change. The batch is predicted before any of
    it joins the memory.

    Deviations from the official code, on purpose: (1) the official confidence applies a
    softmax to the vote, which is already a distribution, squashing it towards uniform (for 7
    classes its maximum is ≈ 0.31, so β ≥ 0.75 admits nothing); here the vote share itself
    is the confidence, in ``[1/C, 1]``; (2) the memory is bounded (``capacity``), evicting
    the oldest admitted test entries first (:class:`KNNMemory`); (3) no placeholder row. The
    scores returned are ``log p(c | z)`` (floored at 1e-12), so ``softmax`` of them gives the
    vote back. ``k`` larger than the memory uses the whole memory.
    """

    changes: ClassVar[frozenset[str]] = frozenset({"memory"})
    needs_source: ClassVar[bool] = True

    k: Annotated[int, Ge(1)] = 100  # neighbours that vote (the paper's default)
    tau: Annotated[float, Gt(0.0)] = 0.1  # temperature of the vote's softmax weights
    beta: Annotated[float, Ge(0.0)] = 0.1  # vote share at which a test instance joins memory
    capacity: Annotated[int, Ge(1)] = 100_000  # memory entries at most, source included
    search: Search = "auto"  # k-NN search: torch (small memories), faiss, or auto by size
    batch_size: Annotated[int, Ge(1)] = 1024  # source examples per featurizer pass at bind

    def prepare(self, net: nn.Module, source: Source | None) -> None:
        assert source is not None  # bind checks needs_source
        self.featurizer, head = split_head(net)
        self.num_classes = head.out_features
        with torch.no_grad():
            features = torch.cat([self.featurizer(chunk)
                                  for chunk in source.x.split(self.batch_size)])
        self.memory = KNNMemory(features, source.y, self.capacity, self.search)

    def forward(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            z = F.normalize(self.featurizer(x).float(), dim=1)
            votes = knn_vote(*self.memory.search(z, self.k), self.num_classes, self.tau)
            confidence, predicted = votes.max(dim=1)
            admit = confidence >= self.beta
            self.memory.add(z[admit], predicted[admit])
        return votes.clamp_min(1e-12).log()

    def test_share(self) -> float:
        """The share of the memory's entries that are test features (0 right after bind)."""
        if self.net is None:
            raise RuntimeError(self._unbound())
        return self.memory.test_share()

    def extra_state(self) -> dict[str, Any]:
        return {"memory": self.memory.state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        memory = state["memory"]
        self.memory.load(memory["features"], memory["labels"], memory["source_size"])
