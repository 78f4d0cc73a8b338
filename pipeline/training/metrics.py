"""Landmark regression metrics (patent [0029], [0067], Table 1): NME, the CED curve's AUC, failure rate.

In: predicted and true landmarks, float arrays/tensors (..., K, 2) in normalised image coordinates
([0, 1] of the resized frame, x then y); every leading index is one frame.
Out:
- `normaliser(gt, mode, eyes)` -> (...,) distances: "inter_ocular" = |gt[eyes[0]] - gt[eyes[1]]| (68-point
  faces: outer eye corners 36 and 45), "bbox" = the diagonal of the true points' bounding box, "auto" =
  inter_ocular for 68 points, else bbox.
- `nme(pred, gt, ...)` -> (...,) per frame: mean over the K points of the point-to-point error / normaliser.
- `ced_auc(errors, threshold)`: the area under the cumulative error distribution CED(e) = fraction of
  frames with NME <= e, for e in [0, threshold], divided by threshold (so in [0, 1]; 1 = every frame
  perfect). Exactly: mean over frames of max(0, threshold - e_i) / threshold.
- `failure_rate(errors, threshold)`: the fraction of frames with NME > threshold.
- `ced_curve(errors, threshold, steps)`: (e, CED(e)) rows for a plot / CSV.
- `regression_metrics(pred, gt, spec)` -> {"auc", "nme", "failure_rate"} with a `RegressionSpec` dict.
- `decode(out, k)`: a network output (..., 2K) -> landmarks (..., K, 2) = 0.5 + out (a zero output is the
  frame centre); `landmark_loss(out, target, loss)`: smooth L1 or MSE on the decoded coordinates.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DEFAULT_SPEC = {"normalize": "auto", "eyes": [36, 45], "threshold": 0.08, "loss": "smooth_l1"}
METRIC_KEYS = ("auc", "nme", "failure_rate")


def spec_of(spec: dict | None) -> dict:
    """A complete regression spec: `spec` over DEFAULT_SPEC."""
    return {**DEFAULT_SPEC, **(spec or {})}


def _np(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, np.float64)


def normaliser(gt, mode: str = "auto", eyes=(36, 45)) -> np.ndarray:
    """Per-frame normalising distance of true landmarks gt (..., K, 2) -> (...,)."""
    gt = _np(gt)
    k = gt.shape[-2]
    if mode == "auto":
        mode = "inter_ocular" if k == 68 else "bbox"
    if mode == "inter_ocular":
        a, b = int(eyes[0]), int(eyes[1])
        if max(a, b) >= k:
            raise ValueError(f"regression.eyes: {list(eyes)}: indices must be below the {k} landmarks; "
                             "use regression.normalize: bbox for shapes without eyes")
        d = np.linalg.norm(gt[..., a, :] - gt[..., b, :], axis=-1)
    elif mode == "bbox":
        span = gt.max(axis=-2) - gt.min(axis=-2)  # (..., 2)
        d = np.linalg.norm(span, axis=-1)
    else:
        raise ValueError(f"regression.normalize: {mode!r}: expected auto, inter_ocular or bbox")
    return np.maximum(d, 1e-8)


def nme(pred, gt, mode: str = "auto", eyes=(36, 45)) -> np.ndarray:
    """Normalised mean error per frame: mean_k |pred_k - gt_k| / normaliser(gt); (..., K, 2) -> (...,)."""
    p, g = _np(pred), _np(gt)
    if p.shape != g.shape:
        raise ValueError(f"prediction shape {p.shape} != ground-truth shape {g.shape}")
    return np.linalg.norm(p - g, axis=-1).mean(-1) / normaliser(g, mode, eyes)


def ced_auc(errors, threshold: float = 0.08) -> float:
    """AUC of the cumulative error distribution on [0, threshold], normalised to [0, 1]."""
    e = _np(errors).ravel()
    if e.size == 0:
        return float("nan")
    return float(np.clip(threshold - e, 0.0, None).mean() / threshold)


def failure_rate(errors, threshold: float = 0.08) -> float:
    """Fraction of frames whose NME exceeds the threshold."""
    e = _np(errors).ravel()
    return float((e > threshold).mean()) if e.size else float("nan")


def ced_curve(errors, threshold: float = 0.08, steps: int = 81) -> list[dict]:
    """[{"error": e, "fraction": CED(e)}] for `steps` thresholds evenly spaced over [0, threshold]."""
    e = np.sort(_np(errors).ravel())
    grid = np.linspace(0.0, threshold, steps)
    frac = np.searchsorted(e, grid, side="right") / max(len(e), 1)
    return [{"error": round(float(a), 6), "fraction": float(b)} for a, b in zip(grid, frac)]


def regression_metrics(pred, gt, spec: dict | None = None) -> dict:
    """{"auc", "nme" (mean over frames), "failure_rate"} of predictions vs truth (..., K, 2)."""
    s = spec_of(spec)
    errors = nme(pred, gt, s["normalize"], s["eyes"])
    return {"auc": ced_auc(errors, s["threshold"]), "nme": float(errors.mean()) if errors.size else float("nan"),
            "failure_rate": failure_rate(errors, s["threshold"])}


def decode(out: torch.Tensor) -> torch.Tensor:
    """Network output (..., 2K) -> landmarks (..., K, 2) in normalised coordinates (0.5 + out)."""
    return 0.5 + out.reshape(*out.shape[:-1], out.shape[-1] // 2, 2)


def landmark_loss(out: torch.Tensor, target: torch.Tensor, loss: str = "smooth_l1") -> torch.Tensor:
    """Mean loss between decoded outputs (B, [T,] 2K) and targets (B, [T,] K, 2)."""
    pred = decode(out)
    if pred.shape != target.shape:
        raise ValueError(f"model outputs {tuple(out.shape)} decode to {tuple(pred.shape)} landmarks, targets are "
                         f"{tuple(target.shape)}: the head must have 2K outputs (rerun pretrain)")
    if loss == "mse":
        return F.mse_loss(pred, target)
    if loss == "smooth_l1":
        return F.smooth_l1_loss(pred, target, beta=0.02)
    raise ValueError(f"regression.loss: {loss!r}: expected smooth_l1 or mse")
