"""The built-in synthetic gesture set: determinism, classes from motion, paired classes = time reversals."""
import hashlib

import numpy as np
import pytest

from pipeline.core.params import SyntheticParams
from pipeline.data.synthetic import PAIRS, classify, generate, render, sample_motion, write_dataset

SMALL = dict(classes=["swipe_left", "swipe_right", "rotate_cw"], clips_per_class=3, frames=6, size=16)


def _digest(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*.avi"))}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    a = _digest_of(tmp_path / "a", seed=3)
    b = _digest_of(tmp_path / "b", seed=3)
    c = _digest_of(tmp_path / "c", seed=4)
    assert len(a) == 2 * 3 * 3  # colour + depth per clip
    assert a == b
    assert a.keys() == c.keys() and a != c


def _digest_of(folder, seed):
    write_dataset(SyntheticParams(**SMALL, seed=seed), folder)
    return _digest(folder)


@pytest.mark.parametrize("name", list(PAIRS))
def test_sampled_motion_has_its_class_and_moves(name):
    rng = np.random.default_rng(0)
    for _ in range(5):
        m = sample_motion(name, rng)
        assert classify(m) == name
        rgb, depth = render(m, 8, 32)
        assert rgb.shape == (8, 32, 32, 3) and depth.shape == (8, 32, 32)
        assert rgb.dtype == np.uint8 and depth.dtype == np.uint8
        assert np.abs(rgb[0].astype(int) - rgb[-1]).sum() > 0  # the class is in the change over time
    if name in ("push", "pull"):
        first, last = int(depth[0].max()), int(depth[-1].max())
        assert (last < first) == (name == "push")  # push: moves away, depth value drops


@pytest.mark.parametrize("name", ["swipe_left", "swipe_up", "rotate_cw", "push"])
def test_paired_class_is_the_time_reversal_frame_for_frame(name):
    rng = np.random.default_rng(1)
    partner = {"swipe_left": "swipe_right", "swipe_up": "swipe_down", "rotate_cw": "rotate_ccw", "push": "pull"}[name]
    for _ in range(3):
        m = sample_motion(name, rng)
        r = m.reversed()
        assert classify(r) == partner
        rgb, depth = render(m, 9, 24)
        rgb_r, depth_r = render(r, 9, 24)
        np.testing.assert_array_equal(rgb[::-1], rgb_r)
        np.testing.assert_array_equal(depth[::-1], depth_r)
        # the same set of frames, so no single frame tells the two classes apart
        assert {f.tobytes() for f in rgb} == {f.tobytes() for f in rgb_r}


def test_generate_is_seeded_and_balanced():
    p = SyntheticParams(**SMALL, seed=0)
    a, b = generate(p), generate(p)
    assert a == b
    assert [c for c, _, _ in a] == [c for c in SMALL["classes"] for _ in range(3)]


def test_unknown_class_is_refused():
    with pytest.raises(ValueError, match="unknown class 'wave'"):
        sample_motion("wave", np.random.default_rng(0))
