"""A search trial's config and its row in the trial table, each defined once.

Ray Tune's param_space holds plain dicts, so the types are TypedDicts (plain dicts with declared keys):
- `Arch`: one point of the space (pipeline.search.space.build_space; `configuration` and `seed` added per seed by
  `with_seeds`, over the `seed_values` of the search params), e.g. {"name": "prernn-gru-fc7", "kind": "prernn", "cell": "gru", "sih": False, "layers": ["fc7"],
  "num_layers": 1, "hidden_size": None}.
- `TrialSettings`: what every trial of a search shares (`trial_settings`): the search params of `SearchShared`,
  the resources, where it logs (`TRACKING_KEYS`), the per-batch augmentation and the task's params
  (`Task.params()`, e.g. {"regression": {...}}; none for classification).
- `TrialConfig`: what Ray gives a trial, {"arch": Arch, **TrialSettings} (`param_space` makes one per arch);
  `flat_config` merges the arch in: what the model is built from, the MLflow params and trials.json show.
- `TrialRow`: a row of search/trials.json (pipeline.search.results.trial_row); `ROW_KEYS`, the trials.csv
  columns, are `TrialColumns`'.

Plain data only (no torch): pipeline.report.seeds reads the seed axis from here.
"""
from __future__ import annotations

from typing import Optional, Sequence, TypedDict



class Arch(TypedDict, total=False):
    """One configuration of the space (a grid point of param_space's "arch")."""

    name: str                   # the trial: `prernn-gru-fc7`, with several seeds `prernn-gru-fc7-seed1`
    kind: str                   # prernn | traditional
    cell: str
    sih: bool
    layers: list[str]           # the converted layers, in forward order ([] for a traditional baseline)
    num_layers: int
    hidden_size: Optional[int]  # a traditional baseline's width (None: the last feature layer's)
    configuration: str          # what the seeds share (`prernn-gru-fc7`; with_seeds)
    seed: int                   # the trial's seed (with_seeds; overrides the search's)


def trial_name(kind: str, cell: str, sih: bool = False, layers: Sequence[str] = (), num_layers: int = 1) -> str:
    """`prernn-lstm-sih-fc6+fc7`, `prernn-gru-fc7`, `traditional-vrnn-2`."""
    if kind == "traditional":
        return f"traditional-{cell}-{num_layers}"
    return "-".join(["prernn", cell] + (["sih"] if sih else []) + ["+".join(layers)])


def arch(kind: str, cell: str, sih: bool, layers: list[str], num_layers: int,
         hidden_size: Optional[int] = None) -> Arch:
    """The Arch of one configuration, named by `trial_name`."""
    return {"name": trial_name(kind, cell, sih, layers, num_layers), "kind": kind, "cell": cell, "sih": sih,
            "layers": layers, "num_layers": num_layers, "hidden_size": hidden_size}


def seed_values(search) -> list[int]:
    """`search.seed`, `search.seed + 1`, ... (`search.seeds` values; SearchParams or a mapping)."""
    get = (lambda k: search[k]) if isinstance(search, dict) else (lambda k: getattr(search, k))
    first = int(get("seed"))
    return [first + i for i in range(int(get("seeds")))]


def with_seeds(space: list[Arch], seeds: Sequence[int]) -> list[Arch]:
    """Each arch once per seed: {"configuration": arch name, "seed", "name": "<arch>-seed<k>"}; with one seed the
    names stay the arch names."""
    seeds = list(seeds)
    return [{**a, "name": a["name"] if len(seeds) == 1 else f"{a['name']}-seed{s}", "configuration": a["name"],
             "seed": int(s)} for a in space for s in seeds]


class SearchShared(TypedDict):
    """The `search` params every trial trains with (pipeline.core.params.SearchParams fields of these names)."""

    epochs: int
    batch_size: int
    lr_inherited: float
    lr_new: float
    weight_decay: float
    hh_init: str
    seed: int


SHARED_KEYS = tuple(SearchShared.__annotations__)


class TrialSettings(SearchShared):
    """Everything a trial's config holds besides its arch (and the task's params, `Task.params()`)."""

    cpus_per_trial: float
    use_gpu: bool
    gate_stats_every_epoch: bool  # ASHA may stop a trial after any epoch: gate statistics at every one
    tracking_uri: str             # the store (pipeline.core.tracking.Tracker) ...
    tracking_outage_s: float      # ... and its outage bound (a trial waits `tracking_outage.trial_bound` of it)
    experiment_id: str
    parent_run_id: str
    augment: list                 # [shift, jitter]: per batch when the trunk is not cached


class TrialConfig(TrialSettings):
    """What Ray Tune gives a trial (`param_space`)."""

    arch: Arch


STORE_KEYS = ("tracking_uri", "tracking_outage_s")  # which store a trial logs to: not among its MLflow params
TRACKING_KEYS = STORE_KEYS + ("parent_run_id", "experiment_id")  # where it logs: not in trials.json's config


def trial_settings(search, task, *, tracking_uri: str, outage_s: float, experiment_id: str,
                   parent_run_id: str) -> TrialSettings:
    """The settings of every trial of a search: `search` (SearchParams), `task` (pipeline.training.tasks.Task),
    the MLflow store and the parent run. Key order is the trial config's (trials.json shows it)."""
    return {**{k: getattr(search, k) for k in SHARED_KEYS},
            "cpus_per_trial": search.cpus_per_trial, "use_gpu": search.gpus_per_trial > 0,
            "gate_stats_every_epoch": search.scheduler == "asha", "tracking_uri": tracking_uri,
            "tracking_outage_s": outage_s, "experiment_id": experiment_id, "parent_run_id": parent_run_id,
            **task.params(),
            "augment": [search.augment_shift, search.augment_jitter]}


def flat_config(config: TrialConfig) -> dict:
    """The trial config with the arch dict merged in (what MLflow params and trials.json show)."""
    cfg = {k: v for k, v in config.items() if k != "arch"}
    cfg.update(config.get("arch", {}))
    return cfg


class TrialColumns(TypedDict, total=False):
    """The scalar keys of a trial row, in order: the trials.csv columns (`ROW_KEYS`; the task's other val keys
    follow them) and the parent run's trials_summary.json."""

    name: str                   # the trial: configuration + seed (`prernn-gru-fc6-seed1`)
    configuration: str          # what the seeds share (`prernn-gru-fc6`), the unit Table 1 and selection rank
    seed: int
    kind: str                   # prernn | traditional
    cell: str
    sih: bool
    layers: list[str]
    num_layers: int
    status: str                 # ok | failed
    error: Optional[str]
    val_acc: Optional[float]    # at the best epoch by the task's score (`summarize`); None without accuracy
    val_loss: Optional[float]
    epochs_to_95: Optional[int]
    clips_per_sec: Optional[float]
    recurrent_params: Optional[int]
    mlflow_run_id: Optional[str]


ROW_KEYS = tuple(TrialColumns.__annotations__)
ROW_VAL_KEYS = tuple(k for k in ROW_KEYS if k.startswith("val_"))  # every row has them (None where the task has none)


class TrialRow(TrialColumns, total=False):
    """One trial of the search: a row of search/trials.json (the select and evaluate stages read it back as JSON),
    made from the trial's last Ray result (pipeline.search.results.trial_row). The task's best val metrics
    (`val_auc`, ...) join `ROW_VAL_KEYS`."""

    val_auc: Optional[float]    # LandmarkRegression's keys
    val_nme: Optional[float]
    val_failure_rate: Optional[float]
    gate_stats: Optional[dict]  # prernn.gate_statistics of the last epoch, per recurrent layer
    node_id: Optional[str]
    node_ip: Optional[str]
    history: list[dict]         # pipeline.training.trainer.EpochRow per epoch
    epochs_run: int
    best_epoch: Optional[int]
    stopped_early: bool
    config: dict                # the trial's flat config (`TRACKING_KEYS` left out)
