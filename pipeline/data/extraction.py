"""The extract stage's work: every manifest video -> clip arrays (in worker processes) -> Arrow shards.

`extract_manifest(rows, class_names, params, out_dir, workers)` -> report dict
{"kept", "skipped": [{"video_id", "path", "reason"}], "splits": {split: n}, "files", "seconds", ...}.
The pool gets the videos in tasks planned by `plan_tasks` (within each window of consecutive rows the
longest first, the long ones alone, the short ones in groups), so a long video at the end of the manifest
does not leave the other workers idle; the results are put back in manifest order before they are
written, so the files are byte-identical whatever the worker count. A video that fails is reported with
its reason and left out.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from pathlib import Path

import cv2
from tqdm import tqdm

from pipeline.data.clipstore import CHANNELS, ChannelStats, ClipWriter
from pipeline.data.landmarks import LandmarkError, clip_landmarks, coordinate_names, num_points
from pipeline.data.paths import SourceError, resolve
from pipeline.data.video import FlowComputer, VideoError, read_clip

_worker_state: dict = {}


def _init_worker(params: dict) -> None:
    cv2.setNumThreads(1)  # one core per process; parallelism comes from the pool
    _worker_state["params"] = params
    _worker_state["flow"] = FlowComputer(params["flow_method"], params["dis_preset"])


def _extract_one(row: dict):
    """-> ("ok", clip, sums) or ("skip", reason). Runs in a worker."""
    p = _worker_state["params"]
    mods = [m for m in p["modalities"] if m != "depth" or row["depth_path"]]
    info = {}
    path = resolve(row["path"])
    try:
        clip = read_clip(path, {**p, "modalities": mods},
                         depth_path=resolve(row["depth_path"]) if row["depth_path"] else None,
                         offset=int(row.get("offset") or 0), total=int(row["frames"]) if path.is_dir() else None,
                         computer=_worker_state["flow"], info=info)
        if p.get("landmarks"):  # task: regression: the sampled frames' landmarks (T, K, 2), normalised
            try:
                pts = clip_landmarks(row, p, info["decoded_frames"])
            except LandmarkError as err:
                return "skip", str(err)
            if pts.shape[1] != p["landmarks"]:
                return "skip", f"{pts.shape[1]} landmarks per frame, the other videos have {p['landmarks']}"
            clip["landmarks"] = pts
    except VideoError as err:
        return "skip", str(err)
    except Exception as err:  # noqa: BLE001 - any decoder failure is a per-video skip, reported by name
        return "skip", f"{type(err).__name__}: {err}"
    sums = {m: ChannelStats.sums(a) for m, a in clip.items() if m in CHANNELS} if row["split"] == "train" else {}
    return "ok", clip, sums


def _extract_many(rows: list[dict]) -> list:
    """_extract_one over the rows of one task (one message back)."""
    return [_extract_one(r) for r in rows]


def decode_cost(row: dict) -> float:
    """A row's estimated extraction cost in decoded pixels, plus a fixed cost per video (open, flow) that on
    the default synthetic set and the real clips in ../shared/videos is about 4e5 pixels' worth."""
    px = int(row.get("frames") or 0) * int(row.get("width") or 0) * int(row.get("height") or 0)
    return 4e5 + px


def plan_tasks(rows: list[dict], workers: int, window: int = 64, max_rows: int = 16) -> list[list[int]]:
    """Row indices grouped into pool tasks. Within each window of `window` consecutive rows the costliest
    (`decode_cost`) come first; consecutive rows of that order share a task up to `max_rows` rows or 1/8 of
    a worker's share of the total cost (fewer, larger tasks cost the main process less: bench.extract).
    Every index appears once; all of a window's tasks come before the next window's, so at most about a
    window of results waits to be written in manifest order."""
    cost = [decode_cost(r) for r in rows]
    budget = sum(cost) / (8 * max(workers, 1))
    tasks: list[list[int]] = []
    for start in range(0, len(rows), window):
        cur, cur_cost = [], 0.0
        for i in sorted(range(start, min(start + window, len(rows))), key=lambda i: (-cost[i], i)):
            if cur and (len(cur) == max_rows or cur_cost + cost[i] > budget):
                tasks.append(cur)
                cur, cur_cost = [], 0.0
            cur.append(i)
            cur_cost += cost[i]
        if cur:
            tasks.append(cur)
    return tasks


def in_manifest_order(tasks: list[list[int]], task_results):
    """The results of `tasks` (one list per task, in task order) -> one result per row, in row order."""
    pending, nxt = {}, 0
    for task, results in zip(tasks, task_results):
        pending.update(zip(task, results))
        while nxt in pending:
            yield pending.pop(nxt)
            nxt += 1


def resolve_workers(workers: int) -> int:
    return workers or os.cpu_count() or 1


def extract_manifest(rows: list[dict], class_names: list[str], params, out_dir: Path, workers: int = 0,
                     progress: bool = True, task: str = "classification") -> dict:
    """Extract every row of a manifest into out_dir; returns the report (see module docstring).

    task "regression": every clip also gets its `landmarks` (T, K, 2) (pipeline.data.landmarks); the class names
    become the 2K coordinate names of the regression head and the metadata gets `prernn.task`, `prernn.landmarks`.
    """
    p = params.model_dump() if hasattr(params, "model_dump") else dict(params)
    with_depth = "depth" in p["modalities"] and any(r["depth_path"] for r in rows)
    mods = [m for m in p["modalities"] if m != "depth" or with_depth]
    k = None
    if task == "regression":
        try:
            k = num_points(resolve(rows[0]["path"])) if rows else 0
        except LandmarkError as err:
            raise SourceError(f"task regression: {err}") from None
        class_names = coordinate_names(k)
        p_work = {**p, "landmarks": k}
    else:
        p_work = p
    writer = ClipWriter(out_dir, mods, p["frames"], p["size"], p["shard_mb"] * 2**20, landmarks=k)
    stats = {m: ChannelStats(CHANNELS[m]) for m in mods}
    skipped, kept, splits = [], 0, {"train": 0, "val": 0, "test": 0}
    n_workers = min(resolve_workers(workers), max(len(rows), 1))
    t0 = time.perf_counter()
    if n_workers == 1:
        _init_worker(p_work)
        results = map(_extract_one, rows)
        pool = None
    else:
        pool = mp.get_context("fork" if os.name == "posix" else "spawn").Pool(n_workers, _init_worker, (p_work,))
        tasks = plan_tasks(rows, n_workers)
        results = in_manifest_order(tasks, pool.imap(_extract_many, ([rows[i] for i in t] for t in tasks)))
    try:
        bar = tqdm(results, total=len(rows), desc="extract", unit="clip", disable=not progress, leave=False)
        for row, res in zip(rows, bar):
            if res[0] == "ok" and with_depth and "depth" not in res[1]:
                res = ("skip", "no depth video (other videos of this source have one)")
            if res[0] == "skip":
                skipped.append({"video_id": row["video_id"], "path": row["path"], "reason": res[1]})
                continue
            _, clip, sums = res
            for m, s in sums.items():
                stats[m].add_sums(*s)
            writer.add(row["split"], clip, row["label"], row["video_id"], row["path"])
            kept += 1
            splits[row["split"]] += 1
    except BaseException:
        if pool is not None:
            pool.terminate()  # interrupted or failed: do not wait for the remaining videos
        raise
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    seconds = time.perf_counter() - t0
    stored = {k: v for k, v in p.items() if k != "workers"}  # the files must not depend on the worker count
    meta = {"prernn.class_names": list(class_names), "prernn.extract": stored,
            "prernn.normalization": {m: s.result() for m, s in stats.items()}, "prernn.modalities": mods}
    if k:
        meta.update({"prernn.task": "regression", "prernn.landmarks": {"points": k}})
    files = writer.finish(meta)
    return {"kept": kept, "skipped": skipped, "total": len(rows), "splits": splits, "modalities": mods,
            "files": [f.name for f in files], "workers": n_workers, "seconds": round(seconds, 3),
            "clips_per_sec": round(len(rows) / seconds, 2) if seconds > 0 else None}


def failure(report: dict, params) -> str | None:
    """Why the stage must fail (strict mode or too many skipped), listing the videos; else None."""
    p = params.model_dump() if hasattr(params, "model_dump") else dict(params)
    skipped, total = report["skipped"], max(report["total"], 1)
    listing = "\n".join(f"  {s['path']}: {s['reason']}" for s in skipped)
    if skipped and p["strict"]:
        return f"extract.strict is true and {len(skipped)} video(s) were skipped:\n{listing}"
    if len(skipped) / total > p["max_skipped_fraction"]:
        return (f"{len(skipped)} of {report['total']} videos skipped, more than extract.max_skipped_fraction "
                f"{p['max_skipped_fraction']}:\n{listing}")
    if report["kept"] == 0:
        return f"no video could be extracted:\n{listing}"
    return None
