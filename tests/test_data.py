"""Data: npz readers and defaults, SPIN crops and augmentation, the mixed set, the HDF5 cache.

Every test builds a tiny SPIN-layout root in tmp_path (a few small images and npz files written here).
"""
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from compress.constants import IMG_NORM_MEAN, IMG_NORM_STD, J24_FLIP_PERM, J49_FLIP_PERM
from compress.data import crop as C
from compress.data.cache import build_cache, cache_is_valid, source_fingerprint
from compress.data.annotations import load_annotations, npz_path
from compress.data.datasets import BaseDataset, MixedDataset, mix_weights
from compress.errors import UserError

RES = 32


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _texture(h, w, seed):
    """A smooth random RGB texture (so bilinear resampling is well conditioned)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(h // 8 + 2, w // 8 + 2, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR))


def _write_set(root, npz_name, folder, n, *, seed, fields=("part",), size=(90, 120)):
    """n images of `size` (H, W) and an npz with imgname/center/scale plus the requested fields."""
    rng = np.random.default_rng(seed)
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    names = []
    for i in range(n):
        name = f"images/im{i:04d}.png"
        Image.fromarray(_texture(*size, seed * 100 + i)).save(root / folder / name)
        names.append(name)
    h, w = size
    data = {"imgname": np.array(names), "center": np.stack([rng.uniform(0.4, 0.6, n) * w,
                                                          rng.uniform(0.4, 0.6, n) * h], 1),
            "scale": rng.uniform(0.25, 0.4, n)}
    part = np.concatenate([rng.uniform(20, 80, (n, 24, 2)), np.ones((n, 24, 1))], axis=2)
    extra = {
        "part": part, "openpose": np.concatenate([rng.uniform(20, 80, (n, 25, 2)), rng.uniform(0, 1, (n, 25, 1))], 2),
        "S": np.concatenate([rng.normal(0, 0.3, (n, 24, 3)), np.ones((n, 24, 1))], axis=2),
        "pose": rng.normal(0, 0.3, (n, 72)), "shape": rng.normal(0, 1, (n, 10)), "has_smpl": np.ones(n),
        "gender": np.array(["m", "f"] * n)[:n],
        "maskname": np.array([f"lsp/im{i:04d}_segmentation.png" for i in range(n)]),
        "partname": np.array([f"lsp/im{i:04d}_part_segmentation.png" for i in range(n)]),
    }
    data.update({k: extra[k] for k in fields})
    (root / "dataset_extras").mkdir(exist_ok=True)
    np.savez(root / "dataset_extras" / f"{npz_name}.npz", **data)
    return data


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    r.mkdir()
    _write_set(r, "h36m_train", "h36m", 6, seed=1, fields=("part", "S"))
    _write_set(r, "lsp_dataset_original_train", "lsp_original", 4, seed=2, fields=("part",))
    _write_set(r, "mpii_train", "mpii", 2, seed=3, fields=("part", "openpose"))
    _write_set(r, "coco_2014_train", "coco", 6, seed=4, fields=("part", "openpose"))
    _write_set(r, "mpi_inf_3dhp_train", "mpi_inf_3dhp", 3, seed=5, fields=("part", "openpose", "S", "pose",
                                                                         "shape", "has_smpl"))
    _write_set(r, "3dpw_test", "3dpw", 3, seed=6, fields=("pose", "shape", "gender"))
    _write_set(r, "lsp_dataset_test", "lsp", 2, seed=7, fields=("part", "maskname", "partname"))
    return r


def _denorm(img):
    """(3, R, R) normalised tensor -> (R, R, 3) float pixel values 0..255."""
    x = img.numpy().transpose(1, 2, 0) * np.array(IMG_NORM_STD) + np.array(IMG_NORM_MEAN)
    return x * 255.0


# ----------------------------------------------------------------------------------------------- crop geometry


def test_crop_of_a_known_pattern_lands_where_expected():
    img = np.zeros((100, 200, 3), np.uint8)
    img[50:70, 100:120] = 255  # a 20 px white square, pixels x 100..119, y 50..69
    # box of 40 px around (110, 60) at 40 px: 1 crop px per image px, square at 10..29
    crop = C.crop_image(img, (110, 60), 0.2, 40)
    expected = np.zeros((40, 40, 3), np.uint8)
    expected[10:30, 10:30] = 255
    np.testing.assert_array_equal(crop, expected)
    # box of 80 px at 40 px (factor-2 prefilter): the square is the crop's 15..24
    crop = C.crop_image(img, (110, 60), 0.4, 40)
    expected = np.zeros((40, 40, 3), np.uint8)
    expected[15:25, 15:25] = 255
    np.testing.assert_array_equal(crop, expected)
    # a box half outside the image is zero-filled, not shifted
    crop = C.crop_image(img, (0, 60), 0.2, 40)
    assert crop[:, :20].max() == 0


def test_rotation_matches_spin_direction_and_keypoints_follow():
    img = np.zeros((100, 100, 3), np.uint8)
    img[45:55, 70:80] = 255  # right of the centre (50, 50)
    matrix = C.crop_matrix((50, 50), 0.5, 100, rot=90)
    crop = C.warp(img, matrix, 100)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    # SPIN rotates the crop by +rot counter-clockwise on screen: right of centre -> above centre
    assert abs(xs.mean() - 49.5) < 0.6 and abs(ys.mean() - 24.5) < 0.6
    kp = C.transform_points(np.array([[75.0, 50.0]]), matrix)[0]
    np.testing.assert_allclose(kp, [xs.mean() + 0.5, ys.mean() + 0.5], atol=0.6)


@pytest.mark.parametrize("rot", [0.0, 30.0, -50.0])
def test_keypoints_land_on_their_pixels_under_scale_and_rotation(rot):
    img = np.zeros((120, 160, 3), np.uint8)
    kp_px = np.array([[40.5, 30.5], [100.5, 80.5], [120.5, 40.5]])
    for x, y in kp_px:
        img[int(y) - 2:int(y) + 3, int(x) - 2:int(x) + 3] = 255  # 5x5 markers centred on the keypoints
    center, scale, res = (80, 60), 0.7, 64
    matrix = C.crop_matrix(center, scale, res, rot)
    crop = C.warp(img, matrix, res, prefilter=C.reduce_factor(200 * scale, res))
    kp = C.keypoints_to_crop(np.c_[kp_px, np.ones(3)], matrix, res, flip=False, perm=[0, 1, 2])
    u = (kp[:, :2] + 1) * res / 2  # normalised -> crop pixel coordinates (pixel centres at +0.5)
    for x, y in u:
        assert crop[int(y), int(x), 0] > 40  # a marker pixel (blurred by the 2.2x downscale)
    assert crop.astype(int).sum() > 0


def test_flip_consistency_image_keypoints_pose_and_3d():
    rng = np.random.default_rng(0)
    kp = np.c_[rng.uniform(-1, 1, (49, 2)), rng.uniform(0, 1, 49)]
    twice = C.flip_keypoints(C.flip_keypoints(kp, J49_FLIP_PERM), J49_FLIP_PERM)
    np.testing.assert_array_equal(twice, kp)
    pose = rng.normal(0, 0.5, 72).astype(np.float32)
    np.testing.assert_allclose(C.augment_pose(C.augment_pose(pose, 0, flip=True), 0, flip=True), pose, atol=1e-6)
    flipped = C.augment_pose(pose, 0, flip=True)
    np.testing.assert_allclose(flipped[3:6], pose[6:9] * [1, -1, -1], atol=1e-6)  # left hip <- right hip mirrored
    S = np.c_[rng.normal(0, 0.3, (24, 3)), np.ones(24)]
    fS = C.rotate_joints3d(S, 0, flip=True)
    np.testing.assert_allclose(fS[:, 0], -S[J24_FLIP_PERM, 0], atol=1e-6)


def test_rotation_of_3d_joints_and_global_orientation_matches_the_image():
    rng = np.random.default_rng(1)
    S = np.c_[rng.normal(0, 0.3, (24, 3)), np.ones(24)]
    rot = 35.0
    lin = C.crop_matrix((0, 0), 1.0, 200, rot)[:2, :2]  # the image rotation (scale 1 at 200 px)
    rS = C.rotate_joints3d(S, rot, flip=False)
    np.testing.assert_allclose(rS[:, :2], S[:, :2] @ lin.T, atol=1e-5)  # orthographic projection rotates alike
    np.testing.assert_allclose(rS[:, 2], S[:, 2], atol=1e-6)
    pose = np.zeros(72)
    pose[:3] = [0.3, -1.2, 0.5]
    out = C.augment_pose(pose, rot, flip=False)
    Rz = np.eye(3)
    Rz[:2, :2] = lin
    np.testing.assert_allclose(C._aa_to_matrix(out[:3]), Rz @ C._aa_to_matrix(pose[:3]), atol=1e-5)


def test_augmentation_sampling_matches_spin_ranges():
    rng = np.random.default_rng(0)
    augs = [C.sample_augmentation(rng) for _ in range(4000)]
    flips = np.mean([a.flip for a in augs])
    rots = np.array([a.rot for a in augs])
    scs = np.array([a.sc for a in augs])
    pns = np.array([a.pn for a in augs])
    assert abs(flips - 0.5) < 0.03
    assert abs(np.mean(rots == 0) - 0.6) < 0.03 and np.abs(rots).max() <= 60
    assert 0.75 <= scs.min() and scs.max() <= 1.25 and abs(np.mean(scs == 1.25) - 0.1587) < 0.03
    assert 0.6 <= pns.min() and pns.max() <= 1.4 and abs(pns.mean() - 1.0) < 0.02


# ----------------------------------------------------------------------------------------------- readers


def test_annotations_defaults_and_fields(root):
    h36m = load_annotations(root, "h36m", is_train=True)
    assert h36m.has_pose_3d == 1 and h36m.keypoints.shape == (6, 49, 3)
    assert not h36m.keypoints[:, :25].any() and not h36m.has_smpl.any() and (h36m.gender == -1).all()
    pw3d = load_annotations(root, "3dpw", is_train=False)
    assert pw3d.has_smpl.tolist() == [1, 1, 1] and pw3d.gender.tolist() == [0, 1, 0] and pw3d.has_pose_3d == 0
    assert not pw3d.keypoints.any()
    with pytest.raises(UserError, match="missing dataset file"):
        load_annotations(root, "h36m-p1", is_train=False)
    with pytest.raises(UserError, match="unknown evaluation dataset 'h36m'"):
        npz_path(root, "h36m", is_train=False)


def test_item_layout_and_values(root):
    ds = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False)
    item = ds[1]
    assert item["img"].shape == (3, RES, RES) and item["img"].dtype == torch.float32
    assert item["pose"].shape == (72,) and item["betas"].shape == (10,) and item["pose_3d"].shape == (24, 4)
    assert item["keypoints"].shape == (49, 3) and item["has_smpl"] == 1.0 and item["has_pose_3d"] == 0.0
    assert item["orig_shape"].tolist() == [90, 120] and item["gender"] == 1 and item["sample_index"] == 1
    assert item["dataset_name"] == "3dpw" and item["imgname"].endswith("3dpw/images/im0001.png")
    assert item["maskname"] == "" and item["is_flipped"] == 0 and item["rot_angle"] == 0.0
    raw = np.load(root / "dataset_extras" / "3dpw_test.npz")
    np.testing.assert_allclose(item["pose"].numpy(), raw["pose"][1], atol=1e-6)
    # the image is the crop of the file (an evaluation split: SPIN's eval crop)
    img = np.asarray(Image.open(root / "3dpw" / "images" / "im0001.png"))
    crop = C.spin_crop(img, raw["center"][1], raw["scale"][1], RES)
    np.testing.assert_allclose(_denorm(item["img"]), crop, atol=1e-3)
    lsp = BaseDataset(root, "lsp", img_res=RES, is_train=False, augment=False)[0]
    assert lsp["maskname"].endswith("upi-s1h/lsp/im0000_segmentation.png")
    loader = torch.utils.data.DataLoader(ds, batch_size=3)
    batch = next(iter(loader))
    assert batch["img"].shape == (3, 3, RES, RES) and batch["scale"].dtype == torch.float64


def test_keypoints_follow_the_crop_and_the_flip(root):
    ds = BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True)
    raw = np.load(root / "dataset_extras" / "coco_2014_train.npz")
    plain = ds.get_item(2, aug=C.Augmentation())
    m = C.crop_matrix(raw["center"][2], raw["scale"][2], RES)
    expected = 2 * C.transform_points(raw["part"][2][:, :2], m) / RES - 1
    np.testing.assert_allclose(plain["keypoints"][25:, :2].numpy(), expected, atol=1e-5)
    flipped = ds.get_item(2, aug=C.Augmentation(flip=True))
    np.testing.assert_allclose(flipped["keypoints"][J49_FLIP_PERM, 0].numpy(), -plain["keypoints"][:, 0].numpy(),
                               atol=1e-6)
    np.testing.assert_allclose(_denorm(flipped["img"]), _denorm(plain["img"])[:, ::-1], atol=1e-3)


def test_flipped_twice_item_equals_the_original(root):
    ds = BaseDataset(root, "mpi-inf-3dhp", img_res=RES, is_train=True, augment=True)
    aug = C.Augmentation(flip=True, rot=20.0, sc=1.1)
    plain = ds.get_item(1, aug=C.Augmentation(rot=20.0, sc=1.1))
    flipped = ds.get_item(1, aug=aug)
    back = {
        "img": flipped["img"].flip(-1),
        "keypoints": C.flip_keypoints(flipped["keypoints"].numpy(), J49_FLIP_PERM),
        "pose": C.augment_pose(flipped["pose"].numpy(), 0, flip=True),
        "pose_3d": C.rotate_joints3d(flipped["pose_3d"].numpy(), 0, flip=True),
    }
    torch.testing.assert_close(back["img"], plain["img"])
    for key in ("keypoints", "pose", "pose_3d"):
        np.testing.assert_allclose(back[key], plain[key].numpy(), atol=1e-5)
    assert flipped["is_flipped"] == 1 and flipped["rot_angle"] == 20.0
    assert flipped["scale"] == pytest.approx(1.1 * float(np.load(root / "dataset_extras" /
                                                                  "mpi_inf_3dhp_train.npz")["scale"][1]))


def test_augmentation_is_deterministic(root):
    ds = BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True)
    a = ds.get_item(3, rng=np.random.default_rng([0, 5]))
    b = ds.get_item(3, rng=np.random.default_rng([0, 5]))
    torch.testing.assert_close(a["img"], b["img"])
    assert a["rot_angle"] == b["rot_angle"] and a["is_flipped"] == b["is_flipped"]

    def epoch(seed, workers):
        g = torch.Generator().manual_seed(seed)
        loader = torch.utils.data.DataLoader(ds, batch_size=6, num_workers=workers, generator=g)
        return next(iter(loader))

    torch.manual_seed(0)
    first = epoch(0, 0)
    torch.manual_seed(0)
    torch.testing.assert_close(epoch(0, 0)["img"], first["img"])
    # inside workers the augmentation depends on the loader's seed and the index, not on the worker count
    torch.testing.assert_close(epoch(7, 1)["img"], epoch(7, 2)["img"])
    assert not torch.equal(epoch(7, 1)["img"], epoch(8, 1)["img"])


def test_eval_items_are_never_augmented(root):
    asked = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=True)
    plain = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False)
    for i in range(len(plain)):
        torch.manual_seed(i + 1)  # another random state for each read: augmentation would show as a difference
        item = asked[i]
        torch.manual_seed(100 + i)
        torch.testing.assert_close(item["img"], plain[i]["img"], rtol=0, atol=0)
        torch.testing.assert_close(item["keypoints"], plain[i]["keypoints"], rtol=0, atol=0)
        assert item["is_flipped"] == 0 and item["rot_angle"] == 0


# ----------------------------------------------------------------------------------------------- mixed set


def test_mix_weights_spin_defaults():
    lengths = {"h36m": 100, "lsp-orig": 10, "mpii": 20, "lspet": 30, "coco": 40, "mpi-inf-3dhp": 5}
    w = mix_weights(lengths, {"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1})
    assert w["h36m"] == pytest.approx(0.3) and w["mpi-inf-3dhp"] == pytest.approx(0.1)
    assert w["coco"] == pytest.approx(0.6 * 40 / 100) and w["lsp-orig"] == pytest.approx(0.06)
    w = mix_weights({"h36m": 100, "coco": 50}, {"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1})
    assert w == pytest.approx({"h36m": 1 / 3, "coco": 2 / 3})  # MPI missing: renormalised
    assert mix_weights({"a": 1, "b": 3}, {}) == pytest.approx({"a": 0.25, "b": 0.75})


def test_mixed_dataset_proportions_and_missing_sets(root, caplog):
    caplog.set_level(logging.WARNING)
    datasets = ["h36m", "lsp-orig", "mpii", "lspet", "coco", "mpi-inf-3dhp"]
    mixed = MixedDataset(root, datasets=datasets, mix={"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1}, img_res=RES)
    assert "lspet" in caplog.text and "skipped" in caplog.text  # hr-lspet_train.npz is not in the root
    keys = [ds.key for ds in mixed.datasets]
    assert keys == ["h36m", "lsp-orig", "mpii", "coco", "mpi-inf-3dhp"] and len(mixed) == 6
    rng = np.random.default_rng(0)
    draws = np.array([mixed.choose(i, rng)[0] for i in range(20000)])
    freq = np.bincount(draws, minlength=5) / len(draws)
    itw = 0.6 / 12  # lsp-orig 4, mpii 2, coco 6 samples
    np.testing.assert_allclose(freq, [0.3, 4 * itw, 2 * itw, 6 * itw, 0.1], atol=0.012)
    k, sample = mixed.choose(9, np.random.default_rng(1))
    assert sample == 9 % len(mixed.datasets[k])
    item = mixed[4]
    assert item["img"].shape == (3, RES, RES) and item["dataset_name"] in keys
    with pytest.raises(UserError, match="none of the training sets"):
        MixedDataset(root, datasets=["lspet"], mix={}, img_res=RES)


def test_epoch_length_repeats_samples_under_new_augmentation(root):
    from compress.data.datasets import training_set
    from compress.recipe import load_recipe

    recipe = load_recipe(Path(__file__).parent.parent / "recipes" / "mbv2_baseline.yaml",
                         [f"data.root={root}", "data.epoch_length=40"])
    assert len(training_set(recipe.data, img_res=RES, augment=True)) == 40
    h36m = MixedDataset(root, datasets=["h36m"], mix={}, img_res=RES, length=40)
    n = len(h36m.datasets[0])
    assert len(h36m) == 40 and len(MixedDataset(root, datasets=["h36m"], mix={}, img_res=RES)) == n < 40
    first, again = h36m[1], h36m[1 + n]  # the same sample, a different index: another augmentation draw
    assert first["imgname"] == again["imgname"] and not torch.equal(first["img"], again["img"])


def test_a_set_longer_than_the_epoch_is_drawn_whole(root):
    n = len(MixedDataset(root, datasets=["h36m"], mix={}, img_res=RES).datasets[0])
    short = MixedDataset(root, datasets=["h36m"], mix={}, img_res=RES, length=n // 2)
    rng = np.random.default_rng(0)
    drawn = {short.choose(i % len(short), rng)[1] for i in range(40 * n)}
    assert drawn == set(range(n))  # index % n would never reach the samples past the epoch's length


# ----------------------------------------------------------------------------------------------- HDF5 cache


def test_cache_gives_the_raw_items(root, tmp_path):
    out = build_cache(root, ["3dpw", "coco"], out=tmp_path / "cache", img_res=RES)
    assert sorted(p.name for p in out.glob("*.h5")) == ["3dpw_test_r32_spin.h5", "coco_2014_train_r32.h5"]
    for key, is_train in (("3dpw", False), ("coco", True)):
        raw = BaseDataset(root, key, img_res=RES, is_train=is_train, augment=False)
        cached = BaseDataset(root, key, img_res=RES, is_train=is_train, augment=False, cache=out)
        for i in range(len(raw)):
            a, b = raw[i], cached[i]
            np.testing.assert_allclose(_denorm(b["img"]), _denorm(a["img"]), atol=1.01)  # uint8 rounding
            assert b["orig_shape"].tolist() == a["orig_shape"].tolist()
            torch.testing.assert_close(a["keypoints"], b["keypoints"])
    # with augmentation the cached crop is one more bilinear warp of the same pixels: close, not equal
    raw = BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True)
    cached = BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True, cache=out)
    aug = C.Augmentation(flip=True, rot=25.0, sc=1.2)
    diff = np.abs(_denorm(raw.get_item(0, aug=aug)["img"]) - _denorm(cached.get_item(0, aug=aug)["img"]))
    assert diff.mean() < 4.0


def test_truncated_or_incomplete_cache_is_rebuilt(root, tmp_path):
    out = build_cache(root, ["3dpw"], out=tmp_path / "cache", img_res=RES)
    path = out / "3dpw_test_r32_spin.h5"  # an evaluation split: SPIN's eval crop
    npz = npz_path(root, "3dpw", is_train=False)
    key = source_fingerprint(npz, root / "3dpw", RES, "spin")
    assert cache_is_valid(path, key)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert not cache_is_valid(path, key)
    ds = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False, cache=out)
    assert cache_is_valid(path, key) and len(path.read_bytes()) == len(data)
    ref = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False)
    np.testing.assert_allclose(_denorm(ds[2]["img"]), _denorm(ref[2]["img"]), atol=1.01)

    import h5py

    ds.cache.close()
    with h5py.File(path, "r+") as f:
        f.attrs["complete"] = False
    assert not cache_is_valid(path, key)
    build_cache(root, ["3dpw"], out=out, img_res=RES)
    assert cache_is_valid(path, key)


def test_cache_rebuilt_when_the_source_changes(root, tmp_path):
    out = build_cache(root, ["3dpw"], out=tmp_path / "cache", img_res=RES)
    npz = npz_path(root, "3dpw", is_train=False)
    old_key = source_fingerprint(npz, root / "3dpw", RES, "spin")
    data = dict(np.load(npz))
    data["center"] = data["center"] + 7.0
    np.savez(npz, **data)
    new_key = source_fingerprint(npz, root / "3dpw", RES, "spin")
    assert cache_is_valid(out / "3dpw_test_r32_spin.h5", old_key)
    assert new_key != old_key and not cache_is_valid(out / "3dpw_test_r32_spin.h5", new_key)
    cached = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False, cache=out)
    raw = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False)
    np.testing.assert_allclose(_denorm(cached[0]["img"]), _denorm(raw[0]["img"]), atol=1.01)
    with pytest.raises(UserError, match="no dataset files"):
        build_cache(root, ["h36m-p1"], out=out, img_res=RES)


# ----------------------------------------------------------------------------------------------- synthetic root


def test_readers_read_the_synthetic_root_unchanged(synth_root, tmp_path):
    from compress.constants import EVAL_DATASETS, TRAIN_DATASETS

    root = synth_root
    for is_train, table in ((False, EVAL_DATASETS), (True, TRAIN_DATASETS)):
        for key in table:
            ds = BaseDataset(root, key, img_res=RES, is_train=is_train, augment=is_train)
            item = ds[len(ds) - 1]
            assert item["img"].shape == (3, RES, RES) and torch.isfinite(item["img"]).all(), key
            assert item["keypoints"].shape == (49, 3) and item["pose_3d"].shape == (24, 4)
            assert (item["orig_shape"] > 0).all()
    lsp = BaseDataset(root, "lsp", img_res=RES, is_train=False, augment=False)[0]
    assert Image.open(lsp["maskname"]).size == tuple(lsp["orig_shape"].tolist()[::-1])
    mixed = MixedDataset(root, datasets=list(TRAIN_DATASETS), mix={"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1},
                         img_res=RES, cache=tmp_path / "cache")
    assert len(mixed.datasets) == 6 and mixed[1]["img"].shape == (3, RES, RES)
