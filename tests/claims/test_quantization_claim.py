"""Claim #12 (genie-zero-shot-ptq) at ci scale: the protocol runs end to end and its verdict
follows its rule. The ci verdict itself is not asserted (120 training steps and 40 synthesis
steps are a smoke test, not evidence; the full-scale verdict is in the report)."""

import torch
from torch import nn

from heldout.claims.quantization import quantized_accuracy
from heldout.registry import CLAIMS


def test_ci_scale_verdict_structure(store):
    verdict = CLAIMS.build("genie-zero-shot-ptq").run([0], store, scale="ci")
    assert verdict.scale == "ci" and len(verdict.run_ids) == 1
    seed = verdict.numbers["seed0"]
    assert seed["float_accuracy"] > 0.5  # the float model learned the digits
    for variant in ("ptq", "reconstructed"):
        recovered = seed[variant]["recovered"]
        assert set(recovered) == {"genie", "noise", "real"}
        assert all(0 <= r <= 1 / seed["float_accuracy"] for r in recovered.values())
        assert seed[variant]["pass"] == (recovered["genie"] > recovered["noise"] + 0.01)
    assert verdict.verdict == ("holds" if seed["ptq"]["pass"] else "does not hold")
    assert verdict.numbers["bits"] == {"weights": 4, "activations": 4}
    assert store.claim_results("genie-zero-shot-ptq")[0]["verdict"] == verdict.verdict


def test_quantized_accuracy_counts():
    net = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        net.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 1.0], [0.0, 3.0]])
    assert quantized_accuracy(net, x, torch.tensor([0, 1, 1, 1])) == 0.75
