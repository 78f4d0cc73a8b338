"""The params.yaml schema as plain data, validated before any stage does work.

`load_params(path)` -> `Params`; every problem (unknown key, wrong type, value not allowed,
impossible combination of sections) is collected into one `ParamsError` whose message has one line per
problem naming the dotted key, the value given and what is allowed.

This module imports no torch, no `prernn` and nothing above `pipeline.core`, so a stage that reads only its
params (ingest, extract) depends on nothing else (dvc.yaml's derived deps). Allowed values are strings:
the task names (`TASKS`) and the cells (`CELLS`) are fixed lists that tests/test_params.py compares with their
registries. The checks that need a registry (pretrain.backbone known, pretrain.dropout applies, the task's
defaults and cross-checks, the search space over the backbone's layers) live above, in `pipeline.checks`,
which every later stage loads its params through; `python -m pipeline.checks params.yaml` runs all of them.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Callable, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

MODALITIES = ("rgb", "flow", "depth")
TASKS = ("classification", "regression")  # pipeline.training.tasks.list_tasks() (tests/test_params.py)
CELLS = ("vrnn", "lstm", "gru")            # prernn.CELLS (tests/test_params.py)


class ParamsError(ValueError):
    """Raised with one line per invalid key of params.yaml."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SyntheticParams(_Section):
    classes: list[str] = Field(
        default=["swipe_left", "swipe_right", "swipe_up", "swipe_down", "rotate_cw", "rotate_ccw", "push", "pull"],
        min_length=2,
    )
    clips_per_class: int = Field(30, ge=3)
    frames: int = Field(20, ge=2)
    size: int = Field(48, ge=16, le=512)
    fps: int = Field(15, ge=1)
    seed: int = 0


class SyntheticLandmarkParams(_Section):
    """The built-in landmark set (task: regression): a deformable shape of `points` landmarks (pipeline.data.landmarks)."""

    points: int = Field(10, ge=3, le=68)
    clips: int = Field(24, ge=3)
    frames: int = Field(20, ge=2)
    size: int = Field(48, ge=16, le=512)
    fps: int = Field(15, ge=1)
    noise: float = Field(8.0, ge=0)          # std of the Gaussian pixel noise (0-255 scale)
    blur: float = Field(0.3, ge=0, le=1)     # probability of a blurred frame
    occlusion: float = Field(0.3, ge=0, le=1)  # probability that a clip has a moving occluder
    seed: int = 0


class RegressionParams(_Section):
    """task: regression (claim 4, [0029]): the landmark loss and the Table 1 metrics (pipeline.training.metrics)."""

    normalize: Literal["auto", "inter_ocular", "bbox"] = "auto"  # auto: inter_ocular for 68 points, else bbox
    eyes: tuple[int, int] = (36, 45)         # outer eye corners of the 68-point markup
    threshold: float = Field(0.08, gt=0)     # NME threshold of the CED AUC and the failure rate
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"


LANDMARK_SOURCES = ("synthetic_landmarks", "300vw")


class DataParams(_Section):
    source: Literal["synthetic", "folder", "list", "synthetic_landmarks", "300vw"] = "synthetic"
    root: Optional[str] = None
    list_files: list[str] = []
    split_files: dict[Literal["train", "val", "test"], str] = {}
    class_index: Optional[str] = None
    depth_pattern: tuple[str, str] = ("_color", "_depth")
    val_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.2, ge=0.0, lt=1.0)
    seed: int = 0
    synthetic: SyntheticParams = SyntheticParams()
    landmarks: SyntheticLandmarkParams = SyntheticLandmarkParams()

    @field_validator("depth_pattern")
    @classmethod
    def _two_suffixes(cls, value):
        if not all(value) or value[0] == value[1]:
            raise ValueError("must be two different, non-empty suffixes, e.g. ['_color', '_depth']")
        return value

    @model_validator(mode="after")
    def _check_source(self):
        if self.source in ("folder", "list", "300vw") and not self.root:
            raise ValueError(f"data.root: null: a data root is required when data.source is {self.source!r}")
        if self.source == "list" and not self.list_files and not self.split_files:
            raise ValueError(
                "data.list_files: []: at least one list file (or data.split_files) is required when data.source is 'list'"
            )
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction: {self.val_fraction + self.test_fraction}: must be below 1"
            )
        return self


class ExtractParams(_Section):
    frames: int = Field(8, ge=1)
    sampling: Literal["uniform", "consecutive"] = "uniform"
    stride: int = Field(2, ge=1)
    size: int = Field(32, ge=8, le=512)
    resize: Literal["stretch", "center_crop", "pad"] = "stretch"
    modalities: list[Literal["rgb", "flow", "depth"]] = ["rgb", "flow", "depth"]
    flow_method: Literal["dis", "farneback"] = "dis"
    dis_preset: Literal["ultrafast", "fast", "medium"] = "fast"
    flow_bound: float = Field(20.0, gt=0)  # pixels at the output size
    workers: int = Field(0, ge=0)
    shard_mb: int = Field(256, ge=1)
    strict: bool = False
    max_skipped_fraction: float = Field(0.5, ge=0.0, le=1.0)


class PretrainParams(_Section):
    # a registered backbone (prernn.list_backbones), or your own CNN's builder 'package.module:function' (code you
    # trust, like an entry point: pipeline.core.own_model); checked by pipeline.checks
    backbone: str = "vgg_mini"
    backbone_kwargs: dict[str, Any] = {}  # the builder's keyword arguments (a builder only)
    modalities: list[Literal["rgb", "flow", "depth"]] = ["rgb", "flow"]
    weights: Optional[str] = None  # a state dict (a builder's module: loaded strictly, weights only)
    finetune: bool = True
    epochs: int = Field(6, ge=0)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(0.002, gt=0)
    weight_decay: float = Field(5e-4, ge=0)
    augment_shift: int = Field(0, ge=0, le=16)     # pixels a training frame is shifted by at most (pipeline.data.augment)
    augment_jitter: float = Field(0.0, ge=0, le=1)  # brightness / contrast jitter of a training frame
    dropout: Optional[float] = Field(None, ge=0, lt=1)  # fc6 / fc7 dropout (VGG, C3D); null: the task's (Task.fc_dropout)
    # (a backbone without fc dropout refuses a number: pipeline.checks)
    phase_bins: int = Field(0, ge=0)  # classification: also train on (class, phase bin) pairs (pipeline.training.phase)
    phase_weight: float = Field(1.0, ge=0)  # the weight of that pair loss beside the class loss
    seed: int = 0


class SearchParams(_Section):
    modality: Literal["rgb", "flow", "depth"] = "rgb"
    cells: list[Literal[CELLS]] = list(CELLS)
    layers: Union[None, Literal["all"], list[list[str]]] = None  # null: the default candidates' combinations
    max_layers: Optional[int] = Field(None, ge=1)  # the most layers one combination converts; null: no bound
    sih: list[bool] = [False, True]
    baselines: list[Literal[1, 2]] = [1, 2]
    baseline_hidden_size: Optional[int] = Field(None, ge=1)
    epochs: int = Field(8, ge=1)
    batch_size: int = Field(16, ge=1)
    lr_inherited: float = Field(5e-4, gt=0)
    lr_new: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    hh_init: Literal["orthogonal", "xavier", "normal"] = "orthogonal"
    scheduler: Literal["none", "asha"] = "none"
    cache_trunk: bool = True
    cpus_per_trial: float = Field(1, gt=0)
    gpus_per_trial: float = Field(0, ge=0)
    max_concurrent: int = Field(0, ge=0)
    max_failures: int = Field(1, ge=0)
    address: Optional[str] = None
    storage_path: str = "ray_results"
    seed: int = 0
    seeds: int = Field(1, ge=1, le=50)  # every configuration trains with seeds seed, seed+1, ... (pipeline.report.seeds)
    augment_shift: int = Field(0, ge=0, le=16)      # pipeline.data.augment: the same shift for every frame of a clip
    augment_jitter: float = Field(0.0, ge=0, le=1)
    augment_copies: int = Field(1, ge=1, le=16)     # cached trunk: augmented passes over the train clips

    @field_validator("layers", mode="before")
    @classmethod
    def _layer_sets_or_all(cls, value):
        expected = ("expected null (the default candidates' combinations), 'all' (every candidate's) or a list of "
                    "layer sets such as [[fc6], [conv3, fc6]]")
        if isinstance(value, str) and value != "all" or not isinstance(value, (str, list, type(None))):
            raise ValueError(expected)
        for i, entry in enumerate(value if isinstance(value, list) else []):
            if not isinstance(entry, list) or not all(isinstance(x, str) for x in entry):
                raise ValueError(f"entry {i}: {entry!r} is not a list of layer names; {expected}")
        return value


class SelectParams(_Section):
    low: float = Field(0.1, gt=0, lt=1)
    high: float = Field(0.9, gt=0, lt=1)
    gates: Literal["embodiment", "all"] = "embodiment"  # prernn.deciding_gates: LSTM forget, GRU reset + update
    metric: Optional[str] = None  # null: the task's score (Task.score: val_acc, val_auc); pipeline.checks resolves it
    mode: Optional[Literal["max", "min"]] = None  # null: the task's (Task.mode) when metric is null, else max

    @model_validator(mode="after")
    def _ordered(self):
        if not self.low < self.high:
            raise ValueError(f"select.low {self.low} must be below select.high {self.high}")
        return self


class EvaluateParams(_Section):
    epochs: int = Field(8, ge=1)
    # null: the task's streams (Task.evaluate_modalities) that pretrain trains; pipeline.checks resolves it
    modalities: Optional[list[Literal["rgb", "flow", "depth"]]] = Field(None, min_length=1)
    register_name: str = "prernn-final"


class MlflowParams(_Section):
    tracking_uri: str = "sqlite:///mlflow.db"
    experiment: str = "prernn"
    outage_s: float = Field(120, gt=0)  # an http(s) server down for longer stops the search (pipeline.core.tracking_outage)


class Params(_Section):
    task: Literal[TASKS] = "classification"  # the registered tasks (pipeline.training.tasks)
    data: DataParams = DataParams()
    extract: ExtractParams = ExtractParams()
    pretrain: PretrainParams = PretrainParams()
    search: SearchParams = SearchParams()
    select: SelectParams = SelectParams()
    evaluate: EvaluateParams = EvaluateParams()
    mlflow: MlflowParams = MlflowParams()
    regression: RegressionParams = RegressionParams()

    @model_validator(mode="after")
    def _modalities_extracted_and_trained(self):
        """Every stream pretrain, search and evaluate use is extracted; search and evaluate use trained ones
        (evaluate.modalities null, the task's, is always a subset of pretrain.modalities)."""
        problems = []
        given = list(self.evaluate.modalities or [])
        needed = set(self.pretrain.modalities) | {self.search.modality} | set(given)
        missing = sorted(needed - set(self.extract.modalities))
        if missing:
            problems.append(
                f"extract.modalities: {list(self.extract.modalities)}: must include {missing}, "
                "which pretrain/search/evaluate use"
            )
        trained = set(self.pretrain.modalities)
        for key, mods in (("search.modality", [self.search.modality]), ("evaluate.modalities", given)):
            untrained = sorted(set(mods) - trained)
            if untrained:
                problems.append(f"{key}: {mods}: {untrained} not in pretrain.modalities {list(self.pretrain.modalities)}")
        if problems:
            raise ValueError("\n".join(problems))
        return self


def _format(err: ValidationError, raw: dict) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown key")
        elif key:
            lines.append(f"{key}: {e.get('input')!r}: {msg}")
        else:
            lines.append(msg)
    return "\n".join(lines)


def validate_params(raw: dict) -> Params:
    """Validate a params mapping; raise ParamsError with one line per problem."""
    try:
        return Params.model_validate(raw or {})
    except ValidationError as err:
        raise ParamsError("invalid params:\n" + _format(err, raw)) from None


def load_stage_params(path: str | Path, stage: str,
                      check: Optional[Callable[[Params], Params]] = None) -> Params:
    """`load_params`, then `check` (the stage's registry checks: `pipeline.checks.load_stage_params` passes
    them; ingest and extract need none) for a stage script: on a ParamsError print it, prefixed by `stage`,
    and exit 2."""
    try:
        params = load_params(path)
        if check is None:
            return params
        try:
            return check(params)
        except ParamsError as err:
            raise ParamsError(f"{path}: {err}") from None
    except ParamsError as err:
        print(f"{stage}: {err}", file=sys.stderr)
        raise SystemExit(2) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ParamsError(f"{path}: no such params file") from None
    except yaml.YAMLError as err:
        raise ParamsError(f"{path}: not valid YAML: {err}") from None
    if raw is not None and not isinstance(raw, dict):
        raise ParamsError(f"{path}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return validate_params(raw)
    except ParamsError as err:
        raise ParamsError(f"{path}: {err}") from None
