"""On a CUDA machine: both fast paths (torch's modules, i.e. cuDNN, for the gate-dependent LSTM / VRNN /
reset-after GRU; the loop with a hand-written backward for the Eq. (3) GRU and SIH) agree with the reference path,
and train as on the CPU. Skipped where no GPU is present (the same code on the CPU: test_prernn_cells.py,
test_prernn_layers.py)."""
import warnings

import pytest
import torch

import prernn
from prernn.layers import FCRecurrent

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("backbone,layer", [("vgg_mini", ["fc6", "fc7"]), ("resnet_mini", ["layer3_1"]),
                                            ("vgg_mini", ["conv2", "conv3", "fc6"]), ("resnet_mini", ["layer1", "layer3_1"])])
@pytest.mark.parametrize("cell,sih,reset", [("vrnn", False, "before"), ("lstm", False, "before"),
                                            ("lstm", True, "before"), ("gru", False, "before"),
                                            ("gru", True, "before"), ("gru", False, "after"),
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


@pytest.mark.parametrize("cell,sih,reset", [("vrnn", False, "before"), ("lstm", False, "before"),
                                            ("gru", False, "after"), ("lstm", True, "before"),
                                            ("gru", False, "before")])
def test_cuda_training_steps_equal_the_cpu_and_warn_nothing(cell, sih, reset):
    """Four SGD steps of one FC layer on the GPU (moved to the CPU and back after two) and on the CPU (float64) end
    at the same weights. On CUDA the torch module compacts our weights into one cuDNN buffer on its first call
    after each move: the optimizer must keep updating them, and no 'weights are not part of single contiguous
    chunk' (or any other) warning may appear."""
    torch.manual_seed(0)
    layers = {}
    for dev in ("cpu", "cuda"):
        torch.manual_seed(0)
        layers[dev] = FCRecurrent.from_linear(torch.nn.Linear(12, 8), cell, sih=sih, gru_reset=reset,
                                              activation="relu").double().to(dev).train()
    x = torch.randn(4, 5, 12, dtype=torch.float64)
    for dev, layer in layers.items():
        opt = torch.optim.SGD(layer.parameters(), lr=0.1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for step in range(4):
                if step == 2:
                    layer.cpu().to(dev)  # the parameters' data move, the Parameter objects stay
                opt.zero_grad()
                layer(x.to(dev)).square().mean().backward()
                opt.step()
    for (name, a), (_, b) in zip(layers["cpu"].named_parameters(), layers["cuda"].named_parameters()):
        assert torch.allclose(a, b.cpu(), atol=1e-9), name


def test_raw_clips_normalised_on_the_gpu_equal_the_cpu_float_items(tmp_path):
    import numpy as np

    from pipeline.data.clipstore import ClipWriter
    from pipeline.data.dataset import ClipDataset
    from pipeline.training.trainer import batches

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
