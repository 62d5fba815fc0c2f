"""Claim of "Genie: Show Me the Data for Quantization" (Jeon, Lee, Kim, CVPR 2023,
arXiv:2212.04780; catalog #12): zero-shot 4-bit post-training quantization calibrated on data
synthesized from the model's BatchNorm statistics recovers more of the float accuracy than
calibration on Gaussian noise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from heldout.claims.base import STEP_DECAY, Claim, Verdict, named, record, seed_vote
from heldout.config import Component, OptimizerConfig, RunConfig
from heldout.methods.genie import gaussian_calibration, genie_synthesize
from heldout.methods.quantization import learn_step_sizes, post_training_quantize
from heldout.registry import CLAIMS
from heldout.run.assembly import finished_trainer
from heldout.store.sqlite import Store

__all__ = ["GenieBeatsNoise", "genie_claim_config", "quantized_accuracy"]


@torch.no_grad()
def quantized_accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """Accuracy of ``model`` (eval mode) on ``(x, y)``."""
    return float((model.eval()(x).argmax(dim=-1) == y).double().mean())


def genie_claim_config(seed: int, steps: int) -> RunConfig:
    """The float model: cnn2d (16, 32 channels, BatchNorm2d) on the 8x8 digits, SGD lr 0.05,
    momentum 0.9, batch 64, lr / 10 at 50% and 75% of the steps."""
    return RunConfig(
        task=Component("digits", {}),
        model=Component("cnn2d", {"channels": (16, 32), "batch_norm": True}),
        optimizer=OptimizerConfig(name="sgd", lr=0.05, momentum=0.9),
        techniques=(STEP_DECAY,),
        measures=named("accuracy"),
        batch_size=64, steps=steps, eval_every=steps, checkpoint_every=steps, seed=seed,
    )


@CLAIMS.register(
    "genie-zero-shot-ptq",
    summary="W4A4 post-training quantization calibrated on Genie's BatchNorm-synthesized data "
    "recovers more float accuracy than calibration on Gaussian noise (digits, cnn2d).",
    papers=(12,),
)
@dataclass
class GenieBeatsNoise(Claim):
    """A cnn2d with BatchNorm trains on the digits (:func:`genie_claim_config`). Its eval model
    is then quantized post-training at **4-bit weights** (symmetric, per output channel) and
    **4-bit activations** (the input of every Conv/Linear layer, affine per tensor, range by
    MSE-optimal clipping), calibrated on ``num_samples`` inputs from each of:

    - ``genie``: :func:`~heldout.methods.genie.genie_synthesize` (Genie-D: generator and
      latents optimized together on the BNS loss, ``synthesis_steps`` per batch of 128);
    - ``noise``: N(0, 1) inputs (the baseline);
    - ``real``: the first training inputs (a reference only, not in the rule).

    ``recovered(c) = acc(PTQ calibrated on c) / acc(float)`` on the digits' test split.

    Rule (written before the first full run). A seed PASSES when
    ``recovered(genie) > recovered(noise) + 0.01`` (one point of the float accuracy). The
    verdict is :func:`seed_vote` over the seeds. The numbers also carry, as a reference with its
    own seed vote, the same comparison after :func:`~heldout.methods.quantization.
    learn_step_sizes` (``reconstruct_steps`` Adam steps on the same calibration set, the
    simplified stand-in for Genie-M); it does not enter the verdict.
    """

    statement = ("Zero-shot post-training quantization calibrated on data synthesized from the "
                 "model's BatchNorm statistics (Genie) recovers more of the float accuracy "
                 "than calibration on Gaussian noise.")
    steps: int = 400  # training steps of the float model (~24 epochs of 1078 images)
    ci_steps: int = 120  # at scale="ci": a smoke test of the protocol, not evidence
    num_samples: int = 256  # calibration inputs of each kind
    synthesis_steps: int = 500  # Genie-D steps per synthesized batch
    ci_synthesis_steps: int = 40
    reconstruct_steps: int = 100  # learn_step_sizes steps of the reference variant
    ci_reconstruct_steps: int = 10
    margin: float = 0.01  # genie must recover this much more than noise

    def run(self, seeds: Sequence[int], store: Store, *, scale: str = "full",
            progress: bool = False) -> Verdict:
        ci = scale == "ci"
        synthesis = self.ci_synthesis_steps if ci else self.synthesis_steps
        reconstruct = self.ci_reconstruct_steps if ci else self.reconstruct_steps
        numbers: dict[str, Any] = {"bits": {"weights": 4, "activations": 4}}
        passed: dict[str, list[bool]] = {"ptq": [], "reconstructed": []}
        run_ids = []
        for seed in seeds:
            cfg = genie_claim_config(seed, self.ci_steps if ci else self.steps)
            self.execute(cfg, store, progress)
            run_ids.append(cfg.identity)
            trainer, model = finished_trainer(cfg.identity, store)
            train, test = trainer.eval_data["train"], trainer.eval_data["test"]
            shape = tuple(train.x.shape[1:])
            generator = torch.Generator().manual_seed(seed)
            calibration = {
                "genie": genie_synthesize(model, shape, self.num_samples, 128, synthesis,
                                          generator=generator),
                "noise": gaussian_calibration(self.num_samples, shape, generator),
                "real": train.x[:self.num_samples],
            }
            float_accuracy = quantized_accuracy(model, test.x, test.y)
            result: dict[str, Any] = {"float_accuracy": float_accuracy}
            for variant in ("ptq", "reconstructed"):
                recovered = {}
                for name, data in calibration.items():
                    quantized = post_training_quantize(model, data, 4, 4, method="mse")
                    if variant == "reconstructed":
                        learn_step_sizes(quantized, model, data, reconstruct,
                                         generator=torch.Generator().manual_seed(seed))
                    recovered[name] = quantized_accuracy(quantized, test.x, test.y) / max(
                        float_accuracy, 1e-12)
                ok = recovered["genie"] > recovered["noise"] + self.margin
                passed[variant].append(ok)
                result[variant] = {"recovered": recovered, "pass": ok}
            numbers[f"seed{seed}"] = result
        numbers["reconstructed_verdict"] = seed_vote(passed["reconstructed"])

        def column(variant: str, name: str) -> str:
            return "/".join(f"{100 * numbers[f'seed{s}'][variant]['recovered'][name]:.1f}"
                            for s in seeds)

        floats = "/".join(f"{100 * numbers[f'seed{s}']['float_accuracy']:.1f}" for s in seeds)
        summary = (f"W4A4 PTQ (MSE ranges), % of float accuracy ({floats}) recovered per seed: "
                   f"genie {column('ptq', 'genie')}, noise {column('ptq', 'noise')}, real "
                   f"{column('ptq', 'real')}; {sum(passed['ptq'])}/{len(seeds)} seeds pass. "
                   f"With learned step sizes: genie {column('reconstructed', 'genie')}, noise "
                   f"{column('reconstructed', 'noise')}, real "
                   f"{column('reconstructed', 'real')} ({numbers['reconstructed_verdict']})")
        return record(store, self.verdict(seed_vote(passed["ptq"]), summary, numbers, seeds,
                                          run_ids, scale))
