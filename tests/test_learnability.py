"""compress.eval.learnability: known values of the depth-ambiguity floor, depth order and 2D error."""
import numpy as np
import pytest

from compress.eval.learnability import (
    BONES,
    bone_vectors,
    depth_flip_floor,
    depth_order_accuracy,
    flip_depths,
    rebuild,
    xy_error,
)


def poses(n=20, seed=0, depth=0.3):
    rng = np.random.default_rng(seed)
    joints = rng.normal(0, 0.4, (n, 14, 3))
    joints[..., 2] *= depth / 0.4
    return joints


def test_rebuild_inverts_bone_vectors():
    j = poses()
    root = j[:, [2, 3]].mean(axis=1)
    np.testing.assert_allclose(rebuild(root, bone_vectors(j)), j, atol=1e-12)
    assert len(BONES) == 14  # every joint is some bone's child exactly once
    assert sorted(c for _, c in BONES) == list(range(14))


def test_no_flip_is_exact_and_all_flips_mirror_depth():
    j = poses()
    rng = np.random.default_rng(1)
    np.testing.assert_allclose(flip_depths(j, 0.0, rng), j, atol=1e-12)
    mirrored = flip_depths(j, 1.0, rng)
    root = j[:, [2, 3]].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(mirrored[..., :2], j[..., :2], atol=1e-12)  # 2D untouched
    np.testing.assert_allclose(mirrored[..., 2] - root[..., 2], -(j[..., 2] - root[..., 2]), atol=1e-12)


def test_floor_is_zero_without_flips_and_grows_with_p():
    floor = depth_flip_floor(poses(60), (0.0, 0.1, 0.5))
    assert floor[0.0] == pytest.approx(0.0, abs=1e-6)
    assert 0 < floor[0.1] < floor[0.5]


def test_floor_of_flat_poses_is_zero_for_any_p():
    j = poses()
    j[..., 2] = 0.7  # every joint at one depth: flipping a zero depth changes nothing
    assert depth_flip_floor(j, (0.5,))[0.5] == pytest.approx(0.0, abs=1e-6)


def test_depth_order_of_truth_mirror_and_flat():
    j = poses()
    assert depth_order_accuracy(j, j) == 1.0
    assert depth_order_accuracy(flip_depths(j, 1.0, np.random.default_rng(0)), j) == 0.0
    flat = j.copy()
    flat[..., 2] = 0
    assert depth_order_accuracy(flat, j) == 0.0  # sign 0 never matches a bone deeper than min_dz
    with pytest.raises(ValueError, match="no bone"):
        depth_order_accuracy(flat, flat)


def test_xy_error_ignores_scale_and_depth_and_measures_offsets():
    j = poses()
    scaled = 2.5 * j
    scaled[..., 2] = 9.0
    assert xy_error(scaled, j) == pytest.approx(0.0, abs=1e-12)
    moved = j.copy()
    moved[:, 0, 0] += 0.14  # one joint of 14 off by 14 cm (the hips stay): about 1 cm mean, the rescaling spreads it
    assert 0.008 < xy_error(moved, j) < 0.02
    shifted = j + np.array([0.3, -0.2, 0.1])
    assert xy_error(shifted, j) == pytest.approx(0.0, abs=1e-12)
