"""The params checks that need a registry, above every package they ask: `load_stage_params(path, stage)`.

`pipeline.core.params` validates params.yaml as plain data (types, allowed strings, the sections' own rules).
This module adds what only the registries know, each check a `Params -> list of problem lines` naming the key:

- `backbone_problems`: pretrain.backbone is registered (prernn.list_backbones) and pretrain.dropout applies
  to it (prernn.backbone_options); or it is a builder `package.module:function` (pipeline.core.own_model) that
  builds an nn.Module with convertible layers, without the options only a registered backbone has (dropout,
  phase bins, the traditional baselines of search.baselines);
- `task_problems`: the task's data (a landmark task needs a landmark source, a landmark source a landmark
  task) and select.metric (val_acc for a task without accuracy);
- `search_space_problems`: the search space over pretrain.backbone's candidate layers
  (pipeline.search.space.space_problems: the search stage refuses the same lines).

`with_task_defaults` first resolves what params.yaml leaves to the task (select.metric / mode,
evaluate.modalities). `STAGE_CHECKS` names the checks each stage runs before any work; ingest and extract read
plain params (`pipeline.core.params.load_stage_params`), so that their DVC deps stay the data code. Every check
at once, before hours of ingest and extract (the first line of `make repro`; exit 2 naming each problem):

    python -m pipeline.checks params.yaml
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Optional

import torch

import prernn
from prernn.generic import CONVERTIBLE
from pipeline.core import params as schema
from pipeline.core.own_model import OwnModelError, build_own, is_builder
from pipeline.core.params import LANDMARK_SOURCES, Params, ParamsError
from pipeline.search.space import space_problems
from pipeline.training.tasks import get_task, list_tasks

Check = Callable[[Params], list[str]]


def backbone_candidates(name: str, kwargs: Optional[dict] = None) -> tuple[list[str], list[str]]:
    """(candidate layers, default candidates) of backbone `name` (prernn.candidate_layers,
    prernn.default_candidates), built on the meta device (no memory); a builder `package.module:function` with
    its `kwargs` (pretrain.backbone_kwargs): its convertible layers by qualified name (OwnModelError when it
    cannot be built)."""
    with torch.device("meta"):
        if is_builder(name):
            bb = build_own(schema.PretrainParams(backbone=name, backbone_kwargs=kwargs or {}), 2)
        else:
            bb = prernn.create_backbone(name, 2)
        return prernn.candidate_layers(bb), prernn.default_candidates(bb)


def with_task_defaults(params: Params) -> Params:
    """`params` with what it leaves to the task filled in: select.metric null -> the task's score (`Task.score`:
    val_acc, or val_auc for task: regression) and select.mode null -> the task's (`Task.mode`), or max beside a
    metric given; evaluate.modalities null -> the task's streams (`Task.evaluate_modalities`) that pretrain
    trains (all of them when it trains none of the task's)."""
    task = get_task(params.task)
    select = params.select
    if select.metric is None:
        select = select.model_copy(update={"metric": task.score, "mode": select.mode or task.mode})
    elif select.mode is None:
        select = select.model_copy(update={"mode": "max"})
    evaluate = params.evaluate
    if evaluate.modalities is None:
        trained = list(params.pretrain.modalities)
        chosen = [m for m in task.evaluate_modalities if m in trained] or trained
        evaluate = evaluate.model_copy(update={"modalities": chosen})
    return params.model_copy(update={"select": select, "evaluate": evaluate})


def own_model_problems(params: Params) -> list[str]:
    """A builder `package.module:function` as pretrain.backbone: it builds a module with convertible layers, and
    no option asks for what only a registered backbone has."""
    p, problems = params.pretrain, []
    try:
        candidates, _ = backbone_candidates(p.backbone, p.backbone_kwargs)
    except OwnModelError as err:
        return [str(err)]
    if not candidates:
        problems.append(f"pretrain.backbone: {p.backbone!r}: the module has no convertible layer "
                        f"({CONVERTIBLE})")
    for key, value, expected in (("pretrain.dropout", p.dropout, "null (a registered backbone's fc dropout)"),
                                 ("pretrain.phase_bins", p.phase_bins, "0 (a registered backbone's head)"),
                                 ("search.baselines", params.search.baselines,
                                  "[] (the traditional baselines stack an RNN on a registered backbone)")):
        if value not in (None, 0, []):
            problems.append(f"{key}: {value}: pretrain.backbone {p.backbone!r} is your own module; expected {expected}")
    return problems


def backbone_problems(params: Params) -> list[str]:
    """pretrain.backbone is registered, pretrain.dropout is null for a backbone without fc dropout; or it is a
    builder (`own_model_problems`)."""
    p = params.pretrain
    if is_builder(p.backbone):
        return own_model_problems(params)
    if p.backbone_kwargs:
        return [f"pretrain.backbone_kwargs: {p.backbone_kwargs}: only a builder 'package.module:function' takes "
                f"keyword arguments; backbone {p.backbone!r} is registered: expected {{}}"]
    if p.backbone not in prernn.list_backbones():
        return [f"pretrain.backbone: {p.backbone!r}: unknown backbone {p.backbone!r}; "
                f"allowed: {', '.join(prernn.list_backbones())}, or your own CNN's builder 'package.module:function'"]
    if p.dropout is not None and "dropout" not in prernn.backbone_options(p.backbone):
        return [f"pretrain.dropout: {p.dropout}: backbone {p.backbone!r} has no fc dropout; expected null"]
    return []


def task_problems(params: Params) -> list[str]:
    """The task against data.source (landmark annotations or class labels) and select.metric (resolved)."""
    problems = []
    task = get_task(params.task)
    source = params.data.source
    landmark_source = source in LANDMARK_SOURCES
    if task.needs_landmarks and not landmark_source:
        problems.append(f"data.source: {source!r}: task {task.name} needs landmark annotations; "
                        f"allowed: {', '.join(LANDMARK_SOURCES)}")
    if params.select.metric == "val_acc" and "acc" not in task.metric_keys:
        others = [k for k in task.val_keys if k != task.score]
        problems.append(f"select.metric: 'val_acc': {task.name} trials have no accuracy; use {task.score} "
                        f"(default), {' or '.join(others)} (mode: min), or val_loss")
    if not task.needs_landmarks and landmark_source:
        landmark_tasks = [n for n in list_tasks() if get_task(n).needs_landmarks]
        problems.append(f"data.source: {source!r}: a landmark source has no class labels; "
                        f"set task: {' or '.join(landmark_tasks)}")
    return problems


def search_space_problems(params: Params) -> list[str]:
    """The search space's own rules (pipeline.search.space.space_problems) over pretrain.backbone's candidate
    layers (a builder's: its convertible layers); [] for an unknown backbone (`backbone_problems` names it)."""
    backbone = params.pretrain.backbone
    if is_builder(backbone):
        try:
            candidates, defaults = backbone_candidates(backbone, params.pretrain.backbone_kwargs)
        except OwnModelError:
            return []  # backbone_problems names it
        return space_problems(params.search, candidates, backbone, defaults)
    if backbone not in prernn.list_backbones():
        return []
    candidates, defaults = backbone_candidates(backbone)
    return space_problems(params.search, candidates, backbone, defaults)


ALL_CHECKS: tuple[Check, ...] = (backbone_problems, task_problems, search_space_problems)
STAGE_CHECKS: dict[str, tuple[Check, ...]] = {
    "ingest": (),       # data only: the stage itself loads through pipeline.core.params (deps: data code)
    "extract": (),
    "pretrain": (backbone_problems, task_problems),
    "search": ALL_CHECKS,
    "select": (task_problems,),
    "evaluate": (task_problems,),
    "all": ALL_CHECKS,  # python -m pipeline.checks, prernn check-params
}


def checked(params: Params, stage: str = "all") -> Params:
    """Schema-valid `params` with the task's defaults, after `stage`'s checks; ParamsError with one line per
    problem ("invalid params:" first, as the schema's)."""
    if stage not in STAGE_CHECKS:
        raise ValueError(f"stage {stage!r}: unknown; expected one of {', '.join(STAGE_CHECKS)}")
    params = with_task_defaults(params)
    problems = [line for check in STAGE_CHECKS[stage] for line in check(params)]
    if problems:
        raise ParamsError("invalid params:\n" + "\n".join(problems))
    return params


def validate_params(raw: Optional[dict], stage: str = "all") -> Params:
    """A params mapping -> the checked `Params` (`pipeline.core.params.validate_params`, then `checked`)."""
    return checked(schema.validate_params(raw), stage)


def load_params(path: str | Path = "params.yaml", stage: str = "all") -> Params:
    """Read params.yaml and run `stage`'s checks; a ParamsError names the file."""
    params = schema.load_params(path)
    try:
        return checked(params, stage)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None


def load_stage_params(path: str | Path, stage: str) -> Params:
    """The typed params of stage `stage`, checked before any work: on a ParamsError print it, prefixed by
    `stage`, and exit 2."""
    return schema.load_stage_params(path, stage, lambda params: checked(params, stage))


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description="Check params.yaml as every stage will (exit 2 naming each problem).")
    ap.add_argument("params", nargs="?", default="params.yaml")
    args = ap.parse_args(argv)
    try:
        load_params(args.params)
    except ParamsError as err:
        print(err, file=sys.stderr)
        return 2
    print(f"{args.params}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
