"""SPIN's crop geometry as one affine warp (training), SPIN's exact evaluation crop, plus the matching keypoint /
3D / pose transforms and augmentation.

Coordinates. Image coordinates are continuous with pixel (row i, column j) covering [j, j+1) x [i, i+1), so its
centre is (j + 0.5, i + 0.5): the convention of PIL's affine transform, of `compress.raster` and of SPIN's
normalised keypoints (`2*u/R - 1` maps the crop's left edge to -1 and its right edge to +1, so a horizontal flip
of the crop is exactly `x -> -x`). npz keypoints and centres are read in these coordinates.

Geometry (SPIN `utils/imutils.py`): the box of side `h = 200*scale` centred at `center` maps onto the R x R crop
by `crop_matrix`; with rotation the crop is rotated by -rot degrees about its centre (R/2, R/2). Keypoints use
the same 3x3 matrix, so they land exactly where their pixels land.

Differences from SPIN, on purpose:
- SPIN cuts the box into a float canvas, rotates it with `scipy.misc.imrotate` and resizes with
  `scipy.misc.imresize`; both min-max stretch every crop ("bytescale") and scipy.misc no longer exists. Here the
  crop is one bilinear affine warp of the uint8 image (PIL), without contrast stretch. When the box is more than
  twice the crop size, the image is first box-filtered by an integer factor (PIL `reduce`) so downscaling does
  not alias; SPIN's PIL resize anti-aliased too.
- SPIN truncates transformed keypoints to integer crop pixels (and adds 1); we keep them continuous, so 2D
  targets are not quantised (a +0.5 px bias and up to 1 px of noise at 224 px in SPIN).
- Pixel noise is applied in float (SPIN writes it back into uint8, i.e. truncates).

Evaluation uses `spin_crop` instead: SPIN's eval pixels exactly (rotation 0, no flip or noise), so a checkpoint
trained by SPIN sees what it saw in SPIN's eval.py. The box corners are integers (`spin_box`: SPIN's inverse
point transform, truncated toward zero); the image's overlap with the box is pasted into a black float canvas;
the whole canvas is min-max stretched to 0..255 and rounded (scipy's `bytescale`); then PIL's bilinear resize
(which anti-aliases when downscaling) gives the res x res crop, as `scipy.misc.imresize` did. `spin_tensor`
then divides by 255 and normalises in float32 in SPIN's order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import numpy as np
from PIL import Image

from compress.constants import IMG_NORM_MEAN, IMG_NORM_STD, J24_FLIP_PERM, J49_FLIP_PERM, SMPL_POSE_FLIP_PERM

# SPIN's augmentation defaults (utils/train_options.py): noise_factor, rot_factor, scale_factor; rotation is
# zeroed with probability 0.6.
NOISE_FACTOR = 0.4
ROT_FACTOR = 30.0
SCALE_FACTOR = 0.25
P_FLIP = 0.5
P_NO_ROT = 0.6
CROPS = ("warp", "spin")  # crop kinds: continuous warp (training), SPIN's exact eval crop


@dataclass(frozen=True)
class Augmentation:
    """One sample's augmentation: horizontal flip, rotation in degrees, scale factor, per-channel pixel noise."""

    flip: bool = False
    rot: float = 0.0
    sc: float = 1.0
    pn: tuple[float, float, float] = (1.0, 1.0, 1.0)


def sample_augmentation(rng: np.random.Generator) -> Augmentation:
    """SPIN's training augmentation: flip p=0.5, pn ~ U[0.6,1.4]^3, rot = clip(N(0,30), +-60) zeroed with p=0.6,
    sc = clip(N(1,0.25), 0.75, 1.25)."""
    flip = bool(rng.uniform() <= P_FLIP)
    pn = rng.uniform(1 - NOISE_FACTOR, 1 + NOISE_FACTOR, 3)
    rot = float(np.clip(rng.standard_normal() * ROT_FACTOR, -2 * ROT_FACTOR, 2 * ROT_FACTOR))
    sc = float(np.clip(rng.standard_normal() * SCALE_FACTOR + 1, 1 - SCALE_FACTOR, 1 + SCALE_FACTOR))
    if rng.uniform() <= P_NO_ROT:
        rot = 0.0
    return Augmentation(flip=flip, rot=rot, sc=sc, pn=tuple(float(v) for v in pn))


# ----------------------------------------------------------------------------------------------- matrices


def crop_matrix(center, scale: float, res: int, rot: float = 0.0) -> np.ndarray:
    """3x3 affine map from image coordinates to crop coordinates (SPIN's `get_transform`, continuous)."""
    h = 200.0 * float(scale)
    cx, cy = float(center[0]), float(center[1])
    t = np.array([[res / h, 0, res * (-cx / h + 0.5)], [0, res / h, res * (-cy / h + 0.5)], [0, 0, 1]])
    if rot:
        t = _rotation_about(res / 2.0, -rot) @ t
    return t


def _rotation_about(c: float, deg: float) -> np.ndarray:
    """Rotation by `deg` degrees (image axes: x right, y down) about the point (c, c)."""
    r = math.radians(deg)
    cs, sn = math.cos(r), math.sin(r)
    rot = np.array([[cs, -sn, 0], [sn, cs, 0], [0, 0, 1]])
    shift, back = np.eye(3), np.eye(3)
    shift[:2, 2], back[:2, 2] = -c, c
    return back @ rot @ shift


def transform_points(points: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine matrix to (N, 2) points (no integer truncation, unlike SPIN)."""
    return points @ matrix[:2, :2].T + matrix[:2, 2]


# ----------------------------------------------------------------------------------------------- images


def reduce_factor(box_side: float, res: int) -> int:
    """Integer box-filter factor applied before the warp so that the warp itself scales by at least ~0.5."""
    return max(1, int(box_side // res))


def warp(image: Image.Image | np.ndarray, matrix: np.ndarray, res: int, *, prefilter: int = 1) -> np.ndarray:
    """The (res, res, 3) uint8 crop of `image` under `matrix` (image -> crop coordinates); zeros outside the image.

    `prefilter` > 1 first box-filters the needed region by that integer factor (anti-aliasing); the region is
    aligned to multiples of the factor in image coordinates, so the same pixels come out whichever crop asks.
    """
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.ascontiguousarray(image))
    if img.mode != "RGB":
        img = img.convert("RGB")
    if prefilter > 1:
        img, matrix = _reduce_region(img, matrix, res, prefilter)
    inv = np.linalg.inv(matrix)
    data = tuple(inv[:2].reshape(-1))
    out = img.transform((res, res), Image.Transform.AFFINE, data, resample=Image.Resampling.BILINEAR, fillcolor=0)
    return np.asarray(out, dtype=np.uint8)


def _reduce_region(img: Image.Image, matrix: np.ndarray, res: int, k: int) -> tuple[Image.Image, np.ndarray]:
    """Box-filter by k the part of `img` the crop needs; returns it with the matrix re-expressed for it."""
    corners = transform_points(np.array([[0, 0], [res, 0], [0, res], [res, res]], float), np.linalg.inv(matrix))
    lo = np.floor((corners.min(0) - 2 * k) / k).astype(int) * k
    hi = np.ceil((corners.max(0) + 2 * k) / k).astype(int) * k
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, [img.width, img.height])
    if np.any(hi <= lo):  # the crop lies outside the image: nothing to filter
        return img, matrix
    region = img.crop((int(lo[0]), int(lo[1]), int(hi[0]), int(hi[1]))).reduce(k)
    to_image = np.array([[k, 0, lo[0]], [0, k, lo[1]], [0, 0, 1]], float)  # reduced coords -> image coords
    return region, matrix @ to_image


def crop_image(image: Image.Image | np.ndarray, center, scale: float, res: int, rot: float = 0.0) -> np.ndarray:
    """SPIN's crop (box 200*scale around center, rotated by rot degrees) as a (res, res, 3) uint8 array."""
    return warp(image, crop_matrix(center, scale, res, rot), res, prefilter=reduce_factor(200.0 * scale, res))


def spin_point(point, center, scale: float, res: int) -> np.ndarray:
    """SPIN's `transform(point, invert=1)`: a 1-based crop pixel -> a 1-based image pixel, truncated toward zero.

    The inverse of `crop_matrix` is taken with np.linalg.inv as SPIN does, so values that land on an integer
    truncate the same way; `astype(int)` truncates toward zero (not floor), which matters left of / above the image.
    """
    inv = np.linalg.inv(crop_matrix(center, scale, res))
    p = inv @ np.array([point[0] - 1, point[1] - 1, 1.0])
    return p[:2].astype(np.int64) + 1


def spin_box(center, scale: float, res: int) -> tuple[np.ndarray, np.ndarray]:
    """SPIN's integer crop box in 0-based image pixels: upper-left corner `ul` (inclusive) and `br` (exclusive),
    each (x, y)."""
    ul = spin_point([1, 1], center, scale, res) - 1
    br = spin_point([res + 1, res + 1], center, scale, res) - 1
    return ul, br


def spin_canvas(image: Image.Image | np.ndarray, ul: np.ndarray, br: np.ndarray) -> np.ndarray:
    """The box [ul, br) of `image` as a float64 (H, W, 3) canvas, black where the box leaves the image."""
    canvas = np.zeros((int(br[1] - ul[1]), int(br[0] - ul[0]), 3))
    width, height = image.size if isinstance(image, Image.Image) else (image.shape[1], image.shape[0])
    x0, x1 = max(0, int(ul[0])), min(width, int(br[0]))
    y0, y1 = max(0, int(ul[1])), min(height, int(br[1]))
    if x1 <= x0 or y1 <= y0:  # the box misses the image
        return canvas
    if isinstance(image, Image.Image):
        part = np.asarray(image.crop((x0, y0, x1, y1)).convert("RGB"))
    else:
        part = np.asarray(image)[y0:y1, x0:x1]
    canvas[y0 - ul[1]:y1 - ul[1], x0 - ul[0]:x1 - ul[0]] = part
    return canvas


def bytescale(canvas: np.ndarray) -> np.ndarray:
    """scipy's old `bytescale` with its defaults: min -> 0, max -> 255 over the whole array, rounded to uint8.

    A constant array has range 0, which scipy replaces by 1, so it maps to 0 (black) as in SPIN.
    """
    lo, hi = float(canvas.min()), float(canvas.max())
    span = hi - lo if hi > lo else 1.0
    return (np.clip((canvas - lo) * (255.0 / span), 0, 255) + 0.5).astype(np.uint8)


def spin_crop(image: Image.Image | np.ndarray, center, scale: float, res: int) -> np.ndarray:
    """SPIN's evaluation crop (`utils/imutils.py` crop with rotation 0) as a (res, res, 3) uint8 array.

    Integer box `spin_box`, pasted into a black canvas, min-max stretched (`bytescale`), then resized to res x res
    with PIL's bilinear filter (anti-aliased when shrinking), as `scipy.misc.imresize` did. `image`: RGB uint8
    array or PIL image.
    """
    ul, br = spin_box(center, scale, res)
    pixels = bytescale(spin_canvas(image, ul, br))
    out = Image.fromarray(pixels, "RGB").resize((res, res), resample=Image.Resampling.BILINEAR)
    return np.asarray(out, dtype=np.uint8)


def spin_tensor(crop: np.ndarray) -> np.ndarray:
    """uint8 (R, R, 3) crop -> float32 (3, R, R) exactly as SPIN feeds it: /255, then (x - mean) / std."""
    img = crop.transpose(2, 0, 1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(IMG_NORM_MEAN, np.float32)[:, None, None]
    std = np.asarray(IMG_NORM_STD, np.float32)[:, None, None]
    return np.ascontiguousarray((img - mean) / std)


def to_tensor_image(crop: np.ndarray, *, flip: bool, pn=(1.0, 1.0, 1.0)) -> np.ndarray:
    """uint8 (R, R, 3) crop -> float32 (3, R, R): optional flip, pixel noise, /255, ImageNet normalisation."""
    chw = np.ascontiguousarray((crop[:, ::-1] if flip else crop).transpose(2, 0, 1))  # uint8: a cheap copy
    img = chw.astype(np.float32)
    pn = np.asarray(pn, np.float32)
    if np.any(pn != 1):
        img *= pn[:, None, None]
        np.minimum(img, 255.0, out=img)  # SPIN clips to [0, 255] after the noise
    std = np.asarray(IMG_NORM_STD, np.float32)[:, None, None]
    img *= 1.0 / (255.0 * std)
    img -= (np.asarray(IMG_NORM_MEAN, np.float32)[:, None, None] / std)
    return img


# ----------------------------------------------------------------------------------------------- annotations


def keypoints_to_crop(kp: np.ndarray, matrix: np.ndarray, res: int, *, flip: bool,
                      perm: Optional[list[int]] = None) -> np.ndarray:
    """(J, 3) image keypoints (x, y, conf) -> normalised crop keypoints `2*u/res - 1`; flip = perm (default
    J49_FLIP_PERM) + negate x."""
    out = np.array(kp, dtype=np.float64, copy=True)
    out[:, :2] = 2.0 * transform_points(out[:, :2], matrix) / res - 1.0
    if flip:
        out = flip_keypoints(out, J49_FLIP_PERM if perm is None else perm)
    return out.astype(np.float32)


def flip_keypoints(kp: np.ndarray, perm: list[int]) -> np.ndarray:
    """Mirror normalised keypoints (or root-centred 3D joints): swap left/right with `perm`, negate x."""
    out = kp[list(perm)].copy()
    out[:, 0] = -out[:, 0]
    return out


def rotate_joints3d(S: np.ndarray, rot: float, *, flip: bool) -> np.ndarray:
    """(24, 4) 3D joints: rotate xyz by -rot degrees about z (in-plane, as the image), then flip (J24 perm, -x)."""
    out = np.array(S, dtype=np.float64, copy=True)
    if rot:
        out[:, :3] = out[:, :3] @ _rot_z(-rot).T
    if flip:
        out = flip_keypoints(out, J24_FLIP_PERM)
    return out.astype(np.float32)


def _rot_z(deg: float) -> np.ndarray:
    r = math.radians(deg)
    return np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])


def augment_pose(pose: np.ndarray, rot: float, *, flip: bool) -> np.ndarray:
    """(72,) SMPL axis-angle pose: global orientation pre-multiplied by Rz(-rot); flip = perm + negate y, z."""
    out = np.array(pose, dtype=np.float64, copy=True)
    if rot:
        out[:3] = _matrix_to_aa(_rot_z(-rot) @ _aa_to_matrix(out[:3]))
    if flip:
        out = out[SMPL_POSE_FLIP_PERM]
        out[1::3] = -out[1::3]
        out[2::3] = -out[2::3]
    return out.astype(np.float32)


def _aa_to_matrix(aa: np.ndarray) -> np.ndarray:
    angle = float(np.linalg.norm(aa))
    if angle < 1e-12:
        return np.eye(3)
    k = aa / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


def _matrix_to_aa(R: np.ndarray) -> np.ndarray:
    cos = float(np.clip((np.trace(R) - 1) / 2, -1.0, 1.0))
    angle = math.acos(cos)
    if angle < 1e-8:
        return np.zeros(3)
    if math.pi - angle < 1e-4:  # near 180 degrees: the axis is the dominant column of R + I
        B = (R + np.eye(3)) / 2
        axis = B[:, int(np.argmax(np.diag(B)))]
        return axis / np.linalg.norm(axis) * angle
    axis = np.array([R[2, 1] - R[1, 2], R[0, 2] - R[2, 0], R[1, 0] - R[0, 1]]) / (2 * math.sin(angle))
    return axis * angle
