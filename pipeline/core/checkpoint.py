"""Model files read back, weights only: the pretrain stage's `{modality}.pt` and the evaluate stage's final.pt.

`read_weights_only(path)` is the one loader: `torch.load(weights_only=True)` (plain tensors and containers only:
a file holding pickled code is refused and nothing of it runs), FileNotFoundError as it is, anything else refused
as `RefusedFile` with a one-line reason (`refusal_reason`). On it: `load_checkpoint(path)` -> the pretrain
checkpoint dict ({"config", "state_dict", "meta"}); `backbone_from(ckpt)` -> the prernn Backbone it describes;
`load_backbone(path)` both. Errors name the file and what to do. (Ray trial checkpoints have their own reader,
pipeline.search.trial_checkpoint, which must tell a file cut short from one holding code.)
"""
from __future__ import annotations

import os
import pickle
import re

import torch

import prernn


class RefusedFile(ValueError):
    """A file torch.load(weights_only=True) refused (pickled code, not a torch file, cut short); str: the reason."""


def refusal_reason(err: Exception) -> str:
    """torch.load's long message -> a short reason."""
    msg = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if found:
        return (f"it holds pickled code or objects ({found.group(1)}) that torch.load(weights_only=True) refuses; "
                "nothing of it was run")
    if "Weights only load failed" in msg or isinstance(err, pickle.UnpicklingError):
        return "not a PyTorch weights file"
    return (msg.strip().splitlines() or [type(err).__name__])[0][:160]


def read_weights_only(path: str | os.PathLike):
    """The content of a torch file, loaded on the CPU with weights_only=True; FileNotFoundError, or RefusedFile."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - pickled code or objects (weights_only refuses them), not a torch file
        raise RefusedFile(refusal_reason(err)) from None


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A contract-format checkpoint from disk; FileNotFoundError / ValueError with the reason."""
    try:
        return read_weights_only(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no pretrained model; run the pretrain stage first") from None
    except RefusedFile as err:
        raise ValueError(f"{path}: not a plain-tensor checkpoint; torch.load(weights_only=True) refused it ({err}). "
                         "Rerun the pretrain stage to rewrite it") from None


def backbone_from(ckpt: dict) -> torch.nn.Module:
    """{"config", "state_dict", ...} -> the Backbone with those weights."""
    model = prernn.build_from_config(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_backbone(path: str | os.PathLike) -> torch.nn.Module:
    """The pretrained Backbone saved at `path`."""
    return backbone_from(load_checkpoint(path))
