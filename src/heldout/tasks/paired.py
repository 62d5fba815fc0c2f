"""Paired views for contrastive learning (#69): two random noisy crops of each 8x8 digit."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from heldout.core.bounds import Annotated, Ge, Interval
from heldout.core.inputs import InputSpec
from heldout.core.sampling import stream_generator
from heldout.registry import TASKS
from heldout.tasks.base import Split, Splits, Task
from heldout.tasks.digits import digits_arrays
from heldout.tasks.splitting import resolve_seed, stratified_partition

__all__ = ["PairedViews", "random_crops"]


def random_crops(images: Tensor, max_shift: int, noise: float,
                 generator: torch.Generator) -> Tensor:
    """A noisy crop of each image (N, H, W): zero-pad by ``max_shift``, crop H×W at an offset
    drawn uniformly in [−max_shift, max_shift]² per image, add N(0, noise²) to every pixel.

    Example:
        >>> crops = random_crops(torch.ones(3, 4, 4), 0, 0.0, torch.Generator())
        >>> bool((crops == 1).all())
        True
    """
    if images.dim() != 3:
        raise ValueError(f"random_crops: images must be (N, H, W), got {tuple(images.shape)}")
    if max_shift < 0 or noise < 0:
        raise ValueError(f"random_crops: max_shift and noise must be >= 0, got {max_shift}, "
                         f"{noise}")
    n, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, :1] + torch.arange(h))[:, :, None].expand(n, h, w)
    cols = (offsets[:, 1:] + torch.arange(w))[:, None, :].expand(n, h, w)
    crops = padded[torch.arange(n)[:, None, None], rows, cols]
    return crops + noise * torch.randn(crops.shape, generator=generator)


@TASKS.register(
    "paired_views",
    summary="Two random noisy crops of each 8x8 digit, side by side (128 features), for "
    "contrastive training (labels for probing).",
    papers=(69,),
)
@dataclass(frozen=True)
class PairedViews(Task):
    """scikit-learn's 8x8 digits, each example given as two views: independent random crops
    (shift up to ``max_shift`` pixels, zero-filled) with Gaussian pixel noise ``noise``
    (pixels in [0, 1]). Inputs are ``(N, 128)``: view 0's 64 pixels, then view 1's. The
    class labels ride along for the linear probe and are not used by contrastive losses.
    Split as ``digits`` (stratified); the views are drawn once from the data seed.

    How models consume pairs: a supervised model reads the pair as one input (an MLP
    reads 128 features); the contrastive techniques (``cloob``, ``infonce``) wrap
    the model in :class:`heldout.methods.contrastive.TwoViewModel`, a shared per-view encoder.

    References:
        CLOOB: Modern Hopfield Networks with InfoLOOB Outperform CLIP (arXiv:2110.11316)
        (paired embeddings); the views are heldout's, in the spirit of SimCLR's crops.

    Example:
        >>> splits = PairedViews().splits(seed=0)
        >>> tuple(splits.train.x.shape[1:]), splits.num_classes
        ((128,), 10)
    """

    max_shift: Annotated[int, Ge(0)] = 1  # largest crop offset in pixels
    noise: Annotated[float, Ge(0)] = 0.1  # std of the Gaussian noise added to each view
    # fraction of each class held out as val
    val_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.15
    # fraction of each class held out as test
    test_fraction: Annotated[float, Interval(0, 1, closed="left")] = 0.25
    # if set, builds the views and the split instead of the run's seed
    data_seed: Annotated[int | None, Ge(0)] = None

    def __post_init__(self) -> None:
        if self.val_fraction + self.test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 to leave training "
                             f"data, got {self.val_fraction} + {self.test_fraction}")

    @property
    def input(self) -> InputSpec:
        return InputSpec("continuous", (128,))

    def splits(self, seed: int) -> Splits:
        seed = resolve_seed(seed, self.data_seed)
        features, labels = digits_arrays()
        images, y = torch.tensor(features).reshape(-1, 8, 8), torch.tensor(labels)
        views = stream_generator(seed, "views")
        x = torch.cat([random_crops(images, self.max_shift, self.noise, views).flatten(1)
                       for _ in range(2)], dim=1)
        test, val, train = stratified_partition(
            y, (self.test_fraction, self.val_fraction), stream_generator(seed, "split"))
        return Splits(train=Split(x[train], y[train]), val=Split(x[val], y[val]),
                      test=Split(x[test], y[test]), input=self.input, num_classes=10)
