"""ClipDataset / FrameDataset over extracted Arrow clips: shapes, dtypes, labels, normalisation, workers."""
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.dataset import ClipDataset, FrameDataset
from pipeline.data.extraction import extract_manifest
from pipeline.core.params import DataParams, ExtractParams, SyntheticParams
from pipeline.data.sources import ingest
from pipeline.training.tasks import Classification

CLASSES = ["swipe_left", "swipe_right", "push"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ds")
    data = DataParams(synthetic=SyntheticParams(classes=CLASSES, clips_per_class=5, frames=8, size=16))
    rows, names = ingest(data, tmp / "ingest")
    params = ExtractParams(frames=4, size=16, modalities=["rgb", "flow", "depth"], shard_mb=1)
    report = extract_manifest(rows, names, params, tmp / "clips", workers=1, progress=False)
    assert report["kept"] == 15
    return tmp / "clips", rows


@pytest.mark.parametrize("modality,channels", [("rgb", 3), ("flow", 3), ("depth", 1)])
def test_clip_items_shapes_dtypes_labels(clips, modality, channels):
    folder, rows = clips
    ds = ClipDataset(folder, "train", modality)
    train = [r for r in rows if r["split"] == "train"]
    assert len(ds) == len(train) and ds.labels.dtype == np.int64
    assert ds.labels.tolist() == [r["label"] for r in train]
    assert ds.class_names == CLASSES and ds.num_classes == 3
    x, y = ds[0]
    assert x.dtype == torch.float32 and x.shape == (4, channels, 16, 16) and y == train[0]["label"]
    assert set(ds.meta) == {"prernn.class_names", "prernn.extract", "prernn.normalization", "prernn.modalities"}
    assert ds.meta["prernn.extract"]["frames"] == 4


def test_normalisation_uses_stored_train_constants(clips):
    folder, _ = clips
    ds = ClipDataset(folder, "train", "rgb")
    raw = np.stack([ds._clip(i) for i in range(len(ds))]).astype(np.float64) / 255  # (N, T, H, W, 3)
    norm = ds.meta["prernn.normalization"]["rgb"]
    np.testing.assert_allclose(raw.reshape(-1, 3).mean(0), norm["mean"], atol=1e-5)
    np.testing.assert_allclose(raw.reshape(-1, 3).std(0), norm["std"], atol=1e-5)
    x = torch.stack([ds[i][0] for i in range(len(ds))])  # (N, T, C, H, W)
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 0.02


def test_zero_copy_views_of_the_mapped_file(clips):
    folder, _ = clips
    ds = ClipDataset(folder, "val", "flow")
    view = ds._clip(0)
    assert view.dtype == np.uint8 and not view.flags.owndata and not view.flags.writeable


def test_snippets_and_split_lists(clips):
    folder, rows = clips
    ds = ClipDataset(folder, ["train", "val"], "rgb", snippet=3)
    assert len(ds) == sum(r["split"] in ("train", "val") for r in rows)
    x, _ = ds[1]
    assert x.shape == (4, 3, 3, 16, 16)  # (T, C, L, H, W)
    plain = ClipDataset(folder, ["train", "val"], "rgb")[1][0]  # (T, C, H, W)
    torch.testing.assert_close(x[0, :, 0], plain[0])  # snippet 0 = first frame repeated
    torch.testing.assert_close(x[0, :, 2], plain[0])
    torch.testing.assert_close(x[3].permute(1, 0, 2, 3), plain[1:4])  # snippet 3 = frames 1..3


def test_frame_dataset(clips):
    folder, _ = clips
    clips_ds = ClipDataset(folder, "test", "depth")
    frames = FrameDataset(folder, "test", "depth")
    assert len(frames) == 4 * len(clips_ds)
    x, y = frames[5]
    assert x.shape == (1, 16, 16) and y == int(clips_ds.labels[1])
    torch.testing.assert_close(x, clips_ds[1][0][1])
    xs, _ = FrameDataset(folder, "test", "depth", snippet=2)[5]
    assert xs.shape == (1, 2, 16, 16)
    torch.testing.assert_close(xs[:, 1], x)


@pytest.mark.filterwarnings("ignore:This DataLoader will create")
def test_dataloader_with_workers_gives_the_same_batches(clips):
    folder, _ = clips
    ds = ClipDataset(folder, "train", "flow")
    direct = torch.stack([ds[i][0] for i in range(len(ds))])
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    got = torch.cat([x for x, _ in loader])
    torch.testing.assert_close(got, direct)


def test_missing_modality_is_named(clips):
    folder, _ = clips
    with pytest.raises(ValueError, match="modality 'thermal' not extracted"):
        ClipDataset(folder, "train", "thermal")


@pytest.mark.parametrize("kind,snippet,shape", [("clip", None, (4, 16, 16, 3)), ("clip", 3, (4, 3, 16, 16, 3)),
                                                ("frame", None, (16, 16, 3)), ("frame", 2, (2, 16, 16, 3))])
def test_raw_items_are_the_stored_bytes_and_normalize_on_device_gives_the_float_items(clips, kind, snippet, shape):
    folder, _ = clips
    make = ClipDataset if kind == "clip" else FrameDataset
    raw, ref = make(folder, "val", "rgb", snippet=snippet, raw=True), make(folder, "val", "rgb", snippet=snippet)
    assert raw.raw and not ref.raw and len(raw) == len(ref)
    x, y = raw[len(raw) - 1]
    assert x.dtype == torch.uint8 and tuple(x.shape) == shape and y == ref[len(ref) - 1][1]
    if kind == "clip" and snippet is None:
        np.testing.assert_array_equal(x.numpy(), ref._clip(len(ref) - 1))
    batch = torch.stack([raw[i][0] for i in range(len(raw))])  # (N, *shape) uint8
    want = torch.stack([ref[i][0] for i in range(len(ref))])  # (N, ..., C, [L,] H, W) float32
    got = raw.normalizer()(batch)
    assert got.dtype == torch.float32 and got.shape == want.shape and got.is_contiguous()
    assert torch.equal(got, want)  # a batch normalised at once equals its items normalised one by one


def test_trainer_on_raw_clips_matches_the_float_dataset(clips):
    import prernn
    from pipeline.search.trunk_cache import prepare_splits
    from pipeline.training.trainer import Trainer

    folder, _ = clips
    runs = []
    for raw in (False, True):
        torch.manual_seed(0)
        cnn = prernn.create_backbone("vgg_mini", 3, input_size=16)
        train, val = (ClipDataset(folder, s, "rgb", raw=raw) for s in ("train", "val"))
        feats = prepare_splits(cnn, {"val": val}, prernn.trunk_boundary(cnn), cache_trunk=True)["val"].x
        trainer = Trainer(prernn.convert(cnn, ["fc6"], "gru"), lr_inherited=1e-3, lr_new=1e-2, batch_size=4, seed=3,
                          task=Classification())
        rows = [trainer.fit_epoch(train, val) for _ in range(2)]
        runs.append(([(r["train_loss"], r["val_loss"], r["val_acc"]) for r in rows], feats))
    assert runs[0][0] == runs[1][0]
    assert torch.equal(runs[0][1], runs[1][1])


def test_uncached_splits_keep_uint8_clips_and_train_as_the_float_ones(clips):
    import prernn
    from pipeline.search.trunk_cache import prepare_splits
    from pipeline.training.trainer import Trainer

    folder, _ = clips
    runs = {}
    for raw in (False, True):
        torch.manual_seed(0)
        cnn = prernn.create_backbone("vgg_mini", 3, input_size=16)
        data = {s: ClipDataset(folder, s, "rgb", raw=raw) for s in ("train", "val")}
        splits = prepare_splits(cnn, data, prernn.trunk_boundary(cnn), cache_trunk=False)
        trainer = Trainer(prernn.convert(cnn, ["fc6"], "lstm"), lr_inherited=1e-3, lr_new=1e-2, batch_size=4, seed=1,
                          task=Classification())
        rows = [trainer.fit_epoch(splits["train"], splits["val"]) for _ in range(2)]
        runs[raw] = (splits, [(r["train_loss"], r["val_loss"]) for r in rows])
    f, u = runs[False][0]["val"], runs[True][0]["val"]
    assert f.x.dtype == torch.float32 and u.x.dtype == torch.uint8 and u.x.shape == (len(u), 4, 16, 16, 3)
    assert u.x.element_size() * 4 == f.x.element_size()  # a quarter of the memory
    assert torch.equal(u.inputs(), f.x) and torch.equal(f.inputs(), f.x)
    assert runs[False][1] == runs[True][1]
