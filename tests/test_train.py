"""pipeline.training.trainer: the loop learns a separable toy set, is reproducible and resumable, stops on NaN."""
import math

import pytest
import torch

import prernn
from pipeline.search.trunk_cache import trunk_features
from pipeline.training.tasks import Classification, clip_loss_and_probs
from pipeline.training.trainer import (NonFiniteLoss, Trainer, epochs_to_fraction, fit, param_groups, seed_everything,
                                       summarize)
from tests.search_fixtures import toy_tensors

torch.set_num_threads(1)


def _setup(seed=0):
    seed_everything(seed)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=32)
    x, y = toy_tensors(n_per_class=6)
    feats = trunk_features(bb, torch.utils.data.TensorDataset(x, y), prernn.trunk_boundary(bb))
    model = prernn.convert(bb, ["fc6", "fc7"], "gru")
    return model, feats


def _trainer(model, start, seed=0):
    return Trainer(model, lr_inherited=3e-3, lr_new=1e-2, batch_size=6, seed=seed, start=start, task=Classification())


def test_sequence_model_learns_separable_toy_set():
    model, feats = _setup()
    trainer = _trainer(model, feats.start)
    before = trainer.evaluate(feats).loss
    history = fit(trainer, feats, feats, epochs=6)
    assert [r["epoch"] for r in history] == list(range(1, 7))
    assert history[-1]["val_acc"] == 1.0
    assert history[-1]["val_loss"] < before / 2
    assert all(r["clips_per_sec"] > 0 for r in history)


def test_frame_model_learns_too():
    seed_everything(0)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=32)
    x, y = toy_tensors(n_per_class=4)
    frames, labels = x.reshape(-1, *x.shape[2:]), y.repeat_interleave(x.shape[1])
    trainer = Trainer(bb, lr_inherited=3e-3, lr_new=3e-3, batch_size=16, seed=0, task=Classification())
    history = fit(trainer, (frames, labels), (frames, labels), epochs=4)
    assert history[-1]["val_acc"] > 0.9


def test_same_seed_same_metrics_and_resume_matches_unbroken_run():
    model, feats = _setup()
    full = fit(_trainer(model, feats.start), feats, feats, epochs=3)
    model2, _ = _setup()
    again = fit(_trainer(model2, feats.start), feats, feats, epochs=3)
    strip = lambda h: [{k: v for k, v in r.items() if k not in ("clips_per_sec", "epoch_seconds")} for r in h]  # noqa: E731
    assert strip(full) == strip(again)
    model3, _ = _setup()
    first = _trainer(model3, feats.start)
    fit(first, feats, feats, epochs=2)
    state = first.state_dict()
    model4, _ = _setup(seed=5)  # different init: everything must come from the checkpoint
    resumed = _trainer(model4, feats.start)
    resumed.load_state_dict(state)
    assert strip(fit(resumed, feats, feats, epochs=3)) == strip(full)


def test_two_param_groups_inherited_and_new():
    model, _ = _setup()
    groups = param_groups(model, 1e-4, 1e-2)
    assert [(g["name"], g["lr"]) for g in groups] == [("inherited", 1e-4), ("new", 1e-2)]
    new_ids = {id(p) for p in model.new_parameters()}
    assert new_ids and new_ids <= {id(p) for p in groups[1]["params"]}
    assert not new_ids & {id(p) for p in groups[0]["params"]}


def test_nan_loss_raises_non_finite():
    model, feats = _setup()
    with torch.no_grad():
        next(iter(model.new_parameters())).fill_(float("nan"))
    with pytest.raises(NonFiniteLoss, match="epoch 1"):
        _trainer(model, feats.start).train_epoch(feats)


def test_loss_is_mean_over_time_steps_and_accuracy_uses_mean_probabilities():
    logits = torch.tensor([[[4.0, 0.0], [0.0, 1.0], [0.0, 1.0]]])  # (B=1, T=3, K=2)
    y = torch.tensor([0])
    loss, probs = clip_loss_and_probs(logits, y)
    per_step = torch.nn.functional.cross_entropy(logits[0], torch.zeros(3, dtype=torch.long))
    assert math.isclose(loss.item(), per_step.item(), rel_tol=1e-6)
    assert probs.argmax(-1).item() == 0  # mean probability favours class 0 though 2 of 3 steps vote 1


def test_epochs_to_95_and_summary():
    hist = [{"epoch": 1, "val_acc": 0.5, "val_loss": 2.0, "clips_per_sec": 10.0},
            {"epoch": 2, "val_acc": 0.96, "val_loss": 1.0, "clips_per_sec": 20.0},
            {"epoch": 3, "val_acc": 1.0, "val_loss": 0.5, "clips_per_sec": 30.0}]
    assert epochs_to_fraction(hist, "val_acc") == 2
    assert epochs_to_fraction(hist, "val_acc", fraction=1.0) == 3
    auc = [{"epoch": 1, "val_auc": 0.1}, {"epoch": 2, "val_auc": 0.5}]  # a regression history: no val_acc
    assert epochs_to_fraction(auc, "val_auc") == 2 and epochs_to_fraction(auc, "val_acc") is None
    assert epochs_to_fraction([], "val_acc") is None
    s = summarize(hist, Classification())
    assert (s.at_best("val_acc"), s.at_best("val_loss"), s.best_epoch, s.epochs_to_95, s.clips_per_sec) == \
        (1.0, 0.5, 3, 2, 20.0)
    assert s.at_best("val_auc") is None and summarize([], Classification()).best_epoch is None


def test_a_recurrent_model_is_read_at_its_last_step_a_frame_model_over_time():
    """Readout: the loss and prediction of a recurrent model come from its last step only; a frame model averages."""
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=8)
    assert prernn.readout(prernn.convert(bb, ["fc6"], "gru")) == "last"
    assert prernn.readout(prernn.traditional(bb, "lstm")) == "last"
    assert prernn.readout(prernn.frame_model(bb)) == "mean"
    logits = torch.zeros(2, 3, 3)
    logits[:, -1, 1] = 5.0  # only the last step says class 1
    y = torch.tensor([1, 1])
    loss_last, p_last = clip_loss_and_probs(logits, y, "last")
    loss_mean, p_mean = clip_loss_and_probs(logits, y, "mean")
    assert torch.allclose(p_last, logits[:, -1].softmax(-1)) and torch.allclose(p_mean, logits.softmax(-1).mean(1))
    assert loss_last < loss_mean  # the early, uncertain steps do not count for the recurrent readout
