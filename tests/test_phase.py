"""Pretraining's (class, phase) target: the pair indices, the head, the task's loss and the pretrain stage's use."""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

import prernn
from pipeline.core.checkpoint import load_checkpoint
from pipeline.data.dataset import FrameDataset, phase_bin
from pipeline.training.phase import PhaseClassification, PhaseHead
from tests.search_fixtures import make_clips


def test_phase_bins_split_the_clip_into_equal_parts():
    assert [phase_bin(t, 8, 4) for t in range(8)] == [0, 0, 1, 1, 2, 2, 3, 3]
    assert [phase_bin(t, 8, 8) for t in range(8)] == list(range(8))
    assert [phase_bin(t, 4, 8) for t in range(4)] == [0, 2, 4, 6]  # more bins than frames: some stay empty
    assert {phase_bin(t, 5, 1) for t in range(5)} == {0}


def test_frame_dataset_targets_are_class_phase_pairs(tmp_path):
    folder = make_clips(tmp_path / "clips", per_split={"train": 2}, frames=4)
    plain = FrameDataset(folder, "train", "rgb")
    paired = FrameDataset(folder, "train", "rgb", phase_bins=2)
    for i in range(len(plain)):
        label, t = plain[i][1], i % 4
        assert paired[i][1] == label * 2 + t // 2
        torch.testing.assert_close(paired[i][0], plain[i][0])


def test_head_adds_the_pair_logits_and_leaves_the_class_logits_the_backbones():
    torch.manual_seed(0)
    cnn = prernn.create_backbone("vgg_mini", 3, input_size=16).eval()
    head = PhaseHead(cnn, 4).eval()
    x = torch.randn(5, 3, 16, 16)
    out = head(x)  # (N, K + K * B)
    assert out.shape == (5, 3 + 12)
    torch.testing.assert_close(out[:, :3], cnn(x))
    with pytest.raises(ValueError, match="phase bins 0"):
        PhaseHead(cnn, 0)


def test_loss_is_class_plus_weighted_pair_cross_entropy_and_outputs_the_class():
    task = PhaseClassification(bins=2, weight=0.5, num_classes=3)
    out = torch.randn(6, 3 + 6)
    y = torch.tensor([0, 1, 2, 3, 4, 5])  # classes 0, 0, 1, 1, 2, 2
    loss, probs = task.loss(out, y, "mean")
    want = F.cross_entropy(out[:, :3], torch.tensor([0, 0, 1, 1, 2, 2])) + 0.5 * F.cross_entropy(out[:, 3:], y)
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(probs, out[:, :3].softmax(-1))
    perfect = torch.eye(3)[[0, 0, 1, 1, 2, 2]]  # right class, whatever the phase
    assert task.metrics(perfect, y) == {"acc": 1.0}
    assert task.train_metric_sum(perfect, y) == 6


def _pretrain(root, **pretrain):
    from stages import pretrain as stage

    folder = make_clips(root / "clips", per_split={"train": 3, "val": 2}, frames=4)
    params = {"extract": {"modalities": ["rgb"], "size": 16, "frames": 4},
              "pretrain": {"modalities": ["rgb"], "epochs": 2, "batch_size": 8, **pretrain}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    stage.main(["--params", str(root / "params.yaml"), "--clips", str(folder), "--out", str(root / "out")])
    return load_checkpoint(root / "out" / "rgb.pt"), json.loads((root / "out" / "pretrain.json").read_text())["rgb"]


def test_pretrain_stage_trains_the_pair_head_and_stores_the_backbone_alone(tmp_path):
    ckpt, metrics = _pretrain(tmp_path / "phase", phase_bins=4, phase_weight=1.0, seed=3)
    plain_ckpt, plain = _pretrain(tmp_path / "plain", phase_bins=0, seed=3)
    assert metrics["phase_bins"] == 4 and plain["phase_bins"] == 0
    assert not any(k.startswith("phase") or k.startswith("backbone.") for k in ckpt["state_dict"])
    assert set(ckpt["state_dict"]) == set(plain_ckpt["state_dict"])  # loads as the plain CNN
    assert ckpt["config"] == plain_ckpt["config"] and ckpt["config"]["kwargs"]["dropout"] == 0.2  # the task's
    # the same head and random numbers with the pair loss weighted 0: only that loss differs, so the features must
    unweighted_ckpt, _ = _pretrain(tmp_path / "unweighted", phase_bins=4, phase_weight=0.0, seed=3)
    state, unweighted = ckpt["state_dict"], unweighted_ckpt["state_dict"]
    changed = [k for k in state if not torch.equal(state[k], unweighted[k])]
    assert any(k.startswith("stages.fc") for k in changed)  # the pair loss trained the features
