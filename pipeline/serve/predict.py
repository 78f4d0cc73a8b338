"""`prernn predict MODEL INPUT...`: class predictions for new videos, per clip or frame by frame.

MODEL: `models/final.pt` (the evaluate stage's file, either layout of `pipeline.report.evaluation.final_checkpoint`), a
folder holding one (`models/`, a downloaded MLflow model), or an MLflow URI (`runs:/<run>/<path>`,
`models:/<name>/<version>`, `models:/<name>@<alias>`): the final.pt is taken from the model's artifacts
(the pyfunc "predictor" of `pipeline.serve.pyfunc`), else from its run's `final/final.pt`.
Loaded with `torch.load(weights_only=True)`: a file holding pickled code is refused, nothing of it runs.

INPUT: video files, folders of them (depth files `x_depth.avi` are the partners of `x_color.avi`, not inputs),
a frame folder (images only), or a camera index (`0`; stream mode).

Preprocessing is the training one, read from the model's metadata (`meta["extract"]`: frame size, resize mode,
sampling, flow method / preset / bound; `meta["normalization"]`; `meta["modalities"]`), through the extract
stage's code (`pipeline.data.video.read_clip` / `stream_frames`) and the dataset's `Normalize`.

- clip mode: T frames sampled as in training -> one prediction per video: the mean over streams of each stream's
  clip probabilities (`prernn.readout`: a recurrent model's last step, a frame model's time average), fused as
  evaluation fuses (`pipeline.report.evaluation.fuse`).
- stream mode (`--stream`): every `step`-th frame (default: the training stride for consecutive sampling, else 1)
  goes through `SequenceModel.step` (flow against the previous frame), the recurrent state carried; frame t
  prints what clip mode would say of frames 0..t (a recurrent model's step-t probabilities, a frame model's
  running mean; fused over streams), so on a video of exactly the training frames it equals clip mode.
  Memory is constant: a running mean, the recurrent state, and
  for 3D backbones the last L frames.

Regression models (task: regression, landmark alignment, claim 4): every frame prints its landmarks, K (x, y)
pairs in [0, 1] coordinates of the resized frame (`{"video", "frame", "landmarks": [[x, y], ...]}`): clip mode
the T sampled frames (frame = the decoded frame index), stream mode each streamed frame (not averaged over time).

Output: a table, or JSON lines (`--json`): {"video", "frame" (null in clip mode), "class", "probability",
"top_k": [{"class", "probability"}]}. Bad inputs print one line `prernn predict: <input>: <reason>` on stderr and
the others are still processed; exit status 1 when any input failed, 2 when the model cannot be used.
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import re
import sys
import tempfile
from collections import deque
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

import prernn

DEFAULT_DEPTH_PATTERN = ("_color", "_depth")


class PredictError(RuntimeError):
    """An input or a model that cannot be used; str(err) is the one-line reason."""


# ----------------------------------------------------------------------------------------------- model loading
def _check_checkpoint(ckpt, where: str) -> None:
    """Raise PredictError unless `ckpt` has one of the final.pt layouts."""
    if not isinstance(ckpt, dict):
        raise PredictError(f"{where}: not a prernn model file (holds a {type(ckpt).__name__}, expected the dict "
                           "written by the evaluate stage)")
    meta = ckpt.get("meta")
    if not isinstance(meta, dict):
        raise PredictError(f"{where}: not a prernn model file (no 'meta' dict; keys: {sorted(map(str, ckpt))})")
    streams = ckpt.get("streams")
    if streams is None and not ("config" in ckpt and "state_dict" in ckpt):
        raise PredictError(f"{where}: not a prernn model file (expected keys 'config' and 'state_dict', or "
                           f"'streams'; got {sorted(map(str, ckpt))})")
    missing = [k for k in ("class_names", "modalities", "extract", "normalization") if not meta.get(k)]
    if missing:
        raise PredictError(f"{where}: model metadata lacks {missing}; re-run the evaluate stage to write a "
                           "complete models/final.pt")


class Predictor:
    """The final model's streams plus the preprocessing they were trained with.

    `models`: {modality: SequenceModel in eval mode}; `meta`: final.pt's meta (class_names, normalization,
    extract, modalities, ...).
    """

    def __init__(self, models: dict, meta: dict, source: str = "model"):
        self.models, self.meta, self.source = models, meta, source
        self.modalities = list(models)
        self.class_names = list(meta["class_names"])
        self.task = meta.get("task", "classification")  # regression: the outputs are 2K landmark coordinates
        self.extract = dict(meta["extract"], modalities=self.modalities)
        self.depth_pattern = tuple(meta.get("depth_pattern") or DEFAULT_DEPTH_PATTERN)
        self.snippet = {m: (int(mod.config["backbone"].get("kwargs", {}).get("snippet", 4)) if mod.is_3d else None)
                        for m, mod in models.items()}
        from pipeline.data.dataset import Normalize

        norm = meta["normalization"]
        self.norm = {m: Normalize(norm[m]["mean"], norm[m]["std"]) for m in self.modalities}  # frames
        self.norm_clip = {m: Normalize(norm[m]["mean"], norm[m]["std"], snippet=bool(self.snippet[m]))
                          for m in self.modalities}  # clips as ClipDataset makes them

    @classmethod
    def from_file(cls, path) -> "Predictor":
        """Load a final.pt (weights_only: no pickled code runs); PredictError with the reason otherwise."""
        path = Path(path)
        if not path.is_file():
            raise PredictError(f"{path}: no such model file")
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - pickled code, not a torch file, truncated...
            raise PredictError(f"{path}: not a prernn model file ({_load_reason(err)})") from None
        _check_checkpoint(ckpt, str(path))
        meta = ckpt["meta"]
        streams = ckpt["streams"] if "streams" in ckpt else {meta["modalities"][0]: ckpt}
        models = {}
        for m, entry in streams.items():
            try:
                model = prernn.build_from_config(entry["config"])
                model.load_state_dict(entry["state_dict"])
            except Exception as err:  # noqa: BLE001
                raise PredictError(f"{path}: stream {m!r} cannot be rebuilt: {type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:200]}") from None
            models[m] = model.eval()
        if len(meta["class_names"]) != int(next(iter(models.values())).config["backbone"]["num_classes"]):
            raise PredictError(f"{path}: {len(meta['class_names'])} class names but the model has "
                               f"{next(iter(models.values())).config['backbone']['num_classes']} outputs")
        return cls(models, meta, str(path))

    # ------------------------------------------------------------------------------------------- inputs
    def depth_for(self, video: Path) -> Path | None:
        from pipeline.data.sources import depth_partner

        return depth_partner(Path(video), self.depth_pattern) if not Path(video).is_dir() else None

    def check_modalities(self, video) -> Path | None:
        """The depth partner when the model needs depth; PredictError when the input cannot provide a modality."""
        if "depth" not in self.modalities:
            return None
        depth = None if isinstance(video, int) else self.depth_for(video)
        if depth is None:
            c, d = self.depth_pattern
            raise PredictError(f"the model needs modality 'depth' (modalities {self.modalities}) but this input has "
                               f"no depth video (expected x{d}.ext beside a colour video named x{c}.ext)")
        return depth

    def _tensor(self, m: str, frames: np.ndarray) -> torch.Tensor:
        """(T, H, W, C) uint8 -> (T, C, H, W) [3D: (T, C, L, H, W)] normalised float32, as ClipDataset does."""
        from pipeline.data.dataset import snippet_index

        L = self.snippet[m]
        if L:
            frames = frames[snippet_index(len(frames), L)]  # (T, L, H, W, C)
        return self.norm_clip[m](frames)

    # ------------------------------------------------------------------------------------------- clip mode
    def clip_probs(self, video, depth_path=None) -> np.ndarray:
        """One video (+ optional explicit depth video) -> (K,) fused probabilities from T frames sampled as in training."""
        from pipeline.report.evaluation import fuse
        from pipeline.data.video import VideoError, read_clip

        depth = Path(depth_path) if depth_path and "depth" in self.modalities else self.check_modalities(video)
        try:
            clip = read_clip(Path(video), self.extract, depth_path=depth)
        except VideoError as err:
            raise PredictError(str(err)) from None
        probs = []
        with torch.no_grad():
            for m, model in self.models.items():
                x = self._tensor(m, clip[m])[None]  # (1, T, ...)
                probs.append(prernn.clip_output(model(x).softmax(-1), prernn.readout(model)))  # (1, K)
        return fuse(probs)[0].numpy()

    # ------------------------------------------------------------------------------------------- stream mode
    def default_step(self) -> int:
        return int(self.extract.get("stride", 1)) if self.extract.get("sampling") == "consecutive" else 1

    def _frames(self, video, step: int) -> Iterator[dict[str, np.ndarray]]:
        """{modality: (H, W, C) uint8} per streamed frame, through pipeline.data.video's streaming helper."""
        from pipeline.data.video import VideoError, stream_depth, stream_frames

        depth_path = self.check_modalities(video)
        depth = stream_depth(depth_path, self.extract, step=step) if depth_path else None
        source = _camera_frames(video, self.extract, step) if isinstance(video, int) else \
            stream_frames(Path(video), self.extract, step=step)
        try:
            for rgb, flow in source:
                out = {"rgb": rgb, "flow": flow}
                if depth is not None:
                    d = next(depth, None)
                    if d is None:
                        raise PredictError("the depth video has fewer frames than the colour video")
                    out["depth"] = d
                yield out
        except VideoError as err:
            raise PredictError(str(err)) from None

    def stream(self, video, step: int | None = None, max_frames: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (frame index, (K,) running-mean fused probabilities) for each streamed frame."""
        step = step or self.default_step()
        states = {m: None for m in self.models}
        current = {m: None for m in self.models}  # each stream's answer for the frames so far
        windows = {m: deque(maxlen=L) for m, L in self.snippet.items() if L}  # 3D: the last L frames
        readouts = {m: prernn.readout(model) for m, model in self.models.items()}
        n = 0
        for frames in self._frames(video, step):
            with torch.no_grad():  # not around the yield: grad mode must not leak into the caller
                for m, model in self.models.items():
                    x = self._tensor2d(m, frames[m])  # (C, H, W)
                    if m in windows:
                        w = windows[m]
                        while len(w) < w.maxlen - 1:  # the first frame repeated at the start, as in training
                            w.append(x)
                        w.append(x)
                        x = torch.stack(list(w), 1)  # (C, L, H, W)
                    out, states[m] = model.step(x[None], states[m])  # (1, K)
                    if self.task == "regression":  # this frame's landmarks (K, 2), no running mean
                        from pipeline.training.metrics import decode

                        current[m] = decode(out)[0]
                        continue
                    p = out.softmax(-1)[0]  # (K,)
                    if readouts[m] == "last":  # a recurrent model: its state after the frames so far
                        current[m] = p
                    else:  # a frame model: the running mean of its per-frame probabilities
                        total = p if n == 0 else current[m] * n + p
                        current[m] = total / (n + 1)
                probs = torch.stack(list(current.values())).mean(0).numpy()  # (K,) [(K, 2) landmarks] fused over streams
            n += 1
            yield (n - 1) * step, probs
            if max_frames and n >= max_frames:
                break
        if n == 0:
            raise PredictError("no frames")

    def _tensor2d(self, m: str, frame: np.ndarray) -> torch.Tensor:
        return self.norm[m](frame)  # (H, W, C) uint8 -> (C, H, W) float32

    # ------------------------------------------------------------------------------------------- results
    def clip_landmarks(self, video, depth_path=None) -> list[tuple[int, np.ndarray]]:
        """Regression: [(decoded frame index, (K, 2) landmarks)] for the T frames sampled as in training."""
        from pipeline.training.metrics import decode
        from pipeline.data.video import VideoError, read_clip, sample_indices

        depth = Path(depth_path) if depth_path and "depth" in self.modalities else self.check_modalities(video)
        info = {}
        try:
            clip = read_clip(Path(video), self.extract, depth_path=depth, info=info)
        except VideoError as err:
            raise PredictError(str(err)) from None
        with torch.no_grad():
            pts = torch.stack([decode(model(self._tensor(m, clip[m])[None]))[0]  # (T, K, 2)
                               for m, model in self.models.items()]).mean(0).numpy()
        idx = sample_indices(info["decoded_frames"], self.extract["frames"], self.extract["sampling"],
                             self.extract["stride"])
        return [(int(i), p) for i, p in zip(idx, pts)]

    def record(self, video: str, frame, probs: np.ndarray, k: int) -> dict:
        if self.task == "regression":  # probs: (K, 2) landmarks
            return {"video": video, "frame": frame,
                    "landmarks": [[round(float(x), 5), round(float(y), 5)] for x, y in np.asarray(probs)]}
        order = np.argsort(-probs, kind="stable")[:max(1, k)]
        return {"video": video, "frame": frame, "class": self.class_names[int(order[0])],
                "probability": float(probs[order[0]]),
                "top_k": [{"class": self.class_names[int(i)], "probability": float(probs[i])} for i in order]}


def _load_reason(err: Exception) -> str:
    """torch.load's long message -> a short reason."""
    msg = str(err)
    found = re.search(r"Unsupported global: GLOBAL (\S+)", msg)
    if found:
        return (f"it holds pickled code or objects ({found.group(1)}) that torch.load(weights_only=True) refuses; "
                "nothing of it was run")
    if "Weights only load failed" in msg or isinstance(err, pickle.UnpicklingError):
        return "not a PyTorch weights file"
    return (msg.strip().splitlines() or [type(err).__name__])[0][:160]


def _camera_frames(index: int, p: dict, step: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """pipeline.data.video.stream_capture over camera `index`."""
    import cv2

    from pipeline.data.video import stream_capture

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)  # our one line says it
    try:
        cap = cv2.VideoCapture(index)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if not cap.isOpened():
        cap.release()
        raise PredictError(f"camera {index} cannot be opened")
    yield from stream_capture(cap, p, step=step)


# ----------------------------------------------------------------------------------------------- MODEL, INPUT
def resolve_model(spec: str, tracking_uri: str | None = None, workdir: str | Path | None = None) -> Path:
    """MODEL argument -> a local final.pt path (MLflow URIs are downloaded into `workdir`)."""
    if spec.startswith(("runs:/", "models:/")):
        return _mlflow_final(spec, tracking_uri, workdir)
    path = Path(spec)
    if path.is_dir():
        found = sorted(path.rglob("final.pt"), key=lambda p: (len(p.parts), str(p)))
        if not found:
            raise PredictError(f"{path}: folder holds no final.pt (expected the evaluate stage's models/ folder "
                               "or a downloaded MLflow model)")
        return found[0]
    if not path.exists():
        raise PredictError(f"{path}: no such model file, folder or MLflow URI (runs:/..., models:/...)")
    return path


def _mlflow_final(uri: str, tracking_uri: str | None, workdir) -> Path:
    import mlflow

    from pipeline.core import tracking
    resolved = tracking.resolve_tracking_uri(tracking_uri)[0]
    mlflow.set_tracking_uri(resolved)
    mlflow.set_registry_uri(resolved)
    dst = Path(workdir or tempfile.mkdtemp(prefix="prernn-predict-"))
    try:
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst / "model")))
        found = sorted(local.rglob("final.pt"), key=lambda p: len(p.parts)) if local.is_dir() else \
            ([local] if local.name.endswith(".pt") else [])
        if found:
            return found[0]
        run_id = mlflow.models.get_model_info(uri).run_id  # a pytorch-flavour model: its run holds final/final.pt
        return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"runs:/{run_id}/final/final.pt",
                                                        dst_path=str(dst / "run")))
    except PredictError:
        raise
    except Exception as err:  # noqa: BLE001 - unknown run / model / version, unreachable server
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
        raise PredictError(f"{uri}: cannot fetch the model from MLflow ({resolved}): {first}") from None


def expand_inputs(items: list[str], depth_pattern=DEFAULT_DEPTH_PATTERN) -> list:
    """INPUT arguments -> list of Path (video or frame folder) | int (camera) | ("error", item, reason)."""
    from pipeline.data.paths import IMAGE_EXTS, VIDEO_EXTS

    out = []
    for item in items:
        path = Path(item)
        if item.isdigit() and not path.exists():
            out.append(int(item))
        elif path.is_dir():
            videos = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS
                            and not (p.stem.endswith(depth_pattern[1]) and len(p.stem) > len(depth_pattern[1])))
            if videos:
                out += videos
            elif any(p.suffix.lower() in IMAGE_EXTS for p in path.iterdir()):
                out.append(path)  # a frame folder: one video
            else:
                out.append(("error", item, f"folder holds no videos ({', '.join(VIDEO_EXTS)}) or frames"))
        else:
            out.append(path)
    return out


# ----------------------------------------------------------------------------------------------- CLI
def _fmt_row(r: dict, layout: tuple[int, bool, int]) -> str:
    width, with_frame, cw = layout
    if "landmarks" in r:
        frame = f"{'-' if r['frame'] is None else r['frame']:>7} "
        return f"{r['video']:<{width}} {frame}" + " ".join(f"{x:.3f},{y:.3f}" for x, y in r["landmarks"])
    top = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top_k"])
    frame = f"{'-' if r['frame'] is None else r['frame']:>7} " if with_frame else ""
    return f"{r['video']:<{width}} {frame}{r['class']:<{cw}} {r['probability']:>6.3f}  {top}"


def run(args: argparse.Namespace) -> int:
    err = sys.stderr
    torch.set_num_threads(max(1, args.threads))
    try:
        with tempfile.TemporaryDirectory(prefix="prernn-predict-") as tmp:
            predictor = Predictor.from_file(resolve_model(args.model, args.tracking_uri, tmp))
    except PredictError as e:
        print(f"prernn predict: {e}", file=err)
        return 2
    stream = args.stream
    inputs = expand_inputs(args.inputs, predictor.depth_pattern)
    names = [f"camera:{i}" if isinstance(i, int) else str(i) for i in inputs if not isinstance(i, tuple)]
    layout = (max([5] + [len(n) for n in names]), stream or any(isinstance(i, int) for i in inputs),
              max([5] + [len(c) for c in predictor.class_names]))
    if not args.json:
        frame = f"{'frame':>7} " if layout[1] else ""
        if predictor.task == "regression":
            print(f"{'video':<{layout[0]}} {'frame':>7} landmarks x,y (0-1 of the frame)", flush=True)
        else:
            print(f"{'video':<{layout[0]}} {frame}{'class':<{layout[2]}} {'prob':>6}  top-{args.top_k}", flush=True)
    try:
        return _predict_all(predictor, inputs, args, layout)
    except BrokenPipeError:  # `prernn predict ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def _predict_all(predictor: Predictor, inputs: list, args, layout) -> int:
    err, stream = sys.stderr, args.stream
    failed = 0
    for item in inputs:
        if isinstance(item, tuple):
            print(f"prernn predict: {item[1]}: {item[2]}", file=err)
            failed += 1
            continue
        name = f"camera:{item}" if isinstance(item, int) else str(item)
        try:
            if stream or isinstance(item, int):
                for frame, probs in predictor.stream(item, args.step, args.max_frames):
                    _emit(predictor.record(name, frame, probs, args.top_k), args.json, layout)
            else:
                if predictor.task == "regression":
                    for frame, pts in predictor.clip_landmarks(item):
                        _emit(predictor.record(name, frame, pts, args.top_k), args.json, layout)
                else:
                    _emit(predictor.record(name, None, predictor.clip_probs(item), args.top_k), args.json, layout)
        except PredictError as e:
            print(f"prernn predict: {name}: {e}", file=err)
            failed += 1
        except BrokenPipeError:
            raise
        except KeyboardInterrupt:
            print(f"prernn predict: {name}: interrupted", file=err)
            return 130
        except Exception as e:  # noqa: BLE001 - one bad input must not stop the others
            print(f"prernn predict: {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", file=err)
            failed += 1
    return 1 if failed else 0


def _emit(record: dict, as_json: bool, layout) -> None:
    print(json.dumps(record) if as_json else _fmt_row(record, layout), flush=True)


def add_predict_parser(subparsers) -> argparse.ArgumentParser:
    """Register `prernn predict` on the `prernn` command's subparsers."""
    p = subparsers.add_parser("predict", help="predict the class of videos (per clip, or frame by frame)",
                              description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="models/final.pt, a folder holding one, or an MLflow URI (runs:/..., models:/...)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, folders of videos, or a camera index")
    p.add_argument("--stream", action="store_true", help="frame by frame through the recurrent layers (step)")
    p.add_argument("--step", type=int, default=None,
                   help="stream every N-th frame (default: the training stride for consecutive sampling, else 1)")
    p.add_argument("--max-frames", type=int, default=None, help="stream mode: stop after this many frames")
    p.add_argument("--top-k", type=int, default=3, help="classes listed per prediction (default 3)")
    p.add_argument("--json", action="store_true", help="JSON lines: video, frame, class, probability, top_k")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: MLFLOW_TRACKING_URI, "
                   "else sqlite:///mlflow.db)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    p.set_defaults(func=run)
    return p
