"""Claims of transductive few-shot learning on a backbone trained on base classes only:
clustering the queries beats the inductive prototype classifier (catalog #52), and UNEM's
learned hyper-parameters beat a grid value chosen on balanced episodes (catalog #31).

Both train the same backbone per seed (an MLP on the five base digits of scikit-learn's
digits, :class:`~heldout.tasks.few_shot.DigitsBaseNovel`) and draw 5-way episodes from the
five novel digits (so every episode has all novel classes), 15 queries per class on average,
balanced or with Dirichlet(α = 2) class proportions (the realistic setting of Veilleux et
al., arXiv:2204.11181). Features are CL2N-normalized with the mean base-class (training)
feature. Every method sees the same episodes, so differences are paired per episode; a 95%
interval is ``mean ± 1.96 · sd / √n`` over episodes.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from heldout.adapt.few_shot import FewShotAdapter, KMeans, LaplacianShot, SimpleShot
from heldout.adapt.unem import UNEM
from heldout.claims.base import Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.core.adapter import Source
from heldout.core.sampling import stream_generator
from heldout.registry import CLAIMS
from heldout.run.assembly import build
from heldout.store.sqlite import Store
from heldout.tasks.few_shot import Episode, sample_episode
from heldout.tasks.splitting import stratified_partition

__all__ = ["ClusteringBeatsPrototypes", "UNEMBeatsGrid", "backbone_config", "paired_interval"]

IMBALANCE = 2.0  # Dirichlet concentration of the imbalanced query sets (Veilleux et al.)
N_WAY, N_QUERY = 5, 15


def backbone_config(seed: int, steps: int) -> RunConfig:
    """The backbone run: an MLP (256, 256) trained with Adam on the base digits 0-4."""
    return RunConfig(
        task=Component("digits_base_novel", {"data_seed": seed}),
        model=Component("mlp", {"hidden": (256, 256)}),
        optimizer=OptimizerConfig(name="adam", lr=1e-3),
        measures=named("accuracy"),
        batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
    )


def paired_interval(values: torch.Tensor) -> tuple[float, float]:
    """``(mean, half-width)`` of a 95% normal interval of the mean of ``values``.

    Example:
        >>> mean, half = paired_interval(torch.tensor([1.0, 3.0]))  # sd √2, n 2
        >>> mean, round(half, 6)
        (2.0, 1.96)
    """
    values = values.double()
    return float(values.mean()), float(1.96 * values.std() / math.sqrt(len(values)))


@dataclass
class _Backbone:
    """A trained backbone's normalized-feature view of the novel pool."""

    adapter: FewShotAdapter  # bound, with the base-class mean for CL2N
    features: torch.Tensor  # raw features of the novel pool
    labels: torch.Tensor

    def episodes(self, count: int, k_shot: int, alpha: float | None, generator: torch.Generator,
                 pool: torch.Tensor | None = None) -> list[Episode]:
        """``count`` episodes of CL2N features, from the novel examples in ``pool``."""
        index = torch.arange(len(self.labels)) if pool is None else pool
        out = []
        for _ in range(count):
            e = sample_episode(self.features[index], self.labels[index], n_way=N_WAY,
                               k_shot=k_shot, n_query=N_QUERY, alpha=alpha, generator=generator)
            support, query = self.adapter.normalized(e.support_x, e.query_x)
            out.append(Episode(support, e.support_y, query, e.query_y))
        return out


def _backbone(claim: Claim, seed: int, steps: int, store: Store, progress: bool
              ) -> tuple[_Backbone, str]:
    cfg = backbone_config(seed, steps)
    claim.execute(cfg, store, progress)
    trainer = build(cfg, store=store, checkpoint_path=store.checkpoint_path(cfg.identity))
    trainer.resume()
    train, novel = trainer.eval_data["train"], trainer.eval_data["novel"]
    adapter = SimpleShot()
    adapter.bind(trainer.model.eval(), Source(train.x, train.y))
    return _Backbone(adapter, adapter.features(novel.x), novel.y), cfg.identity


def _accuracies(method: FewShotAdapter, episodes: list[Episode]) -> torch.Tensor:
    return torch.tensor([float((method.classify(e.support_x, e.support_y, e.query_x).argmax(1)
                                == e.query_y).double().mean()) for e in episodes])


@CLAIMS.register(
    "few-shot-clustering",
    summary="Transductive k-means and LaplacianShot beat the prototype classifier in 5-way "
    "1- and 5-shot episodes; the gain shrinks on imbalanced query sets.",
    papers=(52,),
    references=("Transductive Few-Shot Learning: Clustering is All You Need? (arXiv:2106.09516)",
                "Realistic Evaluation of Transductive Few-Shot Learning (arXiv:2204.11181)"),
)
@dataclass
class ClusteringBeatsPrototypes(Claim):
    """Rule (fixed before the first full run). Per seed (one backbone) and shot
    ``k ∈ {1, 5}``, ``episodes`` balanced and ``episodes`` Dirichlet(2)-imbalanced 5-way
    episodes (75 queries) are drawn; each method's accuracy on an episode is paired with
    SimpleShot's on the same episode. Methods at their defaults: ``kmeans`` (hard, supports
    in the means, 10 iterations) and ``laplacianshot`` (λ = 1, 3 neighbours). A seed PASSES
    when, for both methods and both shots, (a) on balanced episodes the 95% interval of the
    mean gain over SimpleShot lies above 0, and (b) the mean gain on imbalanced episodes is
    smaller than on balanced ones. Verdict: :func:`seed_vote` over seeds. The parts (a)
    "beats" and (b) "shrinks" are also voted separately in the numbers."""

    statement = ("In 5-way 1-shot and 5-shot episodes, transductive k-means and the "
                 "Laplacian-regularized bound optimizer beat the inductive prototype "
                 "classifier; the gap shrinks as the query sets become class-imbalanced.")
    steps: int = 600  # backbone training steps (~36 epochs of the base digits)
    episodes: int = 300  # episodes per (shot, balance) setting
    ci_steps: int = 200
    ci_episodes: int = 40

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        steps, count = ((self.ci_steps, self.ci_episodes) if scale == "ci"
                        else (self.steps, self.episodes))
        methods = {"kmeans": KMeans(), "laplacianshot": LaplacianShot()}
        numbers: dict[str, Any] = {}
        passed, beats_votes, shrinks_votes, run_ids = [], [], [], []
        for seed in seeds:
            backbone, run_id = _backbone(self, seed, steps, store, progress)
            run_ids.append(run_id)
            row: dict[str, Any] = {}
            beats = shrinks = True
            for k_shot in (1, 5):
                gains = {}
                for balance, alpha in (("balanced", None), ("imbalanced", IMBALANCE)):
                    generator = stream_generator(seed, f"episodes-{k_shot}-{balance}")
                    episodes = backbone.episodes(count, k_shot, alpha, generator)
                    base = _accuracies(backbone.adapter, episodes)
                    row[f"{k_shot}shot_{balance}_simpleshot"] = float(base.mean())
                    for name, method in methods.items():
                        accuracy = _accuracies(method, episodes)
                        gain, half = paired_interval(accuracy - base)
                        gains[name, balance] = (gain, half)
                        row[f"{k_shot}shot_{balance}_{name}"] = float(accuracy.mean())
                        row[f"{k_shot}shot_{balance}_{name}_gain"] = [gain, half]
                for name in methods:
                    gain, half = gains[name, "balanced"]
                    beats &= gain - half > 0
                    shrinks &= gains[name, "imbalanced"][0] < gain
            row.update(beats=beats, shrinks=shrinks, passed=beats and shrinks)
            passed.append(beats and shrinks)
            beats_votes.append(beats)
            shrinks_votes.append(shrinks)
            numbers[f"seed{seed}"] = row
        numbers["beats_vote"] = seed_vote(beats_votes)
        numbers["shrinks_vote"] = seed_vote(shrinks_votes)
        summary = "; ".join(
            f"seed {s}: " + ", ".join(
                f"{k}-shot {m} {n[f'{k}shot_balanced_{m}_gain'][0] * 100:+.1f}±"
                f"{n[f'{k}shot_balanced_{m}_gain'][1] * 100:.1f} pp balanced → "
                f"{n[f'{k}shot_imbalanced_{m}_gain'][0] * 100:+.1f} imbalanced"
                for k, m in itertools.product((1, 5), methods))
            for s, n in zip(seeds, (numbers[f"seed{s}"] for s in seeds), strict=True))
        summary += (f"; beats {sum(beats_votes)}/{len(seeds)}, shrinks "
                    f"{sum(shrinks_votes)}/{len(seeds)}; {sum(passed)}/{len(seeds)} seeds pass")
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))


@CLAIMS.register(
    "unem-learned-hyperparameters",
    summary="On imbalanced episodes UNEM's learned hyper-parameters beat the best fixed grid "
    "value chosen on balanced validation episodes.",
    papers=(31,),
    references=("UNEM: UNrolled Generalized EM for Transductive Few-Shot Learning "
                "(arXiv:2412.16739)",),
)
@dataclass
class UNEMBeatsGrid(Claim):
    """Rule (fixed before the first full run). Per seed, the novel examples are split per
    class into a validation and a test pool (half each, so no validation episode shares an
    example with a test episode). For each shot ``k ∈ {1, 5}``:

    * *grid*: the generalized EM with ``layers`` layers and one shared temperature ``T`` and
      class-balance weight ``γ``, ``(T, γ)`` the grid point (``temperatures`` ×
      ``balances``) with the best mean accuracy on ``val_episodes`` BALANCED validation
      episodes (the usual protocol);
    * *learned*: UNEM with per-layer ``T_l, γ_l`` learned by :meth:`UNEM.fit` (from
      ``T = 0.1, γ = 0``) on ``val_episodes`` validation episodes with the target imbalance
      (Dirichlet(2), as in the paper);
    * both are scored on the same ``test_episodes`` Dirichlet(2)-imbalanced test episodes.

    A seed PASSES when, for both shots, the 95% interval of the mean paired accuracy gain
    (learned − grid) lies above 0. Verdict: :func:`seed_vote` over seeds."""

    statement = ("On class-imbalanced query sets, UNEM's hyper-parameters learned by unrolling "
                 "beat the best fixed value found by grid search on balanced validation data.")
    steps: int = 600  # backbone training steps (the backbone of few-shot-clustering)
    layers: int = 10
    val_episodes: int = 200
    test_episodes: int = 300
    epochs: int = 10  # passes of UNEM.fit over the validation episodes
    temperatures: tuple[float, ...] = (0.02, 0.05, 0.1, 0.2, 0.5)
    balances: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    ci_steps: int = 200
    ci_val_episodes: int = 30
    ci_test_episodes: int = 40
    ci_epochs: int = 3

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        ci = scale == "ci"
        steps = self.ci_steps if ci else self.steps
        n_val = self.ci_val_episodes if ci else self.val_episodes
        n_test = self.ci_test_episodes if ci else self.test_episodes
        epochs = self.ci_epochs if ci else self.epochs
        numbers: dict[str, Any] = {}
        passed, run_ids = [], []
        for seed in seeds:
            backbone, run_id = _backbone(self, seed, steps, store, progress)
            run_ids.append(run_id)
            val_pool, test_pool = stratified_partition(
                backbone.labels, (0.5,), stream_generator(seed, "unem-pools"))
            row: dict[str, Any] = {}
            ok = True
            for k_shot in (1, 5):
                val_balanced = backbone.episodes(
                    n_val, k_shot, None, stream_generator(seed, f"unem-val-balanced-{k_shot}"),
                    val_pool)
                val_imbalanced = backbone.episodes(
                    n_val, k_shot, IMBALANCE,
                    stream_generator(seed, f"unem-val-imbalanced-{k_shot}"), val_pool)
                test = backbone.episodes(
                    n_test, k_shot, IMBALANCE, stream_generator(seed, f"unem-test-{k_shot}"),
                    test_pool)
                grid = {(t, g): float(_accuracies(self._unem(backbone, t, g), val_balanced).mean())
                        for t, g in itertools.product(self.temperatures, self.balances)}
                best = max(grid, key=lambda key: grid[key])
                chosen = self._unem(backbone, *best)
                learned = self._unem(backbone, 0.1, 0.0)
                history = learned.fit_features(val_imbalanced, epochs=epochs)
                grid_accuracy = _accuracies(chosen, test)
                learned_accuracy = _accuracies(learned, test)
                gain, half = paired_interval(learned_accuracy - grid_accuracy)
                ok &= gain - half > 0
                row[f"{k_shot}shot"] = {
                    "grid_best": list(best), "grid_val_balanced_accuracy": grid[best],
                    "grid_test": float(grid_accuracy.mean()),
                    "learned_test": float(learned_accuracy.mean()),
                    "gain": [gain, half],
                    "learned_temperatures": learned.log_temperatures.exp().tolist(),
                    "learned_balances": learned.balances.tolist(),
                    "fit_loss": [history[0], history[-1]],
                }
            row["passed"] = ok
            passed.append(ok)
            numbers[f"seed{seed}"] = row
        summary = "; ".join(
            f"seed {s}: " + ", ".join(
                f"{k}-shot learned {numbers[f'seed{s}'][f'{k}shot']['learned_test'] * 100:.1f}"
                f" vs grid {numbers[f'seed{s}'][f'{k}shot']['grid_test'] * 100:.1f}"
                f" ({numbers[f'seed{s}'][f'{k}shot']['gain'][0] * 100:+.1f}"
                f"±{numbers[f'seed{s}'][f'{k}shot']['gain'][1] * 100:.1f} pp)"
                for k in (1, 5))
            for s in seeds) + f"; {sum(passed)}/{len(seeds)} seeds pass"
        return record(store, self.verdict(seed_vote(passed), summary, numbers, seeds, run_ids,
                                          scale))

    def _unem(self, backbone: _Backbone, temperature: float, balance: float) -> UNEM:
        assert backbone.adapter.net is not None
        unem = UNEM(layers=self.layers, temperature=temperature, balance=balance)
        unem.bind(backbone.adapter.net)  # it classifies features already normalized
        return unem
