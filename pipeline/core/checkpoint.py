"""The pretrain stage's checkpoints (`{modality}.pt`: {"config", "state_dict", "meta"}), read back.

`load_checkpoint(path)` -> the dict, loaded with `torch.load(weights_only=True)` (plain tensors only: a file
holding pickled code is refused and nothing of it runs); `backbone_from(ckpt)` -> the prernn Backbone it
describes; `load_backbone(path)` both. Errors name the file and what to do.
"""
from __future__ import annotations

import os

import torch


def load_checkpoint(path: str | os.PathLike) -> dict:
    """A contract-format checkpoint from disk; FileNotFoundError / ValueError with the reason."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no pretrained model; run the pretrain stage first") from None
    except Exception as err:  # noqa: BLE001 - pickled code or objects (weights_only refuses them), not a torch file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a plain-tensor checkpoint; torch.load(weights_only=True) refused it, so "
                         f"nothing in it ran ({reason}). Rerun the pretrain stage to rewrite it") from None


def backbone_from(ckpt: dict) -> torch.nn.Module:
    """{"config", "state_dict", ...} -> the Backbone with those weights."""
    import prernn

    model = prernn.build_from_config(ckpt["config"])
    model.load_state_dict(ckpt["state_dict"])
    return model


def load_backbone(path: str | os.PathLike) -> torch.nn.Module:
    """The pretrained Backbone saved at `path`."""
    return backbone_from(load_checkpoint(path))
