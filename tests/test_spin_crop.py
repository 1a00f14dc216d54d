"""SPIN's evaluation crop (compress.data.crop.spin_crop) and where it is used.

SPIN's eval crop (utils/imutils.py, rotation 0): integer box corners from the inverse crop transform truncated
toward zero, the image's overlap pasted into a black float canvas, the whole canvas min-max stretched to 0..255
and rounded (scipy's bytescale), then PIL's bilinear resize to res x res. Evaluation splits use it; training
keeps the continuous warp.
"""
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import Normalize

from compress.constants import IMG_NORM_MEAN, IMG_NORM_STD
from compress.data import crop as C
from compress.data.cache import ensure_cache, source_fingerprint
from compress.data.datasets import BaseDataset

RES = 32


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _gradient(h, w):
    """v[y, x, c] = 20 + 4x + 2y + 10c (uint8; at most 20 + 4*13 + 2*11 + 20 = 114 on a 12 x 14 image)."""
    y, x, c = np.meshgrid(np.arange(h), np.arange(w), np.arange(3), indexing="ij")
    return (20 + 4 * x + 2 * y + 10 * c).astype(np.uint8)


# ----------------------------------------------------------------------------------------------- hand-worked


def test_box_of_res_pixels_is_the_byte_scaled_canvas_without_resampling():
    img = _gradient(12, 14)  # H 12, W 14
    # res 8, scale 0.04: h = 200 * 0.04 = 8 = res, so crop px = image px + ul (no resampling).
    # center (12.25, 9.5): t[0,2] = 8 * (-12.25/8 + 0.5) = -8.25, t[1,2] = 8 * (-9.5/8 + 0.5) = -5.5 (exact in
    # binary). Inverse of crop (0, 0): (8.25, 5.5) -> truncated 8, 5 -> ul = (8, 5); of crop (8, 8): (16.25, 13.5)
    # -> br = (16, 13). The box overhangs the right (x 14, 15) and bottom (y 12) edges: black there.
    ul, br = C.spin_box((12.25, 9.5), 0.04, 8)
    assert ul.tolist() == [8, 5] and br.tolist() == [16, 13]
    out = C.spin_crop(img, (12.25, 9.5), 0.04, 8)
    # canvas[r, k] = v(y = 5 + r, x = 8 + k) inside the image, else 0; min 0 (black), max v(11, 13, 2) = 114:
    # byte = floor(v * 255 / 114 + 0.5). E.g. canvas[0, 0, 0] = v(5, 8, 0) = 20 + 32 + 10 = 62 -> 138.68 -> 139;
    # [6, 5, 2] = v(11, 13, 2) = 114 -> 255; [0, 6] and [7, 0] are outside the image -> 0.
    y, x, c = np.meshgrid(5 + np.arange(8), 8 + np.arange(8), np.arange(3), indexing="ij")
    inside = (x < 14) & (y < 12)
    expected = np.where(inside, np.floor((20 + 4 * x + 2 * y + 10 * c) * 255 / 114 + 0.5), 0)
    assert out[0, 0, 0] == 139 and out[6, 5, 2] == 255 and not out[0, 6].any() and not out[7, 0].any()
    np.testing.assert_allclose(out, expected, atol=1)


def test_box_inside_the_image_is_stretched_from_its_own_minimum():
    img = _gradient(12, 14)
    # center (6.5, 6.25), h = res = 8: t[0,2] = 8 * (-6.5/8 + 0.5) = -2.5, t[1,2] = -2.25 -> ul = (2, 2),
    # br = (10, 10): fully inside, no black. min = v(2, 2, 0) = 20 + 8 + 4 = 32, max = v(9, 9, 2) = 94, span 62:
    # byte = floor((v - 32) * 255 / 62 + 0.5); e.g. v(2, 3, 0) = 36 -> 16.45 -> 16; v(9, 9, 2) -> 255.
    out = C.spin_crop(img, (6.5, 6.25), 0.04, 8)
    y, x, c = np.meshgrid(2 + np.arange(8), 2 + np.arange(8), np.arange(3), indexing="ij")
    expected = np.floor((20 + 4 * x + 2 * y + 10 * c - 32) * 255 / 62 + 0.5)
    assert out[0, 0, 0] == 0 and out[0, 1, 0] == 16 and out[7, 7, 2] == 255
    np.testing.assert_allclose(out, expected, atol=1)


def test_negative_corner_truncates_toward_zero():
    img = np.full((20, 20, 3), 200, np.uint8)
    # res 16, h = 16, center (5.3, 5.3): t[0,2] = 16 * (-5.3/16 + 0.5) = 2.7, so crop (0, 0) -> image -2.7:
    # truncation toward zero gives -2 (floor would give -3); crop (16, 16) -> 13.3 -> 13. The box -2..13 is
    # 15 px (floor's -3..13 would be 16), so PIL resizes 15 -> 16 in both directions.
    ul, br = C.spin_box((5.3, 5.3), 0.08, 16)
    assert ul.tolist() == [-2, -2] and br.tolist() == [13, 13]
    out = C.spin_crop(img, (5.3, 5.3), 0.08, 16)[..., 0].astype(int)
    # canvas rows/cols 0, 1 are black, 2..14 are 200 -> bytescale 0 / 255. PIL bilinear 15 -> 16: output i is
    # centred at (i + 0.5) * 15/16 in the input, triangle weights 1 - |d| to the input pixel centres j + 0.5:
    #   i = 0: centre 0.46875, only input 0 (black)             -> 0
    #   i = 1: centre 1.40625, inputs 0 (0.09375), 1 (0.90625)    -> 0
    #   i = 2: centre 2.34375, inputs 1 (0.15625), 2 (0.84375)    -> 0.84375 * 255 = 215.2
    #   i = 3: centre 3.28125, inputs 2 (0.21875), 3 (0.78125)    -> 255, and so on to i = 15 (input 14 only)
    # so out[2, j >= 3] = 215, out[2, 2] = 0.84375^2 * 255 = 181.5 and out[3:, 3:] = 255.
    # (floor's box would leave rows 0..2 black and need no resampling.)
    assert not out[:2].any() and not out[:, :2].any()
    np.testing.assert_allclose(out[2, 3:], 215, atol=1)
    np.testing.assert_allclose(out[3:, 2], 215, atol=1)
    assert abs(out[2, 2] - 181.5) <= 1
    assert (out[3:, 3:] == 255).all()


def test_constant_canvas_is_black_as_scipys_bytescale():
    # scipy's bytescale of a constant array: range 0 is replaced by 1, so (v - min) * 255 / 1 = 0 everywhere
    img = np.full((40, 40, 3), 90, np.uint8)
    assert not C.spin_crop(img, (20.3, 20.3), 0.1, 8).any()


# ----------------------------------------------------------------------------------------------- reference


def _reference_crop(img, center, scale, res):
    """SPIN's crop, written out plainly: corners through the inverted 3x3 transform, a pixel-by-pixel paste into a
    float canvas, scipy's bytescale, PIL's bilinear resize."""
    h = 200 * scale
    t = np.array([[res / h, 0, res * (-center[0] / h + 0.5)], [0, res / h, res * (-center[1] / h + 0.5)], [0, 0, 1]])
    inv = np.linalg.inv(t)
    corner = [[int(v) for v in (inv @ np.array([u, u, 1.0]))[:2]] for u in (0, res)]  # int() truncates to zero
    (x0, y0), (x1, y1) = corner
    canvas = np.zeros((y1 - y0, x1 - x0, 3))
    for y in range(y0, y1):
        for x in range(x0, x1):
            if 0 <= y < img.shape[0] and 0 <= x < img.shape[1]:
                canvas[y - y0, x - x0] = img[y, x]
    lo, hi = canvas.min(), canvas.max()
    span = hi - lo if hi != lo else 1
    byte = (np.clip((canvas - lo) * 255.0 / span, 0, 255) + 0.5).astype(np.uint8)
    return np.asarray(Image.fromarray(byte).resize((res, res), Image.BILINEAR))


@pytest.mark.parametrize("center, scale, res", [
    ((3.7, 40.2), 0.61, 32),     # 122 px box over the left, top and bottom edges (negative corner)
    ((50.4, 2.9), 0.35, 24),     # 70 px box over the top and right edges
    ((-10.6, -20.3), 0.8, 32),   # centre outside the image
    ((30.0, 25.0), 0.5, 32),     # 100 px box, integer-aligned corners
    ((33.3, 28.8), 0.117, 16),   # 23.4 px box inside the image
])
def test_downscaled_crop_matches_a_plain_reference(center, scale, res):
    rng = np.random.default_rng(7)
    img = rng.integers(0, 256, size=(57, 61, 3)).astype(np.uint8)
    img = np.asarray(Image.fromarray(img).resize((61, 57), Image.BILINEAR))  # some spatial correlation
    out = C.spin_crop(img, center, scale, res)
    assert out.shape == (res, res, 3) and out.dtype == np.uint8
    ref = _reference_crop(img, center, scale, res)
    assert np.abs(out.astype(int) - ref.astype(int)).max() <= 1
    # a PIL image in gives the same pixels as the array
    np.testing.assert_array_equal(C.spin_crop(Image.fromarray(img), center, scale, res), out)


# ----------------------------------------------------------------------------------------------- datasets


def _write_split(root, npz_name, folder, centers, scales, fields):
    """Images (48 x 64 textures) and an npz with imgname/center/scale and the requested extra fields."""
    rng = np.random.default_rng(3)
    (root / folder / "images").mkdir(parents=True, exist_ok=True)
    (root / "dataset_extras").mkdir(exist_ok=True)
    names = []
    for i in range(len(centers)):
        small = rng.integers(0, 256, size=(8, 10, 3)).astype(np.uint8)
        Image.fromarray(small).resize((64, 48), Image.BILINEAR).save(root / folder / f"images/im{i}.png")
        names.append(f"images/im{i}.png")
    n = len(centers)
    data = {"imgname": np.array(names), "center": np.array(centers, float), "scale": np.array(scales, float)}
    data.update({k: v(n) for k, v in fields.items()})
    np.savez(root / "dataset_extras" / f"{npz_name}.npz", **data)
    return data


@pytest.fixture
def root(tmp_path):
    r = tmp_path / "root"
    # boxes over the edges; the last one's left corner is 40.99999999 - 20 = 20.99999999 -> 20 in float64 (the
    # npz's, as SPIN reads it), but float32 would round the centre to 41 and the corner to 21
    boxes = dict(centers=[(10.2, 30.7), (33.0, 21.5), (60.3, 5.1), (40.99999999, 20.5)],
                 scales=[0.31, 0.2, 0.45, 0.2])
    _write_split(r, "3dpw_test", "3dpw", **boxes, fields={
        "pose": lambda n: np.zeros((n, 72)), "shape": lambda n: np.zeros((n, 10)),
        "gender": lambda n: np.array(["m"] * n)})
    _write_split(r, "coco_2014_train", "coco", **boxes, fields={"part": lambda n: np.ones((n, 24, 3))})
    return r


def _spin_input(root, folder, data, i):
    """SPIN's network input for sample i: spin_crop, float32 / 255 (CHW), torchvision Normalize."""
    img = np.asarray(Image.open(root / folder / data["imgname"][i]).convert("RGB"))
    crop = C.spin_crop(img, data["center"][i], data["scale"][i], RES)
    x = torch.from_numpy(np.transpose(crop.astype(np.float32), (2, 0, 1)) / 255.0)
    return Normalize(IMG_NORM_MEAN, IMG_NORM_STD)(x)


def test_eval_dataset_and_eval_loader_feed_spins_crop(root):
    from compress.eval.protocols import _loader

    data = np.load(root / "dataset_extras" / "3dpw_test.npz")
    ds = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False)
    assert ds.crop_kind == "spin"
    for i in range(len(ds)):
        torch.testing.assert_close(ds[i]["img"], _spin_input(root, "3dpw", data, i), rtol=0, atol=0)
    loader = _loader(root, "3dpw", img_res=RES, batch_size=3, subset=None, workers=0, image_roots=None,
                     cache=False, crop="spin")
    batch = next(iter(loader))
    expected = torch.stack([_spin_input(root, "3dpw", data, i) for i in range(3)])
    assert C.spin_box(data["center"][3], 0.2, RES)[0][0] == 20
    torch.testing.assert_close(batch["img"], expected, rtol=0, atol=0)


def test_eval_cache_stores_spins_pixels_under_a_new_key(root, tmp_path):
    data = np.load(root / "dataset_extras" / "3dpw_test.npz")
    out = tmp_path / "cache"
    # a warp cache of the eval split (what older versions wrote, same file name) is not what eval reads
    warp_path, _ = ensure_cache(root, "3dpw", is_train=False, img_res=RES, margin=0.0, out=out, crop="warp")
    cached = BaseDataset(root, "3dpw", img_res=RES, is_train=False, augment=False, cache=out)
    assert cached.cache.path.name == "3dpw_test_r32_spin.h5" and cached.cache.path != warp_path
    npz = root / "dataset_extras" / "3dpw_test.npz"
    assert source_fingerprint(npz, root / "3dpw", RES, "spin") != source_fingerprint(npz, root / "3dpw", RES)
    for i in range(len(cached)):
        torch.testing.assert_close(cached[i]["img"], _spin_input(root, "3dpw", data, i), rtol=0, atol=0)


def test_training_dataset_keeps_the_continuous_warp(root):
    data = np.load(root / "dataset_extras" / "coco_2014_train.npz")
    ds = BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True)
    assert ds.crop_kind == "warp"
    for i in range(len(ds)):
        img = np.asarray(Image.open(root / "coco" / data["imgname"][i]).convert("RGB"))
        warp = C.to_tensor_image(C.crop_image(img, data["center"][i], data["scale"][i], RES), flip=False)
        item = ds.get_item(i, aug=C.Augmentation())
        torch.testing.assert_close(item["img"], torch.from_numpy(warp), rtol=0, atol=0)
        assert not torch.allclose(item["img"], _spin_input(root, "coco", data, i), atol=0.05)
    with pytest.raises(ValueError, match="no augmentation"):
        BaseDataset(root, "coco", img_res=RES, is_train=True, augment=True, crop="spin")


def test_lsp_uncrop_inverts_spins_integer_box(synth_root, monkeypatch):
    from compress.eval import protocols

    seen = []
    real = protocols.uncrop

    def spy(*args, **kwargs):
        seen.append(kwargs.get("spin_rounding", False))
        return real(*args, **kwargs)

    monkeypatch.setattr(protocols, "uncrop", spy)
    model = torch.nn.Conv2d(3, 1, 1)

    def forward(img):  # the mean body, small, in the middle of the crop
        b = img.shape[0]
        return {"rotmat": torch.eye(3).expand(b, 24, 3, 3), "betas": torch.zeros(b, 10),
                "cam": torch.tensor([[0.9, 0.0, 0.0]]).expand(b, 3)}

    monkeypatch.setattr(model, "forward", forward)
    protocols.evaluate(model, synth_root, datasets=["lsp"], img_res=RES, subset=1)
    assert seen and all(seen)
    seen.clear()
    protocols.evaluate(model, synth_root, datasets=["lsp"], img_res=RES, subset=1, crop="warp")
    assert seen and not any(seen)
