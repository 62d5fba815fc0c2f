"""Spectral artifacts of upsampled feature maps (#56).

Upsampling an ``h x w`` map by an integer factor ``s`` to ``H x W = sh x sw`` can only add
content at frequencies the low-resolution grid could not hold. Two shares of the 2-D power
spectrum ``P(u, v) = Σ_{n,c} |FFT2(f_{n,c})(u, v)|²`` of the upsampled maps (DC included, so
a constant map counts as artifact-free) measure it:

* ``high_frequency_share``: the power at frequencies beyond the low-resolution Nyquist
  frequency, ``max(|u|, |v|) > 1/(2s)`` cycles per pixel, over the total power;
* ``alias_share``: the power at the aliasing frequencies of the upsampling grid,
  ``(k/s, l/s)`` for ``(k, l) ≠ (0, 0)`` (the copies of DC that zero insertion or a
  checkerboard-prone transposed convolution creates: for ``s = 2`` the Nyquist bins
  ``(½, 0)``, ``(0, ½)``, ``(½, ½)``), over the total power.

Both are ratios, so invariant to a global scale of the maps. Ideal (sinc) upsampling gives
``high_frequency_share = 0``; bilinear upsampling of a constant map gives 0 for both; a
stride-2 transposed convolution with a 2x2 kernel ``[[a, b], [c, d]]`` of a constant map
tiles the kernel, whose four frequencies carry power in the ratio
``(a+b+c+d)² : (a+b−c−d)² : (a−b+c−d)² : (a−b−c+d)²`` (DC, row, column, checkerboard).
This is a documented reading: the paper inspects the power spectra of decoder outputs and
feature maps rather than a single number.

References:
    Agnihotri, Grabinski, Keuper. Improving Feature Stability during Upsampling -- Spectral
    Artifacts and the Importance of Spatial Context. arXiv:2311.17524.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from heldout.core.bounds import Annotated, Ge
from heldout.core.measure import EvalContext, Measure, check_splits, eval_mode
from heldout.registry import MEASURES

__all__ = ["SpectralArtifacts", "find_upsamplers", "spectral_artifacts", "upsampled_maps"]


def spectral_artifacts(feature_maps: Tensor, factor: int) -> dict[str, float]:
    """``high_frequency_share`` and ``alias_share`` (module docstring) of upsampled feature
    maps ``(N, C, H, W)`` (or ``(H, W)``, ``(C, H, W)``) produced by an upsampling by the
    integer ``factor``; ``H`` and ``W`` must be multiples of ``factor``. All-zero maps have
    no artifact (0 for both).

    Example:
        >>> ones = torch.ones(1, 1, 4, 4)
        >>> checkerboard = nn.functional.conv_transpose2d(ones, torch.eye(2)[None, None],
        ...                                               stride=2)  # tiles [[1, 0], [0, 1]]
        >>> spectral_artifacts(checkerboard, 2)
        {'high_frequency_share': 0.5, 'alias_share': 0.5}
    """
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 2:
        raise ValueError(f"factor must be an integer >= 2, got {factor!r}")
    if feature_maps.dim() < 2:
        raise ValueError(f"feature_maps must be (..., H, W), got shape "
                         f"{tuple(feature_maps.shape)}")
    height, width = feature_maps.shape[-2:]
    if height % factor or width % factor:
        raise ValueError(f"feature maps of size {height}x{width} are not the upsampling by "
                         f"factor {factor} of a whole grid")
    maps = feature_maps.detach().double().reshape(-1, height, width)
    power = torch.fft.fft2(maps).abs().square().sum(dim=0)
    total = float(power.sum())
    if total == 0:
        return {"high_frequency_share": 0.0, "alias_share": 0.0}
    fu = torch.fft.fftfreq(height, dtype=torch.float64, device=power.device).abs()[:, None]
    fv = torch.fft.fftfreq(width, dtype=torch.float64, device=power.device).abs()[None, :]
    beyond = (fu > 1 / (2 * factor) + 1e-12) | (fv > 1 / (2 * factor) + 1e-12)
    alias = power[::height // factor, ::width // factor].sum() - power[0, 0]
    return {"high_frequency_share": float(power[beyond].sum()) / total,
            "alias_share": float(alias) / total}


def find_upsamplers(model: nn.Module, example: Tensor) -> dict[str, int]:
    """The submodules of ``model`` that upsample, ``{name: factor}``: those whose 4-D output
    is an integer factor ``s >= 2`` larger than their 4-D input in both spatial dimensions
    (the same ``s``) when ``example`` runs through the model, outermost first (an upsampler
    built of parts, such as a large-context transposed convolution, counts once), except
    ``nn.Sequential`` containers (a decoder stage holding an upsampler and convolutions). Name
    the layers yourself for a decoder written as a custom module."""
    found: dict[str, int] = {}
    handles = []

    def hook_for(name: str):
        def hook(module: nn.Module, args: tuple, output: object) -> None:
            if not (args and isinstance(args[0], Tensor) and isinstance(output, Tensor)):
                return
            if args[0].dim() != 4 or output.dim() != 4:
                return
            (h, w), (big_h, big_w) = args[0].shape[-2:], output.shape[-2:]
            if h and w and big_h % h == 0 and big_w % w == 0 and big_h // h == big_w // w > 1:
                found[name] = big_h // h
        return hook

    for name, module in model.named_modules():
        if name and not isinstance(module, nn.Sequential | nn.ModuleList):
            handles.append(module.register_forward_hook(hook_for(name)))
    try:
        with eval_mode(model), torch.no_grad():
            model(example)
    finally:
        for handle in handles:
            handle.remove()
    return {n: s for n, s in found.items()
            if not any(n.startswith(outer + ".") for outer in found if outer != n)}


def upsampled_maps(model: nn.Module, x: Tensor, layer: str) -> Tensor:
    """The output of the submodule ``layer`` (a name of ``model.named_modules()``) when
    ``model`` runs on ``x`` in eval mode, without gradients."""
    module = model.get_submodule(layer)
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, a, out: captured.append(out.detach()))
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return torch.cat(captured)


@MEASURES.register(
    "spectral_artifacts",
    summary="Share of the power of upsampled feature maps beyond the low-resolution Nyquist "
    "frequency and at the upsampling grid's aliasing frequencies.",
    papers=(56,),
)
@dataclass
class SpectralArtifacts(Measure):
    """:func:`spectral_artifacts` of the outputs of the model's upsampling layers
    (:func:`find_upsamplers`, or the named ``layers``) on at most ``max_points`` examples of
    each listed split: ``spectral_artifacts/<layer>/high_frequency_share`` and
    ``.../alias_share`` per layer, and their means over the layers as
    ``spectral_artifacts/high_frequency_share`` and ``spectral_artifacts/alias_share``.
    A model without upsampling layers (heldout's MLPs and 1-D CNNs) gives nothing.
    """

    layers: tuple[str, ...] = ()  # module names of upsampling layers; (): every one found
    max_points: Annotated[int, Ge(1)] = 256  # examples per split (the first ones)
    splits: tuple[str, ...] = ("test",)  # where to compute it

    def __post_init__(self) -> None:
        self.layers = tuple(self.layers)
        self.splits = tuple(self.splits)
        check_splits(self.splits)

    def compute(self, ctx: EvalContext) -> dict[str, float]:
        if ctx.split not in self.splits:
            return {}
        x, _ = ctx.tensors()
        x = x[: self.max_points]
        upsamplers = find_upsamplers(ctx.model, x[:1])
        if self.layers:
            missing = [name for name in self.layers if name not in upsamplers]
            if missing:
                raise ValueError(f"spectral_artifacts: layers {missing} are not upsampling "
                                 f"layers of the model; found: {sorted(upsamplers) or 'none'}")
            upsamplers = {name: upsamplers[name] for name in self.layers}
        out: dict[str, float] = {}
        for name, factor in upsamplers.items():
            shares = spectral_artifacts(upsampled_maps(ctx.model, x, name), factor)
            out.update({f"spectral_artifacts/{name}/{k}": v for k, v in shares.items()})
        for key in ("high_frequency_share", "alias_share") if upsamplers else ():
            values = [out[f"spectral_artifacts/{name}/{key}"] for name in upsamplers]
            out[f"spectral_artifacts/{key}"] = sum(values) / len(values)
        return out
