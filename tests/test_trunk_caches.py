"""pipeline.search.trunk_cache: one trunk cache per trial boundary (the lower of the lowest converted layer and the default
boundary), shared by the trials with that boundary and made from the same augmented clips."""
import pytest
import torch

import prernn
from pipeline.data.augment import ClipAugment
from pipeline.search.trunk_cache import space_boundaries, trial_boundary, trial_splits, trunk_caches
from pipeline.search.space import build_space
from pipeline.core.params import SearchParams
from tests.search_fixtures import toy_tensors


def test_boundaries_of_a_mixed_space():
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=8)
    search = SearchParams(cells=["gru"], sih=[False], layers=[["conv3", "fc6"], ["fc7"], ["conv2", "fc7"]],
                          baselines=[1])
    space = build_space(search, prernn.candidate_layers(bb), prernn.default_candidates(bb))
    got = {a["name"]: trial_boundary(bb, a) for a in space}
    # fc7 alone keeps the default boundary fc6 (fc6 stays fine-tuned, as in the default search)
    assert got == {"prernn-gru-conv3+fc6": "conv3", "prernn-gru-fc7": "fc6", "prernn-gru-conv2+fc7": "conv2",
                   "traditional-gru-1": "fc6"}
    assert space_boundaries(bb, space) == ["conv2", "conv3", "fc6"]
    assert trial_boundary(bb, {"kind": "prernn", "layers": []}) == "fc6"  # every layer reverted: the CNN itself
    assert space_boundaries(bb, build_space(SearchParams(), prernn.candidate_layers(bb),
                                            prernn.default_candidates(bb))) == ["fc6"]  # the default: one cache


def test_one_cache_per_boundary_from_the_same_augmented_clips():
    x, y = toy_tensors(n_per_class=2)  # (6, T, 3, 16, 16)
    bb = prernn.create_backbone("vgg_mini", 3, input_size=16, width=8).eval()
    data = {"train": torch.utils.data.TensorDataset(x, y), "val": torch.utils.data.TensorDataset(x, y)}
    caches = trunk_caches(bb, data, ["conv3", "fc6"],
                          train_augment=lambda: (ClipAugment(2, 0.2, torch.Generator().manual_seed(0)), 2))
    assert set(caches) == {"conv3", "fc6"}
    conv3, fc6 = caches["conv3"], caches["fc6"]
    assert conv3["train"].start == "conv3" and fc6["val"].start == "fc6"
    assert conv3["train"].x.shape == (12, 4, 32, 4, 4) and fc6["train"].x.shape == (12, 4, 64, 2, 2)
    with torch.no_grad():  # both caches hold the same augmented clips, cut at two boundaries
        above = bb.stages["conv3"](conv3["train"].x.flatten(0, 1)).unflatten(0, (12, 4))
    assert torch.allclose(above, fc6["train"].x, atol=1e-5)
    trial = {"name": "prernn-gru-conv3+fc6", "kind": "prernn", "layers": ["conv3", "fc6"]}
    assert trial_splits(caches, bb, trial) is conv3
    assert trial_splits(caches, bb, {"kind": "traditional", "layers": []}) is fc6
    with pytest.raises(KeyError, match=r"no trunk cache at 'conv1'.*cached: \['conv3', 'fc6'\]"):
        trial_splits(caches, bb, {"name": "c1", "kind": "prernn", "layers": ["conv1"]})
    raw = trunk_caches(bb, data, ["conv3", "fc6"], cache_trunk=False)
    assert list(raw) == [None] and raw[None]["train"].start is None
    assert trial_splits(raw, bb, trial) is raw[None]  # without the cache every trial shares the clips
    model = prernn.convert(bb, trial["layers"], "gru").eval()
    with torch.no_grad():  # a trial from its cache computes what it computes from the (same) clips
        assert torch.allclose(model(caches["conv3"]["val"].x, start="conv3"), model(x), atol=1e-5)
