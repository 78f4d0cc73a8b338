"""On a CUDA machine: the fused kernels (cuDNN LSTM/RNN, TorchScript GRU) agree with the reference path.
Skipped where no GPU is present (the CPU paths are covered in test_prernn_layers.py)."""
import pytest
import torch

import prernn

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backbone,layer", [("vgg_mini", ["fc6", "fc7"]), ("resnet_mini", ["layer3_1"]),
                                            ("vgg_mini", ["conv2", "conv3", "fc6"]), ("resnet_mini", ["layer1", "layer3_1"])])
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


def test_raw_clips_normalised_on_the_gpu_equal_the_cpu_float_items(tmp_path):
    import numpy as np

    from pipeline.clipstore import ClipWriter
    from pipeline.dataset import ClipDataset
    from pipeline.train import batches

    rng = np.random.default_rng(0)
    w = ClipWriter(tmp_path, ["rgb"], 4, 8, 1 << 20, splits=("train",))
    for i in range(6):
        w.add("train", {"rgb": rng.integers(0, 256, (4, 8, 8, 3), dtype=np.uint8)}, i % 2, f"v{i}", f"v{i}")
    w.finish({"prernn.class_names": ["a", "b"], "prernn.modalities": ["rgb"], "prernn.extract": {"frames": 4, "size": 8},
              "prernn.normalization": {"rgb": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}})
    raw, ref = ClipDataset(tmp_path, "train", "rgb", raw=True), ClipDataset(tmp_path, "train", "rgb")
    got = torch.cat([x.cpu() for x, _ in batches(raw, 4, torch.device("cuda"))])  # pinned, non-blocking, on the GPU
    want = torch.stack([ref[i][0] for i in range(len(ref))])
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-6)
