"""Synthetic domains and style/content stand-ins (#8, #59, #75, #53): identity settings, a
scipy oracle for the convolution, exact statistics swaps, reconstruction from the recorded
conditioning, label-preserving rare-composition swaps, and the registry contracts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import signal

import tests.test_contracts as contracts
from heldout.methods.augment.synthetic import (
    AdaINMix,
    ConditionedSynthesis,
    RandomConv,
    RareCompositions,
    adain_mix,
    as_spatial,
    composition_counts,
    conditioned_synthesis,
    perturb_to_rare,
    random_conv,
    random_convolution,
)
from heldout.registry import TASKS
from heldout.tasks.compositional import composition_label

SETTINGS = {
    "random_conv": ["task=digits_shift"],
    "adain_mix": ["task=digits_shift"],
    "conditioned_synthesis": ["task=digits_shift"],
    "rare_compositions": ["task=compositional", "task.samples_per_domain=200"],
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_random_convolution_matches_scipy_cross_correlation():
    x = torch.randn(2, 3, 6, 7, generator=gen(0), dtype=torch.float64)
    weight = torch.randn(3, 3, 3, 3, generator=gen(1), dtype=torch.float64)
    out = random_convolution(x, weight).numpy()
    for b in range(2):
        for c_out in range(3):
            expected = sum(signal.correlate2d(x[b, c].numpy(), weight[c_out, c].numpy(),
                                              mode="same") for c in range(3))
            np.testing.assert_allclose(out[b, c_out], expected, atol=1e-10)


def test_random_conv_identity_settings_and_filter_scale():
    x = torch.rand(5, 64, generator=gen(0))
    assert torch.equal(random_conv(x, gen(1), p=0.0), x)
    # a kernel of size 1 over one channel is a scalar w: α x + (1 − α) w x stays ∝ x
    out = random_conv(x, gen(2), kernel_sizes=(1,), p=1.0)
    ratio = out / x
    torch.testing.assert_close(ratio, ratio[0, 0].expand_as(ratio))
    # He-normal filters: over many draws the weights have variance 1 / (C k²)
    weights = []
    for seed in range(300):
        g = gen(seed)
        torch.rand((), generator=g)  # the apply draw
        torch.randint(1, (), generator=g)  # the kernel-size draw
        weights.append(torch.randn(3, 3, 3, 3, generator=g).flatten() / (27 ** 0.5))
    assert abs(float(torch.cat(weights).var()) * 27 - 1) < 0.05
    with pytest.raises(ValueError, match="kernel_sizes"):
        RandomConv(kernel_sizes=(2,))
    with pytest.raises(ValueError, match="channels=2"):
        random_conv(torch.rand(2, 63), gen(), p=1.0, channels=2)


def test_random_conv_keeps_shapes_of_signals_and_colour_images():
    for x, channels in ((torch.rand(4, 40), 1), (torch.rand(4, 192), 3),
                        (torch.rand(4, 3, 8, 8), 3)):
        out = random_conv(x, gen(), p=1.0, mix=False, channels=channels)
        assert out.shape == x.shape and not torch.equal(out, x)
    assert as_spatial(torch.rand(2, 192), 3).shape == (2, 3, 8, 8)


def test_adain_mix_gives_each_sample_its_partners_statistics_across_domains():
    x = torch.rand(8, 2, 5, 5, generator=gen(0)) * torch.arange(1, 9.0)[:, None, None, None]
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    g1, g2 = gen(3), gen(3)
    out = adain_mix(x, g1, groups, p=1.0, eps=0.0)
    # the same draws, by hand: the partners (another domain's samples), then the statistics
    other = (groups[:, None] != groups[None, :]).double()
    partner = torch.multinomial(other, 1, generator=g2).squeeze(1)
    assert (groups[partner] != groups).all()
    flat = x.reshape(8, 2, -1).double().numpy()
    out_flat = out.reshape(8, 2, -1).double().numpy()
    np.testing.assert_allclose(out_flat.mean(-1), flat.mean(-1)[partner], atol=1e-5)
    np.testing.assert_allclose(out_flat.std(-1), flat.std(-1)[partner], rtol=1e-4)
    # content is kept: the normalized sample is unchanged
    z = (flat - flat.mean(-1, keepdims=True)) / flat.std(-1, keepdims=True)
    z_out = (out_flat - out_flat.mean(-1, keepdims=True)) / out_flat.std(-1, keepdims=True)
    np.testing.assert_allclose(z_out, z, atol=1e-3)
    assert torch.equal(adain_mix(x, gen(), groups, p=0.0), x)


def test_conditioned_synthesis_is_rebuilt_from_its_conditioning():
    x = torch.rand(10, 64, generator=gen(0))
    y = torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
    samples, labels, cond = conditioned_synthesis(x, y, gen(1), 7)
    i, j = cond[:, 0].long(), cond[:, 1].long()
    lam, a, b = cond[:, 2:3], cond[:, 3:4], cond[:, 4:5]
    torch.testing.assert_close(samples, a * (lam * x[i] + (1 - lam) * x[j]) + b)
    assert torch.equal(labels, y[i]) and torch.equal(y[j], y[i])  # same-class partners
    assert ((lam >= 0.5) & (lam <= 1)).all() and ((a >= 0.8) & (a <= 1.2)).all()
    # degenerate ranges: copies of the sources
    copies, _, _ = conditioned_synthesis(x, y, gen(2), 4, (1.0, 1.0), (1.0, 1.0), (0.0, 0.0))
    _, _, cond2 = conditioned_synthesis(x, y, gen(2), 4, (1.0, 1.0), (1.0, 1.0), (0.0, 0.0))
    assert torch.equal(copies, x[cond2[:, 0].long()])
    # a plugged-in synthesizer sees the conditioning images and vectors
    negated, _, _ = conditioned_synthesis(x, y, gen(1), 7, synthesizer=lambda im, c: -im)
    assert torch.equal(negated, -samples)
    with pytest.raises(ValueError, match="float inputs"):
        conditioned_synthesis(torch.zeros(3, 2, dtype=torch.long), y[:3], gen(), 2)
    with pytest.raises(ValueError, match="mix_range"):
        conditioned_synthesis(x, y, gen(), 2, mix_range=(1.0, 0.5))


def test_conditioned_synthesis_technique_appends_and_records():
    x, y = torch.rand(8, 64), torch.arange(8) % 2
    technique = ConditionedSynthesis(ratio=0.5)
    x2, y2 = technique(x, y, seed=0)
    assert x2.shape == (12, 64) and torch.equal(x2[:8], x) and torch.equal(y2[:8], y)
    cond = technique.conditioning
    assert cond.shape == (12, 5)
    assert torch.equal(cond[:8, 0], torch.arange(8.0)) and (cond[:8, 2:] == torch.tensor(
        [1.0, 1.0, 0.0])).all()


def test_rare_composition_swaps_keep_the_label_and_favour_unseen_pairs():
    n, kinds = 8, 4
    g = gen(0)
    train = torch.stack([torch.randint(4, (300,), generator=g), 8 + torch.randint(3, (300,),
                         generator=g), torch.randint(4, (300,), generator=g)], dim=1)
    counts = composition_counts(train, n)  # only objects 0..3 ever seen: 4..7 pairs unseen
    assert counts[:4, :4].sum() == 300 and counts[4:].sum() == 0
    out = perturb_to_rare(train, counts, kinds, 1.0, gen(1))
    # label-preserving: the label rule sees the same composition class
    assert torch.equal(composition_label(out, n, kinds), composition_label(train, n, kinds))
    # each node has two same-kind candidates: itself (its pair seen ~19 times, weight ~1/20)
    # and an unseen object (weight 1): ~95% of triples change; uniform choice would give 50%
    changed = (out != train).any(dim=1)
    assert float(changed.float().mean()) > 0.85
    assert torch.equal(perturb_to_rare(train, counts, kinds, 0.0, gen(2)), train)
    with pytest.raises(ValueError, match="n_objects=3"):
        composition_counts(train, 3)


def test_rare_compositions_on_the_task_reaches_the_held_out_compositions():
    task = TASKS.build("compositional", samples_per_domain=300)
    splits = task.splits(0)
    rare = splits.test.x
    rare_pairs = set(map(tuple, rare[:, [0, 2]].tolist()))
    assert not rare_pairs & set(map(tuple, splits.train.x[:, [0, 2]].tolist()))
    technique = RareCompositions(n_objects=12, kinds=4, p=1.0)
    technique._counts = composition_counts(splits.train.x, 12)
    x, y = technique(splits.train.x, splits.train.y, seed=0)
    assert torch.equal(y, splits.train.y)
    assert torch.equal(composition_label(x, 12, 4), y)
    reached = set(map(tuple, x[:, [0, 2]].tolist())) & rare_pairs
    assert len(reached) > 0.5 * len(rare_pairs)


def test_adain_mix_technique_uses_the_domains():
    x = torch.rand(6, 64)
    out, _ = AdaINMix(p=1.0)(x, torch.zeros(6, dtype=torch.long), seed=0,
                             groups=torch.tensor([0, 0, 0, 1, 1, 1]))
    assert out.shape == x.shape and not torch.equal(out, x)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_registry_contracts(name, tmp_path, monkeypatch):
    monkeypatch.setitem(contracts.TECHNIQUE_SETTING, name, SETTINGS[name])
    contracts.test_technique_runs_and_is_deterministic(name, tmp_path / "run")
    contracts.test_technique_state_round_trips(name)
    contracts.test_technique_resume_is_exact(name, tmp_path / "resume", monkeypatch)
