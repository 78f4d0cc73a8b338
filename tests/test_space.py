"""pipeline.search.space: the size of the configuration space and its errors."""
import pytest

from pipeline.core.params import SearchParams
from pipeline.search.space import SpaceError, build_space, layer_combinations

VGG = ["fc6", "fc7"]
VGG_MINI = ["conv1", "conv2", "conv3", "fc6", "fc7"]  # prernn.candidate_layers; defaults fc6, fc7


def test_default_vgg_space_has_21_trials_with_unique_names():
    space = build_space(SearchParams(), VGG)
    assert len(space) == 3 * 3 + 2 * 3 + 3 * 2 == 21
    assert len({a["name"] for a in space}) == 21
    assert not any(a["cell"] == "vrnn" and a["sih"] for a in space)
    kinds = [a["kind"] for a in space]
    assert kinds.count("traditional") == 6
    assert {"prernn-lstm-sih-fc6+fc7", "prernn-vrnn-fc7", "traditional-gru-2"} <= {a["name"] for a in space}
    for a in space:
        assert a["num_layers"] == (len(a["layers"]) if a["kind"] == "prernn" else a["num_layers"])
        assert a["layers"] == [n for n in VGG if n in a["layers"]]  # forward order


def test_layer_combinations_default_and_explicit_order():
    assert layer_combinations(VGG) == [["fc6"], ["fc7"], ["fc6", "fc7"]]
    assert layer_combinations(["layer3_1"]) == [["layer3_1"]]
    assert layer_combinations(VGG, [["fc7", "fc6"]]) == [["fc6", "fc7"]]


def test_params_narrow_and_widen_the_space():
    narrow = build_space(SearchParams(cells=["gru"], sih=[True], layers=[["fc7"]], baselines=[]), VGG)
    assert [a["name"] for a in narrow] == ["prernn-gru-sih-fc7"]
    only_baselines = build_space(SearchParams(cells=["lstm"], sih=[False], layers=[["fc6"]], baselines=[1, 2]), VGG)
    assert [a["name"] for a in only_baselines] == ["prernn-lstm-fc6", "traditional-lstm-1", "traditional-lstm-2"]
    wider = build_space(SearchParams(), ["fc5", "fc6", "fc7"])
    assert len(wider) == 3 * 7 + 2 * 7 + 6


@pytest.mark.parametrize("kw, key", [
    ({"layers": [["fc8"]]}, "search.layers"),
    ({"layers": [[]]}, "search.layers"),
    ({"layers": []}, "search.layers"),
    ({"layers": [["fc6"], ["fc6"]]}, "search.layers"),
    ({"sih": [True]}, "search.sih"),
    ({"baselines": [1, 1]}, "search."),
])
def test_invalid_spaces_name_the_key(kw, key):
    with pytest.raises(SpaceError, match=key.replace(".", r"\.")):
        build_space(SearchParams(**kw), VGG)


def test_unknown_layer_error_lists_the_candidates():
    with pytest.raises(SpaceError, match=r"fc8.*allowed: \['fc6', 'fc7'\]"):
        build_space(SearchParams(layers=[["fc6", "fc8"]]), VGG)


def test_default_space_is_unchanged_when_the_backbone_offers_conv_candidates():
    """search.layers null combines the default candidates only: the shipped 21 trials of Table 1."""
    assert build_space(SearchParams(), VGG_MINI, VGG) == build_space(SearchParams(), VGG)
    assert layer_combinations(VGG_MINI, defaults=VGG) == [["fc6"], ["fc7"], ["fc6", "fc7"]]


def test_mixed_conv_and_fc_sets_and_all():
    sets = layer_combinations(VGG_MINI, [["fc6", "conv3"], ["conv1", "conv2", "fc7"]], defaults=VGG)
    assert sets == [["conv3", "fc6"], ["conv1", "conv2", "fc7"]]  # forward order
    space = build_space(SearchParams(cells=["lstm"], sih=[True], layers=[["fc6", "conv3"]], baselines=[]),
                        VGG_MINI, VGG)
    assert [a["name"] for a in space] == ["prernn-lstm-sih-conv3+fc6"] and space[0]["num_layers"] == 2
    every = layer_combinations(VGG_MINI, "all", defaults=VGG)
    assert len(every) == 2 ** 5 - 1 and ["conv1", "conv2", "conv3", "fc6", "fc7"] in every
    assert len({tuple(c) for c in every}) == len(every)
    resnet = layer_combinations(["layer1_1", "layer2_1", "layer3_1", "layer4_1"], "all", defaults=["layer4_1"])
    assert len(resnet) == 15 and layer_combinations(["layer1_1", "layer4_1"], defaults=["layer4_1"]) == [["layer4_1"]]


@pytest.mark.parametrize("max_layers,count", [(1, 5), (2, 5 + 10), (3, 5 + 10 + 10), (5, 31), (9, 31)])
def test_max_layers_bounds_the_combinations(max_layers, count):
    combos = layer_combinations(VGG_MINI, "all", defaults=VGG, max_layers=max_layers)
    assert len(combos) == count and max(len(c) for c in combos) == min(max_layers, 5)
    space = build_space(SearchParams(layers="all", max_layers=max_layers, baselines=[]), VGG_MINI, VGG)
    assert len(space) == 5 * count  # vrnn, lstm, lstm-sih, gru, gru-sih per combination
    assert layer_combinations(VGG_MINI, defaults=VGG, max_layers=max_layers)[:2] == [["fc6"], ["fc7"]]


def test_max_layers_refuses_a_listed_set_that_is_longer():
    with pytest.raises(SpaceError, match=r"search\.layers\.1: \['conv3', 'fc6', 'fc7'\]: 3 layers, more than "
                                         r"search\.max_layers 2"):
        build_space(SearchParams(layers=[["fc6"], ["conv3", "fc6", "fc7"]], max_layers=2), VGG_MINI, VGG)
    with pytest.raises(SpaceError, match=r"search\.layers: 'every'"):
        layer_combinations(VGG_MINI, "every")
