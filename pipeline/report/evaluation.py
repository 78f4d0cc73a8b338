"""The evaluate stage's work: train the selected configuration and the best baseline, test them, fuse streams.

In: `selection.json`'s `selected` / `baseline` choices (pipeline.report.selection), the pretrained backbone of each
stream (`models/pretrained/<modality>.pt`, contract save format) and the clips folder.
Out: trained SequenceModels, per-epoch history, test probabilities, and the metrics of
`test_metrics(probs, labels, class_names)` (accuracy, per-class accuracy, confusion matrix).

- The selected configuration is built with only its kept layers recurrent (`prernn.convert(backbone,
  layers, ...)`); when every converted layer was reverted ([0058]) it is the plain trained backbone
  applied frame by frame (`prernn.frame_model`, config kind "frames").
- Training: train + val clips for `evaluate.epochs`, with the selected trial's learning rates, batch size,
  weight decay, hh_init and seed (`trial config` in trials.json; the `search` params where absent), over
  the cached frozen trunk (pipeline.search.trunk_cache: each choice's own trunk boundary), as the search did. The test split is evaluated after every
  epoch for the history only; nothing is chosen on it.
- Late fusion ([0023]: one stream per modality): the mean over streams of each stream's clip probabilities
  (B, K) (`prernn.readout`: a recurrent model's last step, a frame model's mean over time).
"""
from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import torch
from torch import nn

import prernn
from pipeline.core.checkpoint import load_backbone

TRAIN_KEYS = ("batch_size", "lr_inherited", "lr_new", "weight_decay", "hh_init", "seed")
FUSION = "mean of the streams' clip probabilities (a recurrent model's last step, a frame model's time average)"


def model_for(choice: dict, backbone, train_cfg: dict):
    """The untrained SequenceModel of a selection choice (`selected` or `baseline` of selection.json)."""
    import prernn

    hh = train_cfg.get("hh_init", "orthogonal")
    if choice["kind"] == "traditional":
        hidden = (choice.get("config") or {}).get("hidden_size")
        return prernn.traditional(backbone, choice["cell"], num_layers=int(choice["num_layers"]),
                                  hidden_size=hidden, hh_init=hh)
    if not choice["layers"]:
        return prernn.frame_model(backbone)
    return prernn.convert(backbone, list(choice["layers"]), choice["cell"], sih=bool(choice["sih"]), hh_init=hh,
                          gru_reset=(choice.get("config") or {}).get("gru_reset", "before"))


def train_config(choice: dict, search_params) -> dict:
    """The training hyperparameters for `choice`: its trial config, else the `search` params section."""
    cfg = choice.get("config") or {}
    return {k: cfg.get(k, getattr(search_params, k)) for k in TRAIN_KEYS}


def train_and_test(model, train, test, *, epochs: int, cfg: dict, device, on_epoch=None,
                   regression: dict | None = None) -> tuple[list[dict], list]:
    """Train `model` on `train` (pipeline.search.trunk_cache.SplitTensors) for `epochs`, testing after each epoch.

    Returns (history rows {"epoch", "train_loss", "train_acc", "test_loss", "test_acc"}, per-epoch test probs (N, K)).
    Regression (landmark targets, `regression` params): rows {"epoch", "train_loss", "train_nme", "test_loss",
    "test_auc", "test_nme", "test_failure_rate"} and per-epoch predicted landmarks (N, T, K, 2).
    """
    from pipeline.training.trainer import Trainer, seed_everything

    seed_everything(int(cfg["seed"]))
    trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"], weight_decay=cfg["weight_decay"],
                      batch_size=cfg["batch_size"], seed=int(cfg["seed"]), start=train.start, device=device,
                      regression=regression)
    history, probs = [], []
    for _ in range(int(epochs)):
        row = trainer.train_epoch(train)
        res = trainer.evaluate(test)
        row = {"epoch": trainer.epoch, **row, "test_loss": res["loss"], **{f"test_{k}": v for k, v in res["metrics"].items()}}
        history.append(row)
        probs.append(res["probs"])
        if on_epoch:
            on_epoch(row)
    model.cpu().eval()
    return history, probs


def fuse(probs: list[torch.Tensor]) -> torch.Tensor:
    """Late fusion: [(N, K) per stream] -> (N, K), the mean of the streams' probabilities."""
    return torch.stack([p.float() for p in probs]).mean(0)


def test_metrics(probs: torch.Tensor, labels: torch.Tensor, class_names: list[str]) -> dict:
    """{"acc", "per_class_acc": {name: acc | None}, "confusion": K x K counts [actual][predicted], "n"}."""
    pred = probs.argmax(-1).numpy()
    y = labels.numpy()
    k = len(class_names)
    cm = np.zeros((k, k), dtype=int)
    np.add.at(cm, (y, pred), 1)
    per = {name: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, name in enumerate(class_names)}
    return {"acc": float((pred == y).mean()) if len(y) else 0.0, "per_class_acc": per,
            "confusion": cm.tolist(), "n": int(len(y))}


class FusedModel(nn.Module):
    """Every stream in one module (what MLflow's PyTorch flavour stores).

    forward(x (B, T, sum C_m, H, W) [3D: (B, T, sum C_m, L, H, W)], the streams' normalised inputs concatenated on
    the channel axis in `modalities` order) -> (B, K) fused class probabilities (FUSION).
    """

    def __init__(self, streams: dict[str, nn.Module], channels: dict[str, int], regression: bool = False):
        super().__init__()
        self.regression = bool(regression)  # task: regression: -> (B, T, K, 2) landmarks, the mean over streams
        self.modalities = list(streams)
        self.streams = nn.ModuleDict(streams)
        self.channels = [int(channels[m]) for m in self.modalities]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.channels, dim=2)
        if self.regression:
            from pipeline.training.metrics import decode

            return torch.stack([decode(self.streams[m](p)) for m, p in zip(self.modalities, parts)]).mean(0)
        probs = [prernn.clip_output(self.streams[m](p).softmax(-1), prernn.readout(self.streams[m]))
                 for m, p in zip(self.modalities, parts)]  # (B, K) each
        return torch.stack(probs).mean(0)


def final_checkpoint(models: dict[str, nn.Module], meta: dict) -> dict:
    """models/final.pt content: one stream -> {"config", "state_dict", "meta"} (the contract format);
    several -> {"streams": {modality: {"config", "state_dict"}}, "meta"}."""
    if len(models) == 1:
        (m, model), = models.items()
        return {"config": model.config, "state_dict": model.state_dict(), "meta": meta}
    return {"streams": {m: {"config": mod.config, "state_dict": mod.state_dict()} for m, mod in models.items()},
            "meta": meta}


def run_evaluation(clips_dir, pretrained_dir, choices: dict, *, modalities: list[str], epochs: int,
                   search_params, device="cpu", cache_trunk: bool = True, log=print,
                   regression: dict | None = None) -> dict:
    """Train and test every choice ({"selected": ..., "baseline": ... | None}) on every stream, then fuse.

    Returns {"class_names", "labels" (N,), "meta" (clip metadata: normalization, extract, ...),
             "streams": {modality: {role: {"model", "history", "probs": [(N, K) per epoch], "cfg"}}},
             "examples": {modality: up to two raw test clips (B, T, C, H, W), for the MLflow signature},
             "fused": {role: [(N, K) per epoch]} (the first seed's),
             "seeds": {role: [{"seed", "streams": {modality: last-epoch test outputs}, "fused"}]} (every seed of the
             choice's `seeds`: pipeline.report.comparison), "frames": {modality: the trained CNN alone on test, per frame}}.
    """
    import prernn
    from pipeline.data.dataset import ClipDataset
    from pipeline.data.augment import from_params
    from pipeline.search.trunk_cache import trial_boundary, trial_splits, trunk_caches
    from pipeline.training.trainer import evaluate_model, seed_everything

    out = {"streams": {}, "fused": {}, "examples": {}}
    labels = None
    for m in modalities:
        bb = load_backbone(Path(pretrained_dir) / f"{m}.pt")
        snippet = int(bb.config.get("kwargs", {}).get("snippet", 4)) if bb.is_3d else None
        train_ds = ClipDataset(clips_dir, ["train", "val"], m, snippet=snippet, raw=True)  # uint8, normalised on device
        test_ds = ClipDataset(clips_dir, "test", m, snippet=snippet, raw=True)
        if len(test_ds) == 0 or len(train_ds) == 0:
            raise ValueError(f"{clips_dir}: modality {m}: {len(train_ds)} train+val clips, {len(test_ds)} test clips; "
                             "need both (data.test_fraction > 0)")
        if int(bb.config["num_classes"]) != train_ds.num_classes:
            raise ValueError(f"{Path(pretrained_dir) / f'{m}.pt'}: {bb.config['num_classes']} classes, but {clips_dir} "
                             f"has {train_ds.num_classes}; rerun the pretrain stage")
        def train_augment():  # as the search augmented its train clips, alike for every trunk cache
            augment = from_params(search_params, search_params.seed, "regression" if regression else "classification")
            return (augment, search_params.augment_copies) if augment else None

        default = prernn.trunk_boundary(bb)  # one cache per boundary a choice needs (pipeline.search.trunk_cache)
        names = list(bb.stages)
        boundaries = sorted({default} | {trial_boundary(bb, c) for c in choices.values() if c is not None},
                            key=names.index)
        caches = trunk_caches(bb, {"train": train_ds, "test": test_ds}, boundaries, cache_trunk=cache_trunk,
                              train_augment=train_augment, device=device)
        splits = caches.get(default) or caches[None]
        if labels is not None and not torch.equal(labels, splits["test"].y):
            raise ValueError(f"{clips_dir}: the test clips of {m} are not in the order of {modalities[0]}; cannot fuse")
        labels = splits["test"].y
        out.setdefault("class_names", train_ds.class_names)
        out.setdefault("meta", train_ds.meta)
        out.setdefault("task", train_ds.task)
        out["streams"][m] = {}
        raw = torch.stack([test_ds[i][0] for i in range(min(2, len(test_ds)))])  # (2, T, H, W, C) uint8
        out["examples"][m] = test_ds.normalizer()(raw)  # (2, T, C, H, W) float32
        out.setdefault("frames", {})[m] = evaluate_model(prernn.frame_model(bb), splits["test"], regression=regression,
                                                         device=device)  # the CNN alone, per frame
        for role, choice in choices.items():
            if choice is None:
                continue
            cfg = train_config(choice, search_params)
            seeds = [int(x) for x in (choice.get("seeds") or [cfg["seed"]]) if x is not None] or [int(cfg["seed"])]
            log(f"evaluate: {m} {role} {choice['name']} (recurrent layers: {choice['layers'] or 'none'}), {epochs} epochs, "
                f"seeds {seeds}")
            for seed in seeds:  # the selected configuration and the baseline train over the same seeds
                cfg_seed = {**cfg, "seed": seed}
                seed_everything(seed)  # the new weights' init must not depend on what ran before in this process
                model = model_for(choice, bb, cfg_seed)
                data = trial_splits(caches, bb, choice)
                history, probs = train_and_test(model, data["train"], data["test"], epochs=epochs, cfg=cfg_seed,
                                                device=device, regression=regression)
                if seed == seeds[0]:  # the first seed's model is the one saved and registered
                    out["streams"][m][role] = {"model": model, "history": history, "probs": probs, "cfg": cfg_seed}
                runs = out.setdefault("seeds", {}).setdefault(role, [])
                run = next((r for r in runs if r["seed"] == seed), None)
                if run is None:
                    run = {"seed": seed, "streams": {}}
                    runs.append(run)
                run["streams"][m] = probs[-1]  # last-epoch test outputs (N, K) [(N, T, K, 2)]
    for role in [r for r, c in choices.items() if c is not None]:
        per_stream = [out["streams"][m][role]["probs"] for m in modalities]
        out["fused"][role] = [fuse([s[e] for s in per_stream]) for e in range(int(epochs))]
        for run in out["seeds"][role]:
            run["fused"] = fuse([run["streams"][m] for m in modalities])
    out["labels"] = labels
    return out


CHOICE_KEYS = ("name", "kind", "cell", "sih", "layers", "reverted_layers", "num_layers", "fallback")


def report_parts(result: dict, choices: dict, modalities: list[str]) -> dict:
    """The task-independent part of evaluation.json: the choices trained and each stream's training config."""
    roles = list(result["fused"])
    return {"choices": {r: {k: choices[r].get(k) for k in CHOICE_KEYS} for r in roles},
            "train_config": {m: {r: result["streams"][m][r]["cfg"] for r in roles} for m in modalities}}


def history_rows(result: dict, modalities: list[str], fused_columns, stream_keys: tuple[str, ...]) -> list[dict]:
    """history.csv rows, one per epoch: `fused_columns(fused output at that epoch)` -> {column: value} per role
    (prefixed `<role>_` but for the selected one), and `stream_keys` of every stream's epoch history
    (prefixed `<modality>_`, or `<modality>_<role>_`)."""
    roles = list(result["fused"])
    rows = []
    for e in range(len(result["fused"]["selected"])):
        row = {"epoch": e + 1}
        for r in roles:
            prefix = "" if r == "selected" else f"{r}_"
            row.update({f"{prefix}{k}": v for k, v in fused_columns(result["fused"][r][e]).items()})
        for m in modalities:
            for r in roles:
                h = result["streams"][m][r]["history"][e]
                prefix = f"{m}_" if r == "selected" else f"{m}_{r}_"
                row.update({f"{prefix}{k}": h[k] for k in stream_keys})
        rows.append(row)
    return rows


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """probs (N, K), labels (N,) -> the fraction of clips whose most probable class is the label."""
    return float((probs.argmax(-1) == labels).float().mean()) if len(labels) else 0.0


def curve_rows(history: list[dict], score: str) -> list[dict]:
    """history.csv rows -> curves.csv rows for `dvc plots`: one per (epoch, series) with the test `score`
    (test_acc / test_auc) of every column named `[<modality>_][baseline_]<score>`; series "fused, selected",
    "rgb, baseline", ..."""
    rows = []
    for row in history:
        for key, value in row.items():
            if not key.endswith(score):
                continue
            parts = key[: -len(score)].rstrip("_").split("_") if key != score else []
            stream = parts[0] if parts and parts[0] != "baseline" else "fused"
            role = "baseline" if "baseline" in parts else "selected"
            rows.append({"epoch": row["epoch"], "series": f"{stream}, {role}", score: value})
    return rows


def summary(result: dict, choices: dict, modalities: list[str]) -> tuple[dict, dict, list[dict], list[dict]]:
    """(metrics.json, evaluation.json, history.csv rows, confusion.csv rows) from `run_evaluation`'s result."""
    names, y = result["class_names"], result["labels"]
    roles = list(result["fused"])
    final = {r: test_metrics(result["fused"][r][-1], y, names) for r in roles}
    streams = {m: {r: test_metrics(result["streams"][m][r]["probs"][-1], y, names) for r in roles} for m in modalities}
    sel = final["selected"]
    base = final.get("baseline")
    metrics = {"test_acc": sel["acc"], "baseline_test_acc": base["acc"] if base else None,
               "gain": sel["acc"] - base["acc"] if base else None, "n_test": sel["n"],
               "per_class_acc": sel["per_class_acc"],
               "streams": {m: {"test_acc": s["selected"]["acc"],
                               "baseline_test_acc": s["baseline"]["acc"] if "baseline" in s else None}
                           for m, s in streams.items()},
               "selected": choices["selected"]["name"], "baseline": (choices.get("baseline") or {}).get("name")}
    from pipeline.report.comparison import compare

    metrics["comparison"] = compare(result, modalities, {"test_acc": accuracy})
    metrics["seeds"] = [run["seed"] for run in result["seeds"]["selected"]]
    metrics["frame_reference"] = {m: {"test_acc": result["frames"][m]["acc"]} for m in modalities}
    fused = metrics["comparison"]["fused"]["test_acc"]
    metrics.update({"test_acc_mean": fused["selected"]["mean"],
                    "baseline_test_acc_mean": fused["baseline"]["mean"] if "baseline" in fused else None,
                    "gain_mean": fused["difference"]["mean"] if "difference" in fused else None})
    parts = report_parts(result, choices, modalities)
    report = {"fusion": FUSION if len(modalities) > 1 else None, "modalities": modalities, "class_names": names,
              "choices": parts["choices"], "fused": final, "streams": streams, "train_config": parts["train_config"]}
    history = history_rows(result, modalities, lambda out: {"test_acc": test_metrics(out, y, names)["acc"]},
                           ("test_acc", "train_loss", "train_acc"))
    pred = result["fused"]["selected"][-1].argmax(-1).tolist()
    confusion = [{"actual": names[a], "predicted": names[p]} for a, p in zip(y.tolist(), pred)]
    return metrics, report, history, confusion
