"""LSP silhouette and part rendering of predicted meshes, and SPIN's "uncrop" into the original image.

SPIN renders the neutral-SMPL mesh with neural_renderer at the crop resolution (f = 5000, centre img_res/2,
R = I, t from the weak-perspective camera, no anti-aliasing) with a per-face colour texture that a colour cube
maps to LSP part labels 1..6; we rasterise with compress.raster and look the label up per face directly.

Part labels of the body model, first match wins:
- `<root>/smpl/vertex_parts.npy`, `<root>/vertex_parts.npy` or `<root>/lsp_vertex_parts.npy` (the synthetic
  generator's name): (6890,) int, 1..6 = LSP parts, 0 = none.
  A face takes the label shared by two or three of its vertices, else the label of its first vertex.
- SPIN's files `<root>/vertex_texture.npy` (1, F, T, T, T, 3) + `<root>/cube_parts.npy`: every texel's colour
  c maps to `cube_parts[floor(100 c)]`; a face takes its most frequent texel label.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from compress.constants import FOCAL_LENGTH
from compress.data.crop import spin_box
from compress.errors import UserError
from compress.geometry import cam_to_translation
from compress.raster import project_perspective, rasterize

log = logging.getLogger(__name__)

VERTEX_PARTS = "vertex_parts.npy"
VERTEX_PARTS_ALT = "lsp_vertex_parts.npy"
VERTEX_TEXTURE = "vertex_texture.npy"
CUBE_PARTS = "cube_parts.npy"


def face_labels_from_vertex_labels(vertex_parts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """(V,) per-vertex labels + (F, 3) faces -> (F,) per-face labels (majority of the 3, else the first)."""
    lab = np.asarray(vertex_parts).astype(np.int64)[np.asarray(faces)]  # (F, 3)
    return np.where(lab[:, 1] == lab[:, 2], lab[:, 1], lab[:, 0])


def face_labels_from_texture(texture: np.ndarray, cube_parts: np.ndarray) -> np.ndarray:
    """SPIN's vertex_texture (1, F, T, T, T, 3) in [0, 1] + cube_parts (X, Y, Z) -> (F,) most frequent label."""
    tex = np.asarray(texture, dtype=np.float64).reshape(np.asarray(texture).shape[1], -1, 3)  # (F, T^3, 3)
    idx = np.floor(100 * tex).astype(np.int64)
    idx = np.clip(idx, 0, np.array(cube_parts.shape) - 1)  # colours of 1.0 would index one past the cube
    labels = np.asarray(cube_parts)[idx[..., 0], idx[..., 1], idx[..., 2]].astype(np.int64)  # (F, T^3)
    n = int(labels.max()) + 1 if labels.size else 1
    counts = np.stack([(labels == c).sum(axis=1) for c in range(n)], axis=1)  # (F, n)
    return counts.argmax(axis=1)


def load_face_labels(root: str | Path, faces: np.ndarray) -> np.ndarray:
    """Per-face LSP part labels (F,) for the body model of a data root (see the module doc for the files)."""
    root = Path(root)
    for path in (root / "smpl" / VERTEX_PARTS, root / VERTEX_PARTS, root / VERTEX_PARTS_ALT):
        if path.is_file():
            vp = np.load(path, allow_pickle=False)
            if vp.ndim != 1 or vp.shape[0] <= int(np.max(faces)):
                raise UserError(f"{path}: expected ({int(np.max(faces)) + 1},) per-vertex labels, got {vp.shape}")
            return face_labels_from_vertex_labels(vp, faces)
    tex, cube = root / VERTEX_TEXTURE, root / CUBE_PARTS
    if tex.is_file() and cube.is_file():
        texture = np.load(tex, allow_pickle=False)
        if texture.ndim != 6 or texture.shape[1] != len(faces):
            raise UserError(f"{tex}: expected (1, {len(faces)}, T, T, T, 3), got {texture.shape}")
        return face_labels_from_texture(texture, np.load(cube, allow_pickle=False))
    raise UserError(
        f"no body part labels in {root}: need smpl/{VERTEX_PARTS} (synthetic roots) or SPIN's {VERTEX_TEXTURE} + "
        f"{CUBE_PARTS} for LSP part segmentation; regenerate with `compress data synth` or copy SPIN's data files"
    )


def render_parts(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    face_labels: torch.Tensor,
    cam: torch.Tensor,
    *,
    img_res: int,
    focal_length: float = FOCAL_LENGTH,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render meshes (B, V, 3) with the weak-perspective cameras (B, 3) into the crop -> mask (B, R, R) bool and
    part labels (B, R, R) int64 (0 = background)."""
    t = cam_to_translation(cam.to(vertices.dtype), focal_length=focal_length, img_res=img_res)  # (B, 3)
    center = torch.full((2,), img_res / 2.0, dtype=vertices.dtype, device=vertices.device)
    pix = project_perspective(vertices, t, focal_length=focal_length, center=center)  # (B, V, 3) px + depth
    frags = rasterize(pix, faces, img_res, img_res)
    labels = face_labels.to(device=vertices.device, dtype=torch.long)
    parts = labels[frags.face_index.clamp_min(0)] * frags.mask  # (B, R, R), 0 on the background
    return frags.mask, parts


def crop_box(center: np.ndarray, scale: float, img_res: int) -> tuple[np.ndarray, np.ndarray]:
    """SPIN's crop box in original pixels: upper-left and bottom-right integer corners (ul, br) of the
    `200 * scale` square around `center`, exactly as utils/imutils.py's transform() rounds them: the box of
    compress.data.crop.spin_crop, which the evaluation crops with."""
    return spin_box(center, scale, img_res)


def resize_nearest(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a (H, W) label image to `shape` (PIL's NEAREST sampling: pixel centres)."""
    h, w = img.shape[:2]
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return img[rows[:, None], cols[None, :]]


def uncrop(img: np.ndarray, center: np.ndarray, scale: float, orig_shape: tuple[int, int], *,
           spin_rounding: bool = False) -> np.ndarray:
    """Paste a square crop render (R, R) back into a zero image of `orig_shape` (H, W), nearest neighbour.

    Default: the exact inverse of compress.data.crop's continuous crop geometry (box of side 200*scale centred
    at `center`, pixel centres at +0.5): each original pixel takes the crop pixel its centre falls in.
    `spin_rounding=True` reproduces SPIN's uncrop literally (integer box from truncated corners, then a
    nearest-neighbour resize of the render to the box), which inverts SPIN's own integer-truncated crop
    (`spin_crop`, what evaluation crops with); against the continuous warp it would be off by up to one original
    pixel.
    """
    res = img.shape[0]
    out_shape = tuple(int(s) for s in orig_shape[:2])
    if spin_rounding:
        return _uncrop_spin(img, center, scale, out_shape)
    h = 200.0 * float(scale)
    c = np.asarray(center, dtype=np.float64)
    cols = np.floor((np.arange(out_shape[1]) + 0.5 - c[0]) * res / h + res / 2).astype(np.int64)
    rows = np.floor((np.arange(out_shape[0]) + 0.5 - c[1]) * res / h + res / 2).astype(np.int64)
    out = img[np.clip(rows, 0, res - 1)[:, None], np.clip(cols, 0, res - 1)[None, :]]
    inside = ((rows >= 0) & (rows < res))[:, None] & ((cols >= 0) & (cols < res))[None, :]
    if out.ndim == 3:
        inside = inside[..., None]
    return np.where(inside, out, np.zeros((), dtype=img.dtype))


def _uncrop_spin(img: np.ndarray, center: np.ndarray, scale: float, orig_shape: tuple[int, int]) -> np.ndarray:
    res = img.shape[0]
    ul, br = crop_box(center, scale, res)
    crop_h, crop_w = int(br[1] - ul[1]), int(br[0] - ul[0])
    out = np.zeros(orig_shape + img.shape[2:], dtype=img.dtype)
    if crop_h <= 0 or crop_w <= 0:
        return out
    big = resize_nearest(img, (crop_h, crop_w))
    H, W = out.shape[:2]
    x0, x1 = max(0, int(ul[0])), min(W, int(br[0]))
    y0, y1 = max(0, int(ul[1])), min(H, int(br[1]))
    if x1 <= x0 or y1 <= y0:
        return out
    out[y0:y1, x0:x1] = big[y0 - int(ul[1]):y1 - int(ul[1]), x0 - int(ul[0]):x1 - int(ul[0])]
    return out
