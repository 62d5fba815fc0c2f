"""The paired_views task: two crops of the same digit per example."""

import pytest
import torch

from heldout.tasks.digits import Digits
from heldout.tasks.paired import PairedViews, random_crops


def test_views_are_shifted_noisy_copies_of_the_same_digit():
    clean = PairedViews(noise=0.0, max_shift=0).splits(0)
    digits = Digits().splits(0)
    # without shift and noise both views are the digit itself, split like `digits`
    assert torch.equal(clean.train.x[:, :64], clean.train.x[:, 64:])
    assert torch.equal(clean.test.x[:, :64], digits.test.x)
    noisy = PairedViews().splits(0)
    assert not torch.equal(noisy.train.x[:, :64], noisy.train.x[:, 64:])
    assert torch.equal(noisy.train.y, digits.train.y)


def test_random_crop_shifts_by_the_drawn_offset():
    image = torch.zeros(1, 3, 3)
    image[0, 1, 1] = 1.0
    crops = random_crops(image.expand(50, 3, 3), 1, 0.0, torch.Generator().manual_seed(0))
    rows, cols = torch.nonzero(crops, as_tuple=True)[1:]
    # the pixel moves by the offset (−1, 0 or +1 in each direction), never elsewhere
    assert crops.sum(dim=(1, 2)).eq(1).all() and rows.unique().tolist() == [0, 1, 2]
    assert cols.unique().tolist() == [0, 1, 2]


def test_bad_parameters_are_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        PairedViews(val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(ValueError, match="max_shift"):
        random_crops(torch.zeros(1, 2, 2), -1, 0.0, torch.Generator())
