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


def test_landmarks_move_with_their_shifted_frame():
    """Regression augments too: a bright dot drawn at each landmark is still under it after the shift (clips and
    frames), labels pass through unchanged, and jitter alone leaves the points where they were."""
    from pipeline.data.augment import from_params
    from pipeline.core.params import SearchParams
    from pipeline.training.tasks import get_task

    size, b, t = 16, 6, 3
    g = torch.Generator().manual_seed(0)
    pix = torch.randint(4, size - 4, (b, 2), generator=g)  # (B, 2) pixel (x, y) of one landmark per clip
    clips = torch.zeros(b, t, 1, size, size)
    for i, (px, py) in enumerate(pix.tolist()):
        clips[i, :, 0, py, px] = 1.0
    points = ((pix.float() / size)[:, None, None, :]).expand(b, t, 1, 2).clone()  # (B, T, K=1, 2) in [0, 1]
    aug = from_params(SearchParams(augment_shift=3, augment_jitter=0.0), seed=1, points=get_task("regression").points)
    moved, moved_points = aug(clips, points)
    assert not torch.equal(moved_points, points)  # some clip was shifted
    for i in range(b):
        px, py = (moved_points[i, 0, 0] * size).round().long().tolist()
        assert torch.equal(moved[i, :, 0, py, px], torch.ones(t)), i  # the dot is where its point now says
    frames, frame_points = clips[:, 0], points[:, 0]  # (N, C, H, W), (N, K, 2): pretraining's frames
    moved_f, moved_fp = aug(frames, frame_points)
    for i in range(b):
        px, py = (moved_fp[i, 0] * size).round().long().tolist()
        assert moved_f[i, 0, py, px] == 1.0
    labels = torch.arange(b)
    label_aug = from_params(SearchParams(augment_shift=3), points=get_task("classification").points)
    assert torch.equal(label_aug(clips, labels)[1], labels)
    _, still = ClipAugment(0, 0.3, points=True)(clips, points)
    assert torch.equal(still, points)
    assert from_params(SearchParams()) is None  # off unless asked for
