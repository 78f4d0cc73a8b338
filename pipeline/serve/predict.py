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
The model file's task (pipeline.training.tasks) says which.

Output: a table, or JSON lines (`--json`): {"video", "frame" (null in clip mode), "class", "probability",
"top_k": [{"class", "probability"}]}. Bad inputs print one line `prernn predict: <input>: <reason>` on stderr and
the others are still processed; exit status 1 when any input failed, 2 when the model cannot be used.

This module is the command's body (`run`); the pieces are modules of their own: `model_uri` (MODEL -> a local
final.pt), `model_file` (loading and checking it), `preprocessing`, `predictor` (clip mode), `stream` (stream
mode), `inputs` (INPUT expansion), `output` (table / JSON lines); `pipeline.serve.cli` parses the arguments.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

from pipeline.serve.errors import PredictError
from pipeline.serve.inputs import expand_inputs, input_name
from pipeline.serve.model_uri import resolve_model
from pipeline.serve.output import Table, emit
from pipeline.serve.predictor import Predictor


def run(args: argparse.Namespace) -> int:
    """`prernn predict` with parsed arguments (pipeline.serve.cli); the exit status."""
    torch.set_num_threads(max(1, args.threads))
    try:
        with tempfile.TemporaryDirectory(prefix="prernn-predict-") as tmp:
            predictor = Predictor.from_file(resolve_model(args.model, args.tracking_uri, tmp))
    except PredictError as e:
        print(f"prernn predict: {e}", file=sys.stderr)
        return 2
    inputs = expand_inputs(args.inputs, predictor.depth_pattern)
    names = [input_name(i) for i in inputs if not isinstance(i, tuple)]
    table = None if args.json else Table.for_inputs(
        predictor.task, names, predictor.class_names, args.stream or any(isinstance(i, int) for i in inputs),
        args.top_k)
    if table is not None:
        print(table.header(), flush=True)
    try:
        return predict_all(predictor, inputs, args, table)
    except BrokenPipeError:  # `prernn predict ... | head`: stop quietly
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        return 0


def predict_all(predictor: Predictor, inputs: list, args, table: Table | None) -> int:
    """Predict on every input (clip mode, or stream mode with --stream and for cameras), printing each record;
    one line on stderr per input that fails. 1 when any failed, 130 on Ctrl-C, else 0."""
    err = sys.stderr
    failed = 0
    for item in inputs:
        if isinstance(item, tuple):
            print(f"prernn predict: {item[1]}: {item[2]}", file=err)
            failed += 1
            continue
        name = input_name(item)
        try:
            if args.stream or isinstance(item, int):
                answers = predictor.stream(item, args.step, args.max_frames)
            else:
                answers = predictor.clip_answers(item)
            for frame, answer in answers:
                emit(predictor.record(name, frame, answer, args.top_k), table)
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
