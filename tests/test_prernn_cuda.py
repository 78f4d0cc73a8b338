"""On a CUDA machine: the fused kernels (cuDNN LSTM/RNN, TorchScript GRU) agree with the reference path.
Skipped where no GPU is present (the CPU paths are covered in test_prernn_layers.py)."""
import pytest
import torch

import prernn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backbone,layer", [("vgg_mini", ["fc6", "fc7"]), ("resnet_mini", ["layer3_1"])])
@pytest.mark.parametrize("cell,sih,reset", [("vrnn", False, "before"), ("lstm", False, "before"),
                                            ("lstm", True, "before"), ("gru", False, "before"),
                                            ("gru", True, "after")])
def test_cuda_fast_path_matches_reference(backbone, layer, cell, sih, reset):
    torch.manual_seed(0)
    bb = prernn.create_backbone(backbone, 3)
    m = prernn.convert(bb, layer, cell, sih, gru_reset=reset).double().cuda().eval()
    clips = torch.randn(2, 4, 3, 32, 32, dtype=torch.float64, device="cuda")
    out = m(clips)
    ref, _ = m.forward_reference(clips)
    assert torch.allclose(out, ref, atol=1e-8)
    state, steps = None, []
    for t in range(4):
        o, state = m.step(clips[:, t], state)
        steps.append(o)
    assert torch.allclose(torch.stack(steps, 1), out, atol=1e-8)
    m.train()
    m(clips).square().mean().backward()
    assert all(p.grad is not None for p in m.new_parameters())
