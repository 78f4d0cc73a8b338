"""pipeline.training.tasks: every registered task on tiny tensors (loss, decoding, metrics, fusion, score, records)
and stored with a model (a checkpoint round trip restores it)."""
import json
import typing

import pytest
import torch

import prernn
from pipeline.checks import validate_params
from pipeline.core.params import Params
from pipeline.report.evaluation import final_checkpoint
from pipeline.serve.model_file import load_model_file
from pipeline.training.tasks import get_task, list_tasks, task_from_entries, task_from_params
from pipeline.training.trainer import Trainer

B, T, K = 3, 4, 2  # clips, time steps, classes / landmarks


def _perfect(name: str):
    """(network outputs (B, T, outputs) that answer every clip exactly, targets, outputs per step)."""
    if name == "classification":
        y = torch.tensor([0, 1, 1])
        return torch.nn.functional.one_hot(y, K).float()[:, None].repeat(1, T, 1) * 20.0, y, K
    if name == "regression":
        y = torch.rand(B, T, K, 2, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1  # (B, T, K, 2) in [0.1, 0.9]
        return (y - 0.5).reshape(B, T, 2 * K), y, 2 * K
    raise AssertionError(f"no tiny data for task {name!r}: add it here")


def _readout(name: str) -> str:
    return get_task(name).readout(prernn.convert(prernn.create_backbone("vgg_mini", 2, input_size=16, width=8),
                                                 ["fc6"], "gru"))


TASKS = list_tasks()


def test_the_registry_is_what_params_accept():
    assert TASKS[0] == "classification" and "regression" in TASKS
    assert list(typing.get_args(Params.model_fields["task"].annotation)) == TASKS
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        get_task("nope")


@pytest.mark.parametrize("name", TASKS)
def test_loss_decoding_and_metrics(name):
    task = get_task(name)
    out, y, _ = _perfect(name)
    out = out.clone().requires_grad_()
    loss, outputs = task.loss(out, task.target(y), _readout(name))
    assert loss.dim() == 0 and torch.isfinite(loss) and not outputs.requires_grad
    loss.backward()
    assert out.grad is not None and torch.isfinite(out.grad).all()
    m = task.metrics(outputs, y)
    assert set(m) == set(task.metric_keys) and set(task.report_keys) <= set(m)
    worse_out = out.detach().clone()
    worse_out[0] = -worse_out[0]  # the first clip answered wrong (the other class; mirrored landmarks)
    worse_outputs = task.loss(worse_out, task.target(y), _readout(name))[1]
    worse = task.metrics(worse_outputs, y)
    best = m[task.score_metric]
    assert best == pytest.approx(1.0)
    assert worse[task.score_metric] < best if task.mode == "max" else worse[task.score_metric] > best
    # the epoch's train metric (sum over batches / clips) is the evaluation metric of the same outputs
    assert task.train_metric_sum(worse_outputs, y) / len(y) == pytest.approx(worse[task.train_metric], rel=1e-5)
    clip = task.clip_outputs(out.detach(), _readout(name))
    step = task.step_outputs(out.detach()[:, -1])
    assert clip.shape[0] == B and step.shape[0] == B and torch.isfinite(clip).all()


@pytest.mark.parametrize("name", TASKS)
def test_targets_of_another_task_are_refused(name):
    task = get_task(name)
    for other in TASKS:
        if other != name and get_task(other).needs_landmarks != task.needs_landmarks:
            with pytest.raises(ValueError, match=f"for task {name}"):
                task.target(_perfect(other)[1])


@pytest.mark.parametrize("name", TASKS)
def test_fusion_is_the_mean_of_the_streams(name):
    task = get_task(name)
    out, y, _ = _perfect(name)
    a = task.clip_outputs(out, _readout(name))
    b = task.clip_outputs(torch.zeros_like(out), _readout(name))
    torch.testing.assert_close(task.fuse([a, a]), a)
    torch.testing.assert_close(task.fuse([a, b]), (a + b) / 2)


@pytest.mark.parametrize("name", TASKS)
def test_score_key_mode_and_params_default(name):
    task = get_task(name)
    assert task.score == f"val_{task.score_metric}" and task.score in task.val_keys and task.mode in ("max", "min")
    raw = {"task": name}
    if task.needs_landmarks:
        raw["data"] = {"source": "synthetic_landmarks"}
    params = validate_params(raw)
    assert (params.select.metric, params.select.mode) == (task.score, task.mode)  # select defaults to the task's
    assert task_from_params(params) == task


@pytest.mark.parametrize("name", TASKS)
def test_records_are_json_and_name_the_answer(name):
    task = get_task(name)
    out, y, _ = _perfect(name)
    fused = task.clip_outputs(out, _readout(name))[0].numpy()
    answers = task.clip_answers(fused, list(range(10, 10 + T)))
    names = [f"c{i}" for i in range(K)] if name == "classification" else [f"p{i}_{a}" for i in range(K) for a in "xy"]
    for frame, answer in answers:
        record = task.record("v.avi", frame, answer, names, 2)
        assert json.loads(json.dumps(record))["video"] == "v.avi"
        assert task.table_row(record, 5, True, 5).startswith("v.avi")
    row = task.predict_row("v.avi", answers, names)
    assert list(row) and set(row) == {c for c, _, _ in task.predict_columns}
    assert set(task.predict_error_row("v.avi", "bad")) == set(row)
    assert task.predict_error_row("v.avi", "bad")["error"] == "bad" and row["error"] == ""


@pytest.mark.parametrize("name", TASKS)
def test_a_checkpoint_round_trip_restores_the_task(name, tmp_path):
    spec = {"normalize": "bbox", "threshold": 0.2} if get_task(name).section else None
    task = get_task(name, spec)
    _, y, outputs = _perfect(name)
    torch.manual_seed(0)
    bb = prernn.create_backbone("vgg_mini", outputs, input_size=16, width=8)
    model = prernn.convert(bb, ["fc7"], "gru")
    trainer = Trainer(model, lr_inherited=1e-3, lr_new=1e-3, task=task)
    torch.save(trainer.state_dict(), tmp_path / "trainer.pt")
    state = torch.load(tmp_path / "trainer.pt", weights_only=True)  # plain dicts: weights-only safe
    assert task_from_entries(state["task"]) == task
    Trainer(prernn.convert(bb, ["fc7"], "gru"), lr_inherited=1e-3, lr_new=1e-3, task=task).load_state_dict(state)
    other = next(get_task(n) for n in TASKS if get_task(n) != task)
    with pytest.raises(ValueError, match="checkpoint of task"):
        Trainer(prernn.convert(bb, ["fc7"], "gru"), lr_inherited=1e-3, lr_new=1e-3, task=other).load_state_dict(state)

    meta = {"class_names": [f"o{i}" for i in range(outputs)], "modalities": ["rgb"], "extract": {"frames": T},
            "normalization": {"rgb": {"mean": [0.5] * 3, "std": [0.2] * 3}}, **task.entries()}
    torch.save(final_checkpoint({"rgb": model}, meta), tmp_path / "final.pt")
    loaded = load_model_file(tmp_path / "final.pt")
    assert loaded.task == task and loaded.task.spec == task.spec
    restored = loaded.models["rgb"].state_dict()
    assert all(torch.equal(restored[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("name", TASKS)
def test_an_epoch_row_has_the_declared_record_keys_of_its_task(name):
    """`Trainer.fit_epoch` returns an EpochRow: every key it writes is declared there (the record cannot drift from
    what the stages read), and the task's own train / val keys are the ones present."""
    from pipeline.training.trainer import EpochRow

    spec = {"normalize": "bbox", "threshold": 0.2} if get_task(name).section else None
    task = get_task(name, spec)
    x, y, outputs = _perfect(name)
    torch.manual_seed(0)
    model = prernn.convert(prernn.create_backbone("vgg_mini", outputs, input_size=16, width=8), ["fc7"], "gru")
    feats = torch.randn(B, T, 8)  # (B, T, width): features entering fc7
    trainer = Trainer(model, lr_inherited=1e-3, lr_new=1e-3, task=task, start="fc7", batch_size=B)
    row = trainer.fit_epoch((feats, y), (feats, y))
    assert set(row) <= set(typing.get_type_hints(EpochRow)), set(row) - set(typing.get_type_hints(EpochRow))
    assert set(row) == {"epoch", "train_loss", f"train_{task.train_metric}", "clips_per_sec", "val_loss",
                        *task.val_keys, "epoch_seconds"}
    assert row["epoch"] == 1 and trainer.history == [row]
