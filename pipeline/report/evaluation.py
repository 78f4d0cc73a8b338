"""The evaluate stage's work: train the selected configuration and the best baseline, test them, fuse streams.

In: `selection.json`'s `selected` / `baseline` choices (pipeline.report.selection), the pretrained backbone of each
stream (`models/pretrained/<modality>.pt`, contract save format) and the clips folder.
Out: trained SequenceModels, per-epoch history, the task's test outputs (class probabilities or landmarks), and
`summary(...)`: metrics.json, evaluation.json, history.csv and the task's plot rows, in the task's terms
(pipeline.training.tasks: its metrics, report keys and plot).

- The selected configuration is built with only its kept layers recurrent (`prernn.convert(backbone,
  layers, ...)`); when every converted layer was reverted ([0058]) it is the plain trained backbone
  applied frame by frame (`prernn.frame_model`, config kind "frames").
- Training: train + val clips for `evaluate.epochs`, with the selected trial's learning rates, batch size,
  weight decay, hh_init and seed (`trial config` in trials.json; the `search` params where absent), over
  the cached frozen trunk (pipeline.search.trunk_cache: each choice's own trunk boundary), as the search did. The test split is evaluated after every
  epoch for the history only; nothing is chosen on it.
- Late fusion ([0023]: one stream per modality): the task's (`Task.fuse`): the mean over streams of each
  stream's clip probabilities (B, K) (`prernn.readout`: a recurrent model's last step, a frame model's mean over
  time), or of its landmarks (B, T, K, 2).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

import prernn
from pipeline.core.checkpoint import load_backbone
from pipeline.core.own_model import model_config
from pipeline.data.augment import from_params
from pipeline.data.dataset import ClipDataset, snippet_length
from pipeline.report.comparison import compare
from pipeline.search.trunk_cache import default_boundary, space_boundaries, trial_splits, trunk_caches
from pipeline.training.tasks import Task
from pipeline.training.trainer import Trainer, evaluate_model, seed_everything

TRAIN_KEYS = ("batch_size", "lr_inherited", "lr_new", "weight_decay", "hh_init", "seed")


def model_for(choice: dict, backbone, train_cfg: dict):
    """The untrained SequenceModel of a selection choice (`selected` or `baseline` of selection.json): its trial
    config with the kept layers (`prernn.build_from_config` on the trained backbone, as the search built it); a
    conversion whose every layer was reverted ([0058]) is the trained backbone per frame (kind "frames")."""
    config = {**(choice.get("config") or {}), **{k: choice[k] for k in ("kind", "cell", "sih", "num_layers")},
              "layers": list(choice["layers"]), "hh_init": train_cfg.get("hh_init", "orthogonal")}
    if config["kind"] == "prernn" and not config["layers"]:
        config["kind"] = "frames"
    return prernn.build_from_config(config, backbone)


def train_config(choice: dict, search_params) -> dict:
    """The training hyperparameters for `choice`: its trial config, else the `search` params section."""
    cfg = choice.get("config") or {}
    return {k: cfg.get(k, getattr(search_params, k)) for k in TRAIN_KEYS}


def train_and_test(model, train, test, *, epochs: int, cfg: dict, device, task: Task,
                   on_epoch=None) -> tuple[list[dict], list]:
    """Train `model` on `train` (pipeline.search.trunk_cache.SplitTensors) for `epochs`, testing after each epoch.

    Returns (history rows {"epoch", "train_loss", "train_<task.train_metric>", "clips_per_sec", "test_loss",
    "test_<key>" per task metric}, the task's test outputs per epoch: (N, K) probabilities or (N, T, K, 2) landmarks).
    """
    seed_everything(int(cfg["seed"]))
    trainer = Trainer(model, lr_inherited=cfg["lr_inherited"], lr_new=cfg["lr_new"], weight_decay=cfg["weight_decay"],
                      batch_size=cfg["batch_size"], seed=int(cfg["seed"]), start=train.start, device=device,
                      task=task)
    history, outputs = [], []
    for _ in range(int(epochs)):
        row = trainer.train_epoch(train)
        res = trainer.evaluate(test)
        row = {"epoch": trainer.epoch, **row, "test_loss": res.loss, **{f"test_{k}": v for k, v in res.metrics.items()}}
        history.append(row)
        outputs.append(res.outputs)
        if on_epoch:
            on_epoch(row)
    model.cpu().eval()
    return history, outputs


class FusedModel(nn.Module):
    """Every stream in one module (what MLflow's PyTorch flavour stores).

    forward(x (B, T, sum C_m, H, W) [3D: (B, T, sum C_m, L, H, W)], the streams' normalised inputs concatenated on
    the channel axis in `modalities` order) -> the task's fused outputs (`Task.fuse` of each stream's
    `Task.clip_outputs`): (B, K) class probabilities, or (B, T, K, 2) landmarks.
    """

    def __init__(self, streams: dict[str, nn.Module], channels: dict[str, int], task: Task):
        super().__init__()
        self.task = task
        self.modalities = list(streams)
        self.streams = nn.ModuleDict(streams)
        self.channels = [int(channels[m]) for m in self.modalities]
        self.readouts = [task.readout(self.streams[m]) for m in self.modalities]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.channels, dim=2)
        return self.task.fuse([self.task.clip_outputs(self.streams[m](p), how)
                               for m, p, how in zip(self.modalities, parts, self.readouts)])


def final_checkpoint(models: dict[str, nn.Module], meta: dict) -> dict:
    """models/final.pt content: one stream -> {"config", "state_dict", "meta"} (the contract format);
    several -> {"streams": {modality: {"config", "state_dict"}}, "meta"}."""
    if len(models) == 1:
        (m, model), = models.items()
        return {"config": model.config, "state_dict": model.state_dict(), "meta": meta}
    return {"streams": {m: {"config": mod.config, "state_dict": mod.state_dict()} for m, mod in models.items()},
            "meta": meta}


def run_evaluation(clips_dir, pretrained_dir, choices: dict, *, modalities: list[str], epochs: int,
                   search_params, task: Task, device="cpu", cache_trunk: bool = True, log=print) -> dict:
    """Train and test every choice ({"selected": ..., "baseline": ... | None}) on every stream for `task`, then fuse.

    Returns {"class_names", "targets" (N,) labels or (N, T, K, 2) landmarks, "meta" (clip metadata: normalization,
             extract, ...),
             "streams": {modality: {role: {"model", "history", "outputs": [the task's test outputs per epoch], "cfg"}}},
             "examples": {modality: up to two raw test clips (B, T, C, H, W), for the MLflow signature},
             "fused": {role: [fused test outputs per epoch]} (the first seed's),
             "seeds": {role: [{"seed", "streams": {modality: last-epoch test outputs}, "fused"}]} (every seed of the
             choice's `seeds`: pipeline.report.comparison), "frames": {modality: the trained CNN alone on test, per
             frame (an `Evaluation`)}}.
    """
    out = {"streams": {}, "fused": {}, "examples": {}}
    targets = None
    for m in modalities:
        bb = load_backbone(Path(pretrained_dir) / f"{m}.pt")
        bb_config = model_config(bb)  # a Backbone's config, or the build spec of the user's module
        snippet = snippet_length(bb_config)
        train_ds = ClipDataset(clips_dir, ["train", "val"], m, snippet=snippet, raw=True)  # uint8, normalised on device
        test_ds = ClipDataset(clips_dir, "test", m, snippet=snippet, raw=True)
        if len(test_ds) == 0 or len(train_ds) == 0:
            raise ValueError(f"{clips_dir}: modality {m}: {len(train_ds)} train+val clips, {len(test_ds)} test clips; "
                             "need both (data.test_fraction > 0)")
        if train_ds.task != task.name:
            raise ValueError(f"{clips_dir}: clips extracted for task {train_ds.task!r}, but params.yaml's task is "
                             f"{task.name!r}; rerun the extract stage")
        if int(bb_config["num_classes"]) != train_ds.num_classes:
            raise ValueError(f"{Path(pretrained_dir) / f'{m}.pt'}: {bb_config['num_classes']} classes, but {clips_dir} "
                             f"has {train_ds.num_classes}; rerun the pretrain stage")
        def train_augment():  # as the search augmented its train clips, alike for every trunk cache
            augment = from_params(search_params, search_params.seed, points=task.points)
            return (augment, search_params.augment_copies) if augment else None

        default = default_boundary(bb)  # one cache per boundary a choice needs (pipeline.search.trunk_cache)
        boundaries = space_boundaries(bb, [c for c in choices.values() if c is not None], default=True)
        caches = trunk_caches(bb, {"train": train_ds, "test": test_ds}, boundaries, cache_trunk=cache_trunk,
                              train_augment=train_augment, device=device)
        splits = caches.get(default) or caches[None]
        if targets is not None and not torch.equal(targets, splits["test"].y):
            raise ValueError(f"{clips_dir}: the test clips of {m} are not in the order of {modalities[0]}; cannot fuse")
        targets = splits["test"].y
        out.setdefault("class_names", train_ds.class_names)
        out.setdefault("meta", train_ds.meta)
        out["streams"][m] = {}
        raw = torch.stack([test_ds[i][0] for i in range(min(2, len(test_ds)))])  # (2, T, H, W, C) uint8
        out["examples"][m] = test_ds.normalizer()(raw)  # (2, T, C, H, W) float32
        out.setdefault("frames", {})[m] = evaluate_model(prernn.frame_model(bb), splits["test"], task=task,
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
                history, outputs = train_and_test(model, data["train"], data["test"], epochs=epochs, cfg=cfg_seed,
                                                  device=device, task=task)
                if seed == seeds[0]:  # the first seed's model is the one saved and registered
                    out["streams"][m][role] = {"model": model, "history": history, "outputs": outputs, "cfg": cfg_seed}
                runs = out.setdefault("seeds", {}).setdefault(role, [])
                run = next((r for r in runs if r["seed"] == seed), None)
                if run is None:
                    run = {"seed": seed, "streams": {}}
                    runs.append(run)
                run["streams"][m] = outputs[-1]  # last-epoch test outputs (N, K) [(N, T, K, 2)]
    for role in [r for r, c in choices.items() if c is not None]:
        per_stream = [out["streams"][m][role]["outputs"] for m in modalities]
        out["fused"][role] = [task.fuse([s[e] for s in per_stream]) for e in range(int(epochs))]
        for run in out["seeds"][role]:
            run["fused"] = task.fuse([run["streams"][m] for m in modalities])
    out["targets"] = targets
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


def summary(result: dict, choices: dict, modalities: list[str],
            task: Task) -> tuple[dict, dict, list[dict], list[dict]]:
    """(metrics.json, evaluation.json, history.csv rows, the task's plot rows) from `run_evaluation`'s result.

    metrics.json: test_<key> of the selected configuration (fused) for the task's metric keys, the baseline's
    (baseline_test_<key>), the gain in the task's score, the test set (`Task.test_info`), per stream the
    `report_keys` and the baseline's score, the comparison over seeds of the `report_keys` (pipeline.report.
    comparison), the seeds and the CNN alone per frame; evaluation.json the `Task.test_report` of every role
    fused and per stream. history.csv: per epoch the fused `report_keys` and each stream's test score, train loss
    and train metric.
    """
    names, y = result["class_names"], result["targets"]
    roles = list(result["fused"])
    final = {r: task.test_report(result["fused"][r][-1], y, names) for r in roles}
    streams = {m: {r: task.test_report(result["streams"][m][r]["outputs"][-1], y, names) for r in roles}
               for m in modalities}
    sel, base = final["selected"], final.get("baseline")
    score = task.score_metric
    metrics = {**task.metrics_head(),
               **{f"test_{k}": sel[k] for k in task.metric_keys},
               **{f"baseline_test_{k}": base[k] if base else None for k in task.metric_keys},
               "gain": sel[score] - base[score] if base else None, **task.test_info(sel, y),
               "streams": {m: {**{f"test_{k}": s["selected"][k] for k in task.report_keys},
                               f"baseline_test_{score}": s["baseline"][score] if "baseline" in s else None}
                           for m, s in streams.items()},
               "selected": choices["selected"]["name"], "baseline": (choices.get("baseline") or {}).get("name")}
    metrics["comparison"] = compare(result, modalities, {f"test_{k}": task.metric_fn(k) for k in task.report_keys},
                                    resamples=task.resamples)
    metrics["seeds"] = [run["seed"] for run in result["seeds"]["selected"]]
    metrics["frame_reference"] = {m: {f"test_{k}": result["frames"][m].metrics[k] for k in task.report_keys}
                                  for m in modalities}
    if task.mean_keys:
        fused = metrics["comparison"]["fused"][f"test_{score}"]
        metrics.update({f"test_{score}_mean": fused["selected"]["mean"],
                        f"baseline_test_{score}_mean": fused["baseline"]["mean"] if "baseline" in fused else None,
                        "gain_mean": fused["difference"]["mean"] if "difference" in fused else None})
    parts = report_parts(result, choices, modalities)
    report = {**task.metrics_head(), "fusion": task.fusion if len(modalities) > 1 else None, "modalities": modalities,
              **task.report_info(names), "choices": parts["choices"], "fused": final, "streams": streams,
              "train_config": parts["train_config"]}
    history = history_rows(result, modalities,
                           lambda out: {f"test_{k}": task.test_report(out, y, names)[k] for k in task.report_keys},
                           (f"test_{score}", "train_loss", f"train_{task.train_metric}"))
    plot = task.plot_rows({r: result["fused"][r][-1] for r in roles}, y, names)
    return metrics, report, history, plot
