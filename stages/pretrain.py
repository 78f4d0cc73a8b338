"""DVC stage `pretrain`: the trained CNN each stream starts from ([0025]: the CNN is trained first).

In: `--clips` (extract stage), params sections `pretrain` and `extract`. Per modality in
`pretrain.modalities`: train `pretrain.backbone` on the frames of the train split (snippets for a
3D backbone), or start from the user's `pretrain.weights` and fine-tune them (`pretrain.finetune`)
or keep them; evaluate frame accuracy on val. The weights of the best val epoch are kept
(`pipeline.training.pretrain.pretrain_modality`).
Out (under --out, one atomic folder): `{modality}.pt` ({"config", "state_dict", "meta"}: class_names,
normalization, extract params, modality, metrics) and `pretrain.json` (per-modality metrics).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from pipeline.core.atomic import atomic_path
from pipeline.checks import load_stage_params
from pipeline.data.clipstore import ClipFileError
from pipeline.training.pretrain import PretrainedWeightsError, pretrain_modality
from pipeline.training.tasks import task_from_params


def pretrain_or_exit(params, clips: Path, modality: str, task) -> tuple[dict, dict]:
    """`pretrain_modality`, its errors as one line and an exit: 2 for a damaged clip file, else 1."""
    try:
        return pretrain_modality(params.pretrain, params.extract, clips, modality, task)
    except ClipFileError as err:  # a clip file cut short or overwritten: one line naming it, exit 2
        print(f"pretrain: {err}", file=sys.stderr)
        sys.exit(2)
    except PretrainedWeightsError as err:
        sys.exit(f"pretrain: {err}")
    except (FileNotFoundError, ValueError) as err:
        sys.exit(f"pretrain: {modality}: {err}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--clips", default="data/clips", help="the extract stage's Arrow clip folder")
    ap.add_argument("--out", default="models/pretrained", help="folder for {modality}.pt and pretrain.json")
    args = ap.parse_args(argv)
    params = load_stage_params(args.params, "pretrain")
    p = params.pretrain
    task = task_from_params(params)
    if p.weights and not Path(p.weights).is_file():
        sys.exit(f"pretrain: pretrain.weights: {p.weights!r}: no such file")
    results = {}
    with atomic_path(args.out) as tmp:
        tmp.mkdir(parents=True)
        for modality in p.modalities:
            ckpt, metrics = pretrain_or_exit(params, Path(args.clips), modality, task)
            torch.save(ckpt, tmp / f"{modality}.pt")
            results[modality] = metrics
            score = ", ".join(f"val frame {k} {metrics[f'val_frame_{k}']:.3f}" for k in task.metric_keys)
            print(f"pretrain {modality}: {score} -> {args.out}/{modality}.pt")
        (tmp / "pretrain.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
