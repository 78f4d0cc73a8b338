"""Each execution path of ``prernn.cells.Recurrence`` against its step-by-step reference (``run_reference``), for
every form: torch's modules (``run_fused``: nn.LSTM / nn.RNN / nn.GRU with W_ih folded in) and the fast loop over
precomputed inputs (``run``, hand-written backward through time). Float64, tiny sizes: outputs, gradients equal to
autograd over the reference, ``torch.autograd.gradcheck`` of each path's own backward, and no warnings."""
import copy
import warnings

import pytest
import torch
import torch.nn.functional as F

from prernn.cells import Recurrence, _RecurrenceLoop

# (cell, sih, gru_reset, activation): every distinct form (activation only acts on the VRNN, gru_reset on the GRU)
FORMS = [("vrnn", False, "before", "relu"), ("vrnn", False, "before", "tanh"),
         ("lstm", False, "before", "tanh"), ("lstm", True, "before", "tanh"),
         ("gru", False, "before", "tanh"), ("gru", True, "before", "tanh"),
         ("gru", False, "after", "tanh"), ("gru", True, "after", "tanh")]
TORCH_FORMS = [("vrnn", False, "before", "relu"), ("vrnn", False, "before", "tanh"),
               ("lstm", False, "before", "tanh"), ("gru", False, "after", "tanh")]
B, T, H, D = 2, 4, 3, 5


def _recurrence(cell, sih, reset, act) -> Recurrence:
    torch.manual_seed(0)
    rec = Recurrence(cell, H, sih=sih, gru_reset=reset, activation=act).double()
    with torch.no_grad():
        for p in rec.parameters():  # non-zero b_hh, weights large enough to leave the linear regime
            p.copy_(torch.randn_like(p) * 0.6)
    return rec


def _assert_same_grads(out, ref, inputs):
    g = torch.randn_like(ref)
    got = torch.autograd.grad((out * g).sum(), inputs)
    want = torch.autograd.grad((ref * g).sum(), inputs)
    for a, b in zip(got, want):
        assert torch.allclose(a, b, rtol=0, atol=1e-10), (a - b).abs().max()


def test_torch_form_is_the_set_torch_modules_compute():
    assert [f for f in FORMS if _recurrence(*f).torch_form] == TORCH_FORMS


@pytest.mark.parametrize("cell,sih,reset,act", FORMS)
def test_fast_loop_matches_reference_and_gradchecks(cell, sih, reset, act):
    rec = _recurrence(cell, sih, reset, act)
    u = torch.randn(B, T, rec.input_size, dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rec.run(u)
        ref, _ = rec.run_reference(u)
        assert torch.allclose(out, ref, rtol=0, atol=1e-12)
        _assert_same_grads(out, ref, (u, rec.weight_hh, rec.bias_hh))
    form = (cell, sih, act == "relu", reset == "after")
    w, b = (p.detach().clone().requires_grad_() for p in (rec.weight_hh, rec.bias_hh))
    assert torch.autograd.gradcheck(lambda u, w, b: _RecurrenceLoop.apply(u, w, b, form), (u, w, b))


@pytest.mark.parametrize("cell,sih,reset,act", TORCH_FORMS)
def test_torch_module_path_matches_reference_and_gradchecks(cell, sih, reset, act):
    rec = _recurrence(cell, sih, reset, act)
    x = torch.randn(B, T, D, dtype=torch.float64, requires_grad=True)
    w_ih = (torch.randn(rec.input_size, D, dtype=torch.float64) * 0.6).requires_grad_()
    b_ih = (torch.randn(rec.input_size, dtype=torch.float64) * 0.6).requires_grad_()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = rec.run_fused(x, w_ih, b_ih)
        ref, _ = rec.run_reference(F.linear(x, w_ih, b_ih))
        assert torch.allclose(out, ref, rtol=0, atol=1e-12)
        _assert_same_grads(out, ref, (x, w_ih, b_ih, rec.weight_hh, rec.bias_hh))
    assert torch.autograd.gradcheck(lambda x, w, b: rec.run_fused(x, w, b), (x, w_ih, b_ih))


@pytest.mark.parametrize("cell,sih,reset,act", [f for f in FORMS if f not in TORCH_FORMS])
def test_run_fused_refuses_the_forms_torch_has_no_module_for(cell, sih, reset, act):
    rec = _recurrence(cell, sih, reset, act)
    x = torch.zeros(B, T, D, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"run_fused supports .*got cell="):
        rec.run_fused(x, torch.zeros(rec.input_size, D, dtype=torch.float64),
                      torch.zeros(rec.input_size, dtype=torch.float64))


@pytest.mark.parametrize("cell,reset", [("lstm", "before"), ("gru", "after")])
def test_torch_module_holds_no_state_of_its_own(cell, reset):
    """run_fused's torch module is not a submodule (the state dict, copies and conversions see W_hh and b_hh only)
    and runs with the weights of each call: other tensors, or the same ones changed in place (an optimizer step)."""
    rec = _recurrence(cell, False, reset, "tanh")
    x = torch.randn(B, T, D, dtype=torch.float64)
    w_ih, b_ih = torch.randn(rec.input_size, D, dtype=torch.float64), torch.randn(rec.input_size, dtype=torch.float64)
    out = rec.run_fused(x, w_ih, b_ih)
    assert list(rec.state_dict()) == ["weight_hh", "bias_hh"] and not list(rec.children())
    assert torch.equal(copy.deepcopy(rec).run_fused(x, w_ih, b_ih), out)
    other = w_ih.flip(0)
    assert torch.allclose(rec.run_fused(x, other, b_ih), rec.run_reference(F.linear(x, other, b_ih))[0], atol=1e-12)
    with torch.no_grad():
        w_ih.mul_(0.5)
        rec.weight_hh.mul_(-1)
    assert torch.allclose(rec.run_fused(x, w_ih, b_ih), rec.run_reference(F.linear(x, w_ih, b_ih))[0], atol=1e-12)
    low = rec.float()
    assert low.run_fused(x.float(), w_ih.float(), b_ih.float()).dtype == torch.float32


def test_gru_module_path_keeps_no_copy_of_the_weights():
    """The GRU runs on sign-flipped copies of its weights; after the call nothing holds them (nor, through their
    autograd graph, the weights they came from)."""
    import gc
    import weakref
    rec = _recurrence("gru", False, "after", "tanh")
    w_ih = torch.randn(3 * H, D, dtype=torch.float64, requires_grad=True)
    rec.run_fused(torch.randn(B, T, D, dtype=torch.float64), w_ih, torch.zeros(3 * H, dtype=torch.float64)).sum().backward()
    alive = weakref.ref(w_ih)
    del w_ih
    gc.collect()
    assert alive() is None


@pytest.mark.parametrize("cell,sih", [("lstm", True), ("gru", False)])
def test_fast_loop_under_autocast_runs_in_the_weights_dtype(cell, sih):
    rec = _recurrence(cell, sih, "before", "tanh").float()
    u = torch.randn(B, T, rec.input_size).bfloat16().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = rec.run(u)
    assert out.dtype == torch.float32
    assert torch.equal(out, rec.run(u.detach().float()))
    out.sum().backward()
    assert u.grad.dtype == torch.bfloat16 and rec.weight_hh.grad.dtype == torch.float32
