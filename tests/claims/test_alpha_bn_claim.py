"""Claim #43 (alpha-bn-small-batch) at ci scale: the protocol runs end to end and its verdict
has the declared structure. The ci verdict itself is not asserted: 120 training steps and two
corruptions are a smoke test, not evidence (the full-scale verdict is in the report)."""

import torch

from heldout.adapt.normalization import AlphaBN
from heldout.claims.alpha_bn import ALPHA_GRID, stream_accuracy
from heldout.core.inputs import InputSpec
from heldout.registry import CLAIMS, MODELS


def test_ci_scale_verdict_structure(store):
    verdict = CLAIMS.build("alpha-bn-small-batch").run([0], store, scale="ci")
    assert verdict.verdict in ("holds", "does not hold", "inconclusive")
    assert verdict.scale == "ci" and len(verdict.run_ids) == 1
    seed = verdict.numbers["seed0"]
    assert seed["clean_test_accuracy"] > 0.5  # the source model learned the clean digits
    for variant in ("fixed", "selected"):
        result = seed[variant]
        assert set(result["mean_accuracy"]) == {"source@16", "bn_adapt@16", "bn_adapt@all",
                                                "alpha_bn@16", "alpha_bn@all", "core@16"}
        assert set(result["per_domain"]["source@16"]) == {"gaussian_noise5", "contrast5"}
        assert all(0 <= a <= 1 for a in result["mean_accuracy"].values())
        assert result["pass"] == (result["small_batch"] and result["large_batch"]
                                  and result["core_adds"])
    assert seed["fixed"]["alpha"] == {"16": 0.1, "all": 0.1}
    assert set(seed["selected"]["alpha"].values()) <= set(ALPHA_GRID)
    # the fixed variant decides the verdict: one seed, pass or fail
    assert verdict.verdict == ("holds" if seed["fixed"]["pass"] else "does not hold")
    assert store.claim_results("alpha-bn-small-batch")[0]["verdict"] == verdict.verdict


def test_stream_accuracy_resets_and_counts():
    torch.manual_seed(0)
    net = MODELS.build("cnn2d", channels=(4,)).build(InputSpec("continuous", (64,)), 3)
    net.eval()
    x = torch.rand(10, 64)
    with torch.no_grad():
        y = net(x).argmax(dim=-1)
    adapter = AlphaBN(net, alpha=0.0)  # the source model: its own predictions are all right
    assert stream_accuracy(adapter, x, y, batch_size=4) == 1.0
    assert stream_accuracy(adapter, x, (y + 1) % 3, batch_size=3) == 0.0
