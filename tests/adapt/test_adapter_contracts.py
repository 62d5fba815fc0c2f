"""Contract tests generated from the adapters registry: every registered adapter builds from
its defaults, binds to a small BatchNorm network, predicts finite scores of the right shape,
leaves the caller's model untouched, resets to its bound state, and resumes exactly from a
checkpoint of its state (saved and loaded with ``weights_only=True``)."""

from __future__ import annotations

import copy
import io

import pytest
import torch
from torch import nn

from heldout.core.adapter import CHANGES, Adapter, Source
from heldout.registry import ADAPTERS

NAMES = ADAPTERS.names()
IN, CLASSES = 6, 4
# hyper-parameters that keep the contract fast (the behaviour checked does not depend on them)
PARAMS = {"protogcd": {"steps": 20}}


def network(seed: int = 0) -> nn.Sequential:
    """A BatchNorm MLP whose running statistics were set on shifted data, so test batches
    differ from them."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(IN, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 16),
                        nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, CLASSES))
    net.train()
    with torch.no_grad():
        for _ in range(5):
            net(torch.randn(64, IN) * 2 + 1)
    return net.eval()


def source_data(seed: int = 1) -> Source:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(120, IN, generator=g)
    return Source(x, torch.arange(120) % CLASSES, torch.arange(120) % 3)


def bound(name: str, net: nn.Module) -> Adapter:
    adapter = ADAPTERS.build(name, **PARAMS.get(name, {}))
    return adapter.bind(net, source_data() if adapter.needs_source else None)


def call(adapter: Adapter, x: torch.Tensor) -> torch.Tensor:
    if adapter.needs_support:
        g = torch.Generator().manual_seed(2)
        support_x = torch.randn(2 * CLASSES, IN, generator=g)
        support_y = torch.arange(2 * CLASSES) % CLASSES
        return adapter(x, support_x=support_x, support_y=support_y)
    return adapter(x)


def batches(n: int = 3, size: int = 16) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return [torch.randn(size, IN, generator=g) for _ in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_declares_mode_changes_and_papers(name):
    entry = ADAPTERS.get(name)
    cls = entry.cls
    assert cls.mode in ("online", "transductive")
    assert cls.changes and set(cls.changes) <= set(CHANGES)
    assert entry.citations(), f"{name} cites no paper"
    assert cls.__doc__ and len(cls.__doc__) > 80


@pytest.mark.parametrize("name", NAMES)
def test_predicts_finite_scores_and_leaves_the_model_untouched(name):
    net = network()
    before = copy.deepcopy(net.state_dict())
    adapter = bound(name, net)
    for x in batches():
        scores = call(adapter, x)
        # one score per class: the source classes (category discovery adds new ones)
        assert scores.shape[0] == len(x) and scores.ndim == 2 and scores.shape[1] >= CLASSES
        assert torch.isfinite(scores).all()
    for key, value in net.state_dict().items():
        assert torch.equal(value, before[key]), f"{name} changed the caller's model ({key})"


@pytest.mark.parametrize("name", NAMES)
def test_reset_returns_to_the_bound_state(name):
    first, *rest = batches()
    fresh = call(bound(name, network()), first)
    adapter = bound(name, network())
    for x in rest:
        call(adapter, x)
    adapter.reset()
    assert torch.equal(call(adapter, first), fresh)


@pytest.mark.parametrize("name", NAMES)
def test_checkpointed_state_resumes_exactly(name):
    xs = batches(4)
    straight = bound(name, network())
    expected = [call(straight, x) for x in xs]

    broken = bound(name, network())
    for x in xs[:2]:
        call(broken, x)
    buffer = io.BytesIO()
    torch.save(broken.state_dict(), buffer)
    buffer.seek(0)
    resumed = bound(name, network())
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    for x, want in zip(xs[2:], expected[2:], strict=True):
        assert torch.equal(call(resumed, x), want)


@pytest.mark.parametrize("name", NAMES)
def test_unbound_adapter_says_how_to_bind(name):
    adapter = ADAPTERS.build(name)
    with pytest.raises(RuntimeError, match="bind"):
        call(adapter, batches(1)[0])
