"""pipeline.training.metrics: NME, CED AUC and failure rate against hand-computed values."""
import math

import numpy as np
import pytest
import torch

from pipeline.training.metrics import (ced_auc, ced_curve, decode, failure_rate, landmark_loss, nme, normaliser,
                              regression_metrics)


def _square():
    # 4 points of a unit square: bbox diagonal sqrt(2)
    return np.array([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])


def test_nme_bbox_by_hand():
    gt = _square()
    pred = gt.copy()
    pred[0] += [0.3, 0.4]  # error 0.5 on one point, 0 on the others -> mean 0.125
    assert nme(pred, gt, "bbox") == pytest.approx(0.125 / math.sqrt(2))


def test_nme_inter_ocular_uses_eye_corners():
    gt = np.zeros((68, 2))
    gt[:, 0] = np.arange(68) * 0.01
    gt[36], gt[45] = [0.2, 0.5], [0.6, 0.5]  # inter-ocular distance 0.4
    pred = gt + [0.0, 0.02]  # every point off by 0.02
    assert nme(pred, gt, "inter_ocular") == pytest.approx(0.05)
    assert nme(pred, gt, "auto") == pytest.approx(0.05)  # 68 points: auto = inter-ocular
    assert normaliser(_square(), "auto") == pytest.approx(math.sqrt(2))  # otherwise the bbox diagonal


def test_nme_per_frame_shape_and_errors():
    gt = np.stack([_square()] * 3)  # (3, 4, 2)
    assert nme(gt, gt, "bbox").shape == (3,)
    with pytest.raises(ValueError, match="eyes"):
        normaliser(_square(), "inter_ocular", (36, 45))
    with pytest.raises(ValueError, match="shape"):
        nme(gt[:2], gt, "bbox")


def test_auc_and_failure_rate_by_hand():
    errors = np.array([0.0, 0.02, 0.04, 0.1])
    # integral over [0, 0.08] of CED: per frame max(0, 0.08 - e) = 0.08, 0.06, 0.04, 0 -> mean 0.045 / 0.08
    assert ced_auc(errors, 0.08) == pytest.approx(0.045 / 0.08)
    assert failure_rate(errors, 0.08) == pytest.approx(0.25)
    assert ced_auc(np.zeros(5), 0.08) == pytest.approx(1.0)
    assert ced_auc(np.full(5, 0.5), 0.08) == 0.0


def test_auc_matches_numeric_integral_of_the_curve():
    rng = np.random.default_rng(0)
    errors = rng.uniform(0, 0.12, 200)
    curve = ced_curve(errors, 0.08, steps=4001)
    e = np.array([c["error"] for c in curve])
    f = np.array([c["fraction"] for c in curve])
    numeric = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(e))) / 0.08
    assert ced_auc(errors, 0.08) == pytest.approx(numeric, abs=2e-3)


def test_regression_metrics_and_decode_loss():
    gt = torch.rand(2, 3, 5, 2)
    out = (gt - 0.5).reshape(2, 3, 10)  # decode(out) == gt exactly
    assert torch.allclose(decode(out), gt)
    m = regression_metrics(decode(out), gt, {"normalize": "bbox"})
    assert m["auc"] == pytest.approx(1.0) and m["nme"] == pytest.approx(0.0) and m["failure_rate"] == 0.0
    assert landmark_loss(out, gt, "mse").item() == pytest.approx(0.0, abs=1e-12)
    assert landmark_loss(out + 0.1, gt, "mse").item() == pytest.approx(0.01, rel=1e-4)
    with pytest.raises(ValueError, match="2K"):
        landmark_loss(out[..., :8], gt)
