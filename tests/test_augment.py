"""Augmentation: every frame of a clip gets the same shift and jitter, nothing changes when it is off, and the
trunk cache makes `copies` augmented passes of the train split only."""
import torch

import prernn
from pipeline.data.augment import ClipAugment
from pipeline.search.trunk_cache import prepare_splits, trunk_features
from tests.search_fixtures import toy_tensors


def test_one_shift_and_jitter_per_clip():
    x = torch.randn(4, 3, 2, 8, 8, generator=torch.Generator().manual_seed(0))  # (B, T, C, H, W)
    y = ClipAugment(2, 0.0, torch.Generator().manual_seed(1))(x)
    for b in range(4):
        found = {(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
                 if torch.equal(y[b, :, :, 2:6, 2:6], x[b, :, :, 2 - dy:6 - dy, 2 - dx:6 - dx])}
        assert len(found) >= 1  # one shift explains every frame of the clip at once
    j = ClipAugment(0, 0.5, torch.Generator().manual_seed(2))(x)
    for b in range(4):  # one scale and one offset explain every frame of the clip: j = s x + o
        xb, jb = x[b].flatten(), j[b].flatten()
        scale = ((xb - xb.mean()) * (jb - jb.mean())).sum() / ((xb - xb.mean()) ** 2).sum()
        assert torch.allclose(jb, scale * xb + (jb.mean() - scale * xb.mean()), atol=1e-5)
    assert not torch.allclose(j, x)
    assert torch.equal(ClipAugment(0, 0.0)(x), x)
    frames = torch.randn(5, 3, 8, 8)  # (N, C, H, W) frames, as pretraining gives them
    assert ClipAugment(3, 0.3)(frames).shape == frames.shape


def test_the_trunk_cache_augments_only_the_train_split_in_copies():
    x, y = toy_tensors(n_per_class=2)  # (6, T, 3, 16, 16)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=8)
    plain = trunk_features(bb, (x, y), "fc6")
    aug = ClipAugment(2, 0.2, torch.Generator().manual_seed(0))
    three = trunk_features(bb, (x, y), "fc6", augment=aug, copies=3)
    assert three.x.shape == (3 * len(y), *plain.x.shape[1:]) and torch.equal(three.y, y.repeat(3))
    assert not torch.allclose(three.x[:len(y)], plain.x) and not torch.allclose(three.x[:len(y)], three.x[len(y):2 * len(y)])
    splits = prepare_splits(bb, {"train": (x, y), "val": (x, y)}, "fc6", train_augment=(aug, 2))
    assert len(splits["train"]) == 2 * len(y) and torch.allclose(splits["val"].x, plain.x)


def test_regression_is_never_augmented():
    """A shifted frame would no longer match its landmark coordinates: landmark tasks train on the frames as they are."""
    from pipeline.data.augment import from_params
    from pipeline.core.params import SearchParams
    from pipeline.training.tasks import get_task

    search = SearchParams(augment_shift=3, augment_jitter=0.3)
    assert isinstance(from_params(search, augments=get_task("classification").augments), ClipAugment)
    assert from_params(search, augments=get_task("regression").augments) is None
    assert from_params(SearchParams()) is None  # off unless asked for
