"""`compress data synth`: a complete SPIN-layout data root from the procedural body model, no licensed file needed.

Every sample: sampled shape (betas), a body pose inside per-joint angle limits, a global orientation, a crop
box and an image of the posed mesh (per-part colours, Lambert shading) over a random textured background.

Camera (exactly SPIN's, spin_protocol.md section 3, so ground truth and evaluation agree): for a sample with
box side `h = 200*scale` px centred at `center`, the image is a pinhole projection with focal `5000*h/224` px and
principal point `center`, of the mesh translated by `[tx, ty, 2*5000/(224*s)]`. Cropping the box to 224 px
therefore gives exactly the image SPIN's weak-perspective camera (s, tx, ty) renders (stored as the extra npz
key `cam` on the evaluation files). With s ~ 1 the camera is ~45 m away: nearly orthographic, as SPIN assumes.
The box is 1.2x the extent of the 2D joints (SPIN's preprocessing rule), jittered.

Coordinates: continuous pixels, pixel (row i, col j) covers [j, j+1) x [i, i+1) (compress.raster and
compress.data.crop); `part`/`openpose`/`center` are in these coordinates.

Ground truth: `S` = the body's 24 SPIN joints in the camera frame of the image, centred at the Pelvis (MPII)
joint (= H36M regressor row 0), validity 1 on the 17 joints of J24_TO_J17; `pose` has the global orientation in
the camera frame. 3DPW samples are rendered with the gendered models, everything else with the neutral model.
Evaluation files also carry the GT `pose`, `shape` and `cam` (extra keys) so a ground-truth "model" can be
evaluated. The gendered models are the neutral one with a shifted shape mean (body.GENDER_BETAS), so a 3DPW
sample's mesh equals the neutral model's with betas `shape + GENDER_BETAS[gender]`; with the GT betas as they are
(what SPIN's protocol does to a perfect prediction) the neutral/gendered gap is ~18 mm MPJPE, ~6 mm PA-MPJPE.
`static_fits/<dataset>_fits.npy` (N, 82) hold the pose+betas of the training sets (SPIN's static-fits layout), for
trainers that use fits where `has_smpl` is 0: exact, except deliberately bad ones in the sets without SMPL ground
truth (h36m and the in-the-wild sets), as SPIN's SMPLify fits include failures: sample i with i % 10 == 1 has a
wrong pose (another body pose, turned 45-75 deg in the image plane: SMPLify reprojection loss ~400 or more, which
SPIN's validity rule rejects) and i % 10 == 2 one beta of magnitude 3.5-5 (SPIN zeroes the betas of such fits).
Exact fits score ~0-3 (OpenPose noise), far below SPIN's threshold of 100.

LSP test: `upi-s1h/data/lsp/imXXXX_segmentation.png` (0 background, 255 body) and
`..._part_segmentation.png` (0 background, 1..6 = compress.data.body.LSP_PART_NAMES, 255 = ignore on part
borders), at the image's size.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from compress import constants as C
from compress.data import body as body_mod
from compress.data.scene import Renderer, backgrounds
from compress.errors import UserError
from compress.geometry import rotmat_to_axis_angle
from compress.recipe import DEFAULT_DATA_ROOT
from compress.smpl import SMPL

log = logging.getLogger(__name__)

FORMAT_VERSION = 3  # 2: smpl_mean_params.npz holds the training poses' mean; 3: bad static fits
MANIFEST = "synthetic.json"
H36M_CAMERAS = ("54138969", "55011271", "58860488", "60457274")  # P2 uses the last one, as SPIN
J17_SET = sorted(set(C.J24_TO_J17))
LSP_SET = list(range(14))
MPII_SET = list(range(16))
COCO_SET = list(range(12)) + [19, 20, 21, 22, 23]

# Counts per npz for each size. h36m eval counts are frames; P1 has four views of each, P2 the last view.
SIZES = {
    "small": {"3dpw_test": 4, "h36m_valid": 2, "mpi_inf_3dhp_valid": 4, "lsp_dataset_test": 4, "h36m_train": 6,
              "lsp_dataset_original_train": 4, "mpii_train": 4, "hr-lspet_train": 4, "coco_2014_train": 4,
              "mpi_inf_3dhp_train": 4},
    "default": {"3dpw_test": 150, "h36m_valid": 36, "mpi_inf_3dhp_valid": 150, "lsp_dataset_test": 150,
                "h36m_train": 700, "lsp_dataset_original_train": 250, "mpii_train": 450, "hr-lspet_train": 250,
                "coco_2014_train": 450, "mpi_inf_3dhp_train": 300},
}
EVAL_FILES = ("3dpw_test", "h36m_valid", "mpi_inf_3dhp_valid", "lsp_dataset_test")
# "large": default's evaluation sets (the same files: each file has its own random stream and the evaluation sets
# are drawn first) and ten times its training images (24,000), for training runs that would overfit 2,400.
SIZES["large"] = {k: v if k in EVAL_FILES else 10 * v for k, v in SIZES["default"].items()}
BATCH = 32
BAD_FIT_EVERY = 10  # static fits without SMPL ground truth: i % 10 == 1 wrong pose, i % 10 == 2 |beta| > 3
WRONG_POSE, EXTREME_BETAS = 1, 2


# ----------------------------------------------------------------------------------------------- poses


def _rot(axis: int, angle: np.ndarray) -> np.ndarray:
    """Rotation matrices (N, 3, 3) about a coordinate axis."""
    c, s = np.cos(angle), np.sin(angle)
    r = np.zeros(angle.shape + (3, 3))
    i, j = [(1, 2), (2, 0), (0, 1)][axis]
    r[..., axis, axis] = 1
    r[..., i, i], r[..., j, j], r[..., i, j], r[..., j, i] = c, c, -s, s
    return r


def _aa(rotmat: np.ndarray) -> np.ndarray:
    """(N, 3, 3) -> axis-angle (N, 3), numerically safe away from pi (our limits stay below ~2.6 rad)."""
    return rotmat_to_axis_angle(torch.from_numpy(rotmat)).numpy()


# Per joint, per axis (x, y, z of the parent frame at rest: x = subject's left, y up, z forward):
# (mean, sd, lo, hi) in radians. Hip/knee/spine flexion are about x; arm raise about z; elbow about y.
_L, _R = 1, -1


def _limits() -> dict[int, list[tuple[float, float, float, float]]]:
    z = (0.0, 0.05, -0.1, 0.1)
    lim = {j: [z, z, z] for j in range(1, 24)}
    for hip, s in ((1, _L), (2, _R)):
        lim[hip] = [(-0.25, 0.45, -1.8, 0.45), (0.0, 0.2, -0.5, 0.5), (0.08 * s, 0.15, *sorted((-0.25 * s, 0.8 * s)))]
    for knee in (4, 5):
        lim[knee] = [(0.35, 0.45, 0.0, 2.3), (0.0, 0.03, -0.05, 0.05), (0.0, 0.03, -0.05, 0.05)]
    for ankle in (7, 8):
        lim[ankle] = [(0.0, 0.2, -0.5, 0.6), (0.0, 0.1, -0.3, 0.3), (0.0, 0.1, -0.25, 0.25)]
    for spine in (3, 6, 9):
        lim[spine] = [(0.06, 0.12, -0.25, 0.45), (0.0, 0.1, -0.3, 0.3), (0.0, 0.07, -0.2, 0.2)]
    lim[12] = [(0.05, 0.15, -0.4, 0.5), (0.0, 0.2, -0.6, 0.6), (0.0, 0.1, -0.3, 0.3)]
    lim[15] = [(0.0, 0.12, -0.3, 0.4), (0.0, 0.15, -0.5, 0.5), (0.0, 0.08, -0.25, 0.25)]
    for collar, s in ((13, _L), (14, _R)):
        lim[collar] = [(0.0, 0.05, -0.15, 0.15), (0.0, 0.08, -0.25, 0.25), (0.0, 0.08, -0.2, 0.3) if s > 0 else
                       (0.0, 0.08, -0.3, 0.2)]
    for sh, s in ((16, _L), (17, _R)):
        # z: left arm up is +z (right: -z); y: left arm forward is -y (right: +y)
        lim[sh] = [(0.0, 0.4, -1.0, 1.0), (-0.3 * s, 0.6, *sorted((-1.5 * s, 0.6 * s))),
                   (-0.9 * s, 0.6, *sorted((-1.4 * s, 1.3 * s)))]
    for el, s in ((18, _L), (19, _R)):
        lim[el] = [(0.0, 0.3, -0.7, 0.7), (-0.6 * s, 0.6, *sorted((-2.4 * s, 0.0))), (0.0, 0.04, -0.08, 0.08)]
    for wr in (20, 21):
        lim[wr] = [(0.0, 0.2, -0.5, 0.5), (0.0, 0.2, -0.5, 0.5), (0.0, 0.3, -0.8, 0.8)]
    return lim


_LIMITS = _limits()


def sample_body_pose(rng: np.random.Generator, n: int, *, spread: float = 1.0) -> np.ndarray:
    """Body rotations (n, 23, 3, 3) for joints 1..23 within per-joint angle limits (elbows/knees bend one way).

    `spread` scales the spread around each joint's mean (H36M-like sets are calmer than in-the-wild ones).
    """
    out = np.zeros((n, 23, 3, 3))
    for j in range(1, 24):
        r = np.broadcast_to(np.eye(3), (n, 3, 3))
        for axis, (mean, sd, lo, hi) in zip((2, 1, 0), reversed(_LIMITS[j])):  # R = Rx Ry Rz
            ang = np.clip(mean + spread * sd * rng.standard_normal(n), lo, hi)
            r = _rot(axis, ang) @ r
        out[:, j - 1] = r
    return out


def sample_global_orient(rng: np.random.Generator, n: int, *, yaw_sd: float | None) -> np.ndarray:
    """Camera-frame orientations (n, 3, 3): 180 deg about x (SPIN: y down, the body faces the camera), a yaw
    (uniform when yaw_sd is None) and small pitch/roll."""
    yaw = rng.uniform(-np.pi, np.pi, n) if yaw_sd is None else yaw_sd * rng.standard_normal(n)
    pitch = np.clip(0.12 * rng.standard_normal(n), -0.35, 0.35)
    roll = np.clip(0.08 * rng.standard_normal(n), -0.25, 0.25)
    flip = np.diag([1.0, -1.0, -1.0])
    return flip @ _rot(1, yaw) @ _rot(0, pitch) @ _rot(2, roll)


# ----------------------------------------------------------------------------------------------- samples


@dataclass
class _Batch:
    pose: np.ndarray  # (n, 72) axis-angle, global orientation in the camera frame
    betas: np.ndarray  # (n, 10)
    gender: np.ndarray  # (n,) 'm'/'f'/'n'
    cam: np.ndarray  # (n, 3) weak perspective (s, tx, ty)
    center: np.ndarray  # (n, 2)
    scale: np.ndarray  # (n,)
    img_hw: np.ndarray  # (n, 2)
    joints2d: np.ndarray  # (n, 49, 2) image pixels
    S: np.ndarray  # (n, 24, 4)
    images: list  # uint8 (H, W, 3)
    masks: list  # uint8 (H, W) 0/255
    parts: list  # uint8 (H, W) 0..6 / 255


class _Synth:
    def __init__(self, root: Path, img_size: int | None, progress: Callable[[str, int, int], None] | None = None,
                 total: int = 0):
        self.root = root
        self.img_size = img_size
        self.progress, self.total, self.done, self.stage = progress, total, 0, ""
        self.models = {g: SMPL(root, gender=g) for g in ("neutral", "male", "female")}
        for m in self.models.values():
            m.eval()
        body = body_mod.build_body("neutral")
        self.renderer = Renderer(body.smpl["f"], body)

    def batch(self, rng: np.random.Generator, n: int, *, spread: float, yaw_sd: float | None,
              genders: np.ndarray | None = None, rotations: np.ndarray | None = None,
              body_pose: np.ndarray | None = None, betas: np.ndarray | None = None, masks: bool = False) -> _Batch:
        """Sample (or take) n bodies, choose boxes and cameras, render."""
        if body_pose is None:
            body_pose = sample_body_pose(rng, n, spread=spread)
        if betas is None:
            betas = np.clip(0.8 * rng.standard_normal((n, 10)), -2.5, 2.5)
        glob = rotations if rotations is not None else sample_global_orient(rng, n, yaw_sd=yaw_sd)
        rotmat = np.concatenate([glob[:, None], body_pose], axis=1)  # (n, 24, 3, 3)
        genders = np.full(n, "n") if genders is None else genders
        verts = np.zeros((n, C.NUM_VERTICES, 3))
        joints = np.zeros((n, 49, 3))
        for g, name in (("n", "neutral"), ("m", "male"), ("f", "female")):
            sel = np.nonzero(genders == g)[0]
            if sel.size:
                with torch.no_grad():
                    out = self.models[name](torch.tensor(rotmat[sel], dtype=torch.float32),
                                            torch.tensor(betas[sel], dtype=torch.float32))
                verts[sel], joints[sel] = out.vertices.double().numpy(), out.joints.double().numpy()

        # Box: 1.2 x the 2D extent of the 24 GT joints (weak perspective, metres), jittered; image size and
        # box size in pixels; the camera follows from the box (module doc).
        j24 = joints[:, 25:]
        lo, hi = j24[..., :2].min(1), j24[..., :2].max(1)
        extent_m = 1.2 * (hi - lo).max(1) * rng.uniform(0.97, 1.12, n)
        mid = (lo + hi) / 2 + rng.normal(0, 0.025, (n, 2)) * extent_m[:, None]
        if self.img_size:
            hw = np.full((n, 2), self.img_size)
        else:
            hw = rng.integers(160, 241, (n, 2))
        box_px = rng.uniform(0.8, 1.1, n) * hw.min(1)  # the person fills the picture, as in LSP-style crops
        margin = box_px / 2.4
        center = np.stack([rng.uniform(margin, hw[:, 1] - margin), rng.uniform(margin, hw[:, 0] - margin)], 1)
        s = 2.0 / extent_m
        tz = 2 * C.FOCAL_LENGTH / (C.IMG_RES * s)
        trans = np.concatenate([-mid, tz[:, None]], 1)  # (n, 3)
        cam = np.concatenate([s[:, None], -mid], 1)
        f_img = C.FOCAL_LENGTH * box_px / C.IMG_RES

        def project(p):  # (n, k, 3) body points -> (n, k, 3) pixels + depth
            q = p + trans[:, None]
            return np.concatenate([f_img[:, None, None] * q[..., :2] / q[..., 2:] + center[:, None], q[..., 2:]], -1)

        pix = project(verts)
        joints2d = project(joints)[..., :2]
        size = int(hw.max())
        light = torch.nn.functional.normalize(torch.tensor(
            np.stack([rng.normal(0, 0.5, n), rng.normal(-0.4, 0.4, n), -np.ones(n)], 1), dtype=torch.float32), dim=-1)
        with torch.no_grad():
            colour, mask, part, _ = self.renderer.render(torch.tensor(pix, dtype=torch.float32),
                                                         torch.tensor(verts + trans[:, None], dtype=torch.float32),
                                                         size, light)
            bg = backgrounds(rng, n, size)
            img = torch.where(mask[..., None], colour, bg)
            img = (img.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()
        mask_np, part_np = mask.numpy(), part.numpy().astype(np.uint8)
        images, masks_out, parts_out = [], [], []
        for i in range(n):
            h, w = int(hw[i, 0]), int(hw[i, 1])
            images.append(np.ascontiguousarray(img[i, :h, :w]))
            if masks:
                masks_out.append((mask_np[i, :h, :w] * 255).astype(np.uint8))
                parts_out.append(_ignore_part_borders(part_np[i, :h, :w]))

        S = np.zeros((n, 24, 4))
        cam_frame = j24 - j24[:, 14:15]  # root-centred at Pelvis (MPII) = H36M row 0
        S[:, J17_SET, :3] = cam_frame[:, J17_SET]
        S[:, J17_SET, 3] = 1.0
        pose = _aa(rotmat.reshape(-1, 3, 3)).reshape(n, 72)
        return _Batch(pose, betas, genders, cam, center, box_px / 200.0, hw, joints2d, S, images, masks_out, parts_out)


def _ignore_part_borders(part: np.ndarray) -> np.ndarray:
    """Mark some foreground pixels whose right neighbour is another part (every other row) as 255 (ignore):
    UP-3D's annotations leave some border pixels unlabelled, and the evaluation must skip them."""
    out = part.copy()
    right = (part[:, :-1] > 0) & (part[:, 1:] > 0) & (part[:, :-1] != part[:, 1:])
    right[1::2] = False
    out[:, :-1][right] = 255
    return out


def _inside(xy: np.ndarray, hw: np.ndarray) -> np.ndarray:
    """(n, k, 2) pixel points inside images of size hw (n, 2) = (H, W) -> (n, k) bool."""
    return (xy >= 0).all(-1) & (xy[..., 0] < hw[:, None, 1]) & (xy[..., 1] < hw[:, None, 0])


def _keypoints(b: _Batch, annotated: list[int]) -> np.ndarray:
    """J24 `part` (n, 24, 3): pixels + visibility (annotated joints inside the image)."""
    n = len(b.scale)
    part = np.zeros((n, 24, 3))
    xy = b.joints2d[:, 25:]
    inside = _inside(xy, b.img_hw)
    vis = np.zeros((n, 24), bool)
    vis[:, annotated] = True
    vis &= inside
    part[..., :2] = np.where(vis[..., None], xy, 0.0)
    part[..., 2] = vis
    return part


def _openpose(rng: np.random.Generator, b: _Batch) -> np.ndarray:
    """BODY_25 detections (n, 25, 3): the body's OpenPose joints with pixel noise, confidences, misses."""
    n = len(b.scale)
    xy = b.joints2d[:, :25] + rng.normal(0, 1.5, (n, 25, 2))
    conf = rng.uniform(0.3, 0.95, (n, 25))
    keep = _inside(xy, b.img_hw) & (rng.uniform(size=(n, 25)) > 0.12)
    return np.concatenate([xy * keep[..., None], (conf * keep)[..., None]], -1)


# ----------------------------------------------------------------------------------------------- datasets


def _save_images(folder: Path, names: list[str], images: list[np.ndarray]) -> None:
    for name, im in zip(names, images):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(path, quality=92)


def _save_png(folder: Path, names: list[str], images: list[np.ndarray]) -> None:
    for name, im in zip(names, images):
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(path)


def _concat(batches: list[_Batch]) -> dict:
    out = {}
    for f in ("pose", "betas", "gender", "cam", "center", "scale", "img_hw", "joints2d", "S"):
        out[f] = np.concatenate([getattr(b, f) for b in batches])
    return out


def _generate(synth: _Synth, rng: np.random.Generator, n: int, *, masks: bool = False, **kw) -> list[_Batch]:
    out = []
    for start in range(0, n, BATCH):
        k = min(BATCH, n - start)
        sub = {key: (v[start:start + k] if isinstance(v, np.ndarray) else v) for key, v in kw.items()}
        out.append(synth.batch(rng, k, masks=masks, **sub))
        synth.done += k
        if synth.progress is not None:
            synth.progress(synth.stage, synth.done, synth.total)
    return out


def _write_npz(root: Path, stem: str, fields: dict) -> None:
    path = root / "dataset_extras" / f"{stem}.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **fields)


def _images_of(batches: list[_Batch]) -> list[np.ndarray]:
    return [im for b in batches for im in b.images]


def _make_itw(synth, rng, root, stem, folder, n, names, annotated, *, fits: dict) -> None:
    batches = _generate(synth, rng, n, spread=1.0, yaw_sd=1.1)
    d = _concat(batches)
    _save_images(root / folder, names, _images_of(batches))
    rng_op = np.random.default_rng(rng.integers(2**31))
    part = np.concatenate([_keypoints(b, annotated) for b in batches])
    openpose = np.concatenate([_openpose(rng_op, b) for b in batches])
    _write_npz(root, stem, {"imgname": np.array(names), "center": d["center"], "scale": d["scale"], "part": part,
                            "openpose": openpose, "has_smpl": np.zeros(n, np.int64)})
    fits[stem] = np.concatenate([d["pose"], d["betas"]], 1)


def _gt_extras(d: dict) -> dict:
    return {"pose": d["pose"], "shape": d["betas"], "cam": d["cam"]}


def _build_all(synth: _Synth, root: Path, counts: dict, seed: int) -> dict[str, int]:
    seeds = np.random.SeedSequence(seed)
    names = list(counts)
    rngs = {name: np.random.default_rng(s) for name, s in zip(names, seeds.spawn(len(names)))}
    written: dict[str, int] = {}
    fits: dict[str, np.ndarray] = {}

    def start(stem):
        synth.stage = stem
        return time.time()

    def done(stem, n, t0):
        written[stem] = n
        log.info("synthetic: %s (%d samples) in %.1fs (process CPU so far %.1fs)", stem, n, time.time() - t0,
                 time.process_time())

    # 3DPW: gendered models, SMPL GT, walking-like poses, mostly facing the camera.
    t0, n, rng = start("3dpw_test"), counts["3dpw_test"], rngs["3dpw_test"]
    genders = np.where(rng.uniform(size=n) < 0.5, "m", "f")
    batches = _generate(synth, rng, n, spread=0.6, yaw_sd=0.9, genders=genders)
    d = _concat(batches)
    imgnames = [f"imageFiles/downtown_synth_{i // 40:02d}/image_{i % 40:05d}.jpg" for i in range(n)]
    _save_images(root / C.IMAGE_FOLDERS["3dpw"], imgnames, _images_of(batches))
    _write_npz(root, "3dpw_test", {"imgname": np.array(imgnames), "center": d["center"], "scale": d["scale"],
                                   "pose": d["pose"], "shape": d["betas"], "gender": d["gender"], "cam": d["cam"]})
    done("3dpw_test", n, t0)

    # H36M P1/P2: the same frames seen by four cameras around the subject; P2 = the last camera.
    t0, n, rng = start("h36m_valid_protocol1"), counts["h36m_valid"], rngs["h36m_valid"]
    body_pose = sample_body_pose(rng, n, spread=0.6)
    betas = np.clip(0.8 * rng.standard_normal((n, 10)), -2.5, 2.5)
    world = sample_global_orient(rng, n, yaw_sd=None)
    views = []
    for k, camid in enumerate(H36M_CAMERAS):
        # camera k sees the scene from another yaw about the world's vertical: R = flip Ry flip^T world
        flip = np.diag([1.0, -1.0, -1.0])
        yaw = k * np.pi / 2 + (0.2 * rng.standard_normal() if k else 0.0)
        glob = flip @ _rot(1, np.full(n, yaw)) @ flip @ world
        bs = _generate(synth, rng, n, spread=0.6, yaw_sd=None, rotations=glob, body_pose=body_pose, betas=betas)
        subj = ["S9" if i % 2 == 0 else "S11" for i in range(n)]
        names_k = [f"images/{subj[i]}_Synth_1.{camid}_{5 * i:06d}.jpg" for i in range(n)]
        _save_images(root / C.IMAGE_FOLDERS["h36m"], names_k, _images_of(bs))
        views.append((names_k, _concat(bs)))
    p1 = {f: np.concatenate([v[1][f] for v in views]) for f in views[0][1]}
    p1_names = [nm for v in views for nm in v[0]]
    p2_names, p2 = views[-1]
    for stem, names_, d in (("h36m_valid_protocol1", p1_names, p1), ("h36m_valid_protocol2", p2_names, p2)):
        _write_npz(root, stem, {"imgname": np.array(names_), "center": d["center"], "scale": d["scale"], "S": d["S"],
                                **_gt_extras(d)})
        written[stem] = len(names_)
    done("h36m_valid_protocol1", len(p1_names), t0)

    # MPI-INF-3DHP test: 17-joint GT, calmer poses, any yaw.
    t0, n, rng = start("mpi_inf_3dhp_valid"), counts["mpi_inf_3dhp_valid"], rngs["mpi_inf_3dhp_valid"]
    batches = _generate(synth, rng, n, spread=0.8, yaw_sd=None)
    d = _concat(batches)
    imgnames = [f"mpi_inf_3dhp_test_set/TS{1 + i % 6}/imageSequence/img_{1 + i // 6:06d}.jpg" for i in range(n)]
    _save_images(root / C.IMAGE_FOLDERS["mpi-inf-3dhp"], imgnames, _images_of(batches))
    part = np.concatenate([_keypoints(b, J17_SET) for b in batches])
    _write_npz(root, "mpi_inf_3dhp_valid", {"imgname": np.array(imgnames), "center": d["center"], "scale": d["scale"],
                                            "part": part, "S": d["S"], **_gt_extras(d)})
    done("mpi_inf_3dhp_valid", n, t0)

    # LSP test: images 1001.., silhouettes and part segmentations in upi-s1h.
    t0, n, rng = start("lsp_dataset_test"), counts["lsp_dataset_test"], rngs["lsp_dataset_test"]
    batches = _generate(synth, rng, n, masks=True, spread=1.0, yaw_sd=1.1)
    d = _concat(batches)
    ids = [1001 + i for i in range(n)]
    imgnames = [f"images/im{i:04d}.jpg" for i in ids]
    masknames = [f"data/lsp/im{i:04d}_segmentation.png" for i in ids]
    partnames = [f"data/lsp/im{i:04d}_part_segmentation.png" for i in ids]
    _save_images(root / C.IMAGE_FOLDERS["lsp"], imgnames, _images_of(batches))
    _save_png(root / C.UPI_S1H_FOLDER, masknames, [m for b in batches for m in b.masks])
    _save_png(root / C.UPI_S1H_FOLDER, partnames, [p for b in batches for p in b.parts])
    part = np.concatenate([_keypoints(b, LSP_SET) for b in batches])
    _write_npz(root, "lsp_dataset_test", {"imgname": np.array(imgnames), "maskname": np.array(masknames),
                                          "partname": np.array(partnames), "center": d["center"], "scale": d["scale"],
                                          "part": part, **_gt_extras(d)})
    done("lsp_dataset_test", n, t0)

    # Training sets.
    t0, n, rng = start("h36m_train"), counts["h36m_train"], rngs["h36m_train"]
    batches = _generate(synth, rng, n, spread=0.6, yaw_sd=None)
    d = _concat(batches)
    subj = ["S1", "S5", "S6", "S7", "S8"]
    imgnames = [f"images/{subj[i % 5]}_Synth_1.{H36M_CAMERAS[(i // 5) % 4]}_{5 * i:06d}.jpg" for i in range(n)]
    _save_images(root / C.IMAGE_FOLDERS["h36m"], imgnames, _images_of(batches))
    part = np.concatenate([_keypoints(b, J17_SET) for b in batches])
    _write_npz(root, "h36m_train", {"imgname": np.array(imgnames), "center": d["center"], "scale": d["scale"],
                                    "part": part, "S": d["S"]})
    fits["h36m"] = np.concatenate([d["pose"], d["betas"]], 1)
    done("h36m_train", n, t0)

    itw = [
        ("lsp_dataset_original_train", "lsp-orig", lambda i: f"images/im{i + 1:04d}.jpg", LSP_SET),
        ("mpii_train", "mpii", lambda i: f"images/{100000000 + 7919 * i:09d}.jpg", MPII_SET),
        ("hr-lspet_train", "lspet", lambda i: f"im{i + 1:05d}.jpg", LSP_SET),
        ("coco_2014_train", "coco", lambda i: f"train2014/COCO_train2014_{1000 + 37 * i:012d}.jpg", COCO_SET),
    ]
    for stem, key, namer, annotated in itw:
        t0, n = start(stem), counts[stem]
        fit_store: dict = {}
        _make_itw(synth, rngs[stem], root, stem, C.IMAGE_FOLDERS[key], n, [namer(i) for i in range(n)], annotated,
                  fits=fit_store)
        fits[key] = fit_store[stem]
        done(stem, n, t0)

    t0, n, rng = start("mpi_inf_3dhp_train"), counts["mpi_inf_3dhp_train"], rngs["mpi_inf_3dhp_train"]
    batches = _generate(synth, rng, n, spread=0.8, yaw_sd=None)
    d = _concat(batches)
    imgnames = [f"S{1 + i % 8}/Seq{1 + (i // 8) % 2}/imageFrames/video_{(i // 16) % 9}/frame_{1 + i:06d}.jpg"
                for i in range(n)]
    _save_images(root / C.IMAGE_FOLDERS["mpi-inf-3dhp"], imgnames, _images_of(batches))
    part = np.concatenate([_keypoints(b, J17_SET) for b in batches])
    openpose = np.concatenate([_openpose(np.random.default_rng(rng.integers(2**31)), b) for b in batches])
    _write_npz(root, "mpi_inf_3dhp_train", {"imgname": np.array(imgnames), "center": d["center"], "scale": d["scale"],
                                            "part": part, "openpose": openpose, "S": d["S"], "pose": d["pose"],
                                            "shape": d["betas"], "has_smpl": np.ones(n, np.int64)})
    fits["mpi-inf-3dhp"] = np.concatenate([d["pose"], d["betas"]], 1)
    done("mpi_inf_3dhp_train", n, t0)

    rng = np.random.default_rng([seed, BAD_FIT_EVERY])  # its own stream: the rendered samples stay as they were
    for key in fits:
        if key != "mpi-inf-3dhp":  # the one training set with SMPL ground truth: its fits are never used
            fits[key] = spoil_fits(fits[key], rng)
    (root / "static_fits").mkdir(exist_ok=True)
    for key, arr in fits.items():
        np.save(root / "static_fits" / f"{key}_fits.npy", arr.astype(np.float32))  # SPIN: <dataset key>_fits.npy
    _write_mean_params(root, np.concatenate(list(fits.values())))
    return written


def spoil_fits(fits: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of the fits (N, 82) with deliberately bad rows (module doc): i % BAD_FIT_EVERY == WRONG_POSE gets a
    new body pose and its global orientation turned 45-75 deg about the camera's axis (in the image plane; from
    ~90 deg on, the estimated camera tends to land behind the body, which compress.data.fits rejects separately);
    == EXTREME_BETAS gets one beta of magnitude 3.5-5."""
    out = fits.copy()
    rows = np.arange(len(out)) % BAD_FIT_EVERY
    wrong, extreme = np.nonzero(rows == WRONG_POSE)[0], np.nonzero(rows == EXTREME_BETAS)[0]
    turn = _rot(2, rng.uniform(np.pi / 4, 5 * np.pi / 12, len(wrong)) * rng.choice([-1.0, 1.0], len(wrong)))
    glob = Rotation.from_rotvec(out[wrong, :3]).as_matrix()
    out[wrong, :3] = Rotation.from_matrix(turn @ glob).as_rotvec()
    out[wrong, 3:72] = _aa(sample_body_pose(rng, len(wrong)).reshape(-1, 3, 3)).reshape(len(wrong), 69)
    size = rng.choice([-1.0, 1.0], len(extreme)) * rng.uniform(3.5, 5.0, len(extreme))
    out[extreme, 72 + rng.integers(0, 10, len(extreme))] = size
    return out


def _write_mean_params(root: Path, fits: np.ndarray) -> None:
    """smpl_mean_params.npz from the training fits (N, 82): chordal mean body pose, mean betas (as SPIN's file)."""
    body = Rotation.from_rotvec(fits[:, 3:72].reshape(-1, 3)).as_matrix().reshape(len(fits), 23, 3, 3)
    params = body_mod.mean_params(body_mod.mean_rotation(body), fits[:, 72:].mean(0))
    np.savez(root / body_mod.MEAN_PARAMS_FILE, **params)


def _complete(root: Path, manifest: dict) -> bool:
    path = root / MANIFEST
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError:
        return False
    keys = ("format_version", "size", "seed", "img_size")
    return old.get("complete", False) and all(old.get(k) == manifest[k] for k in keys) and all(
        (root / "dataset_extras" / f"{stem}.npz").is_file() for stem in old.get("files", {}))


def total_samples(size: str) -> int:
    """Number of rendered images of a root of this size (H36M eval frames are seen by four cameras)."""
    counts = SIZES[size]
    return sum(counts.values()) + 3 * counts["h36m_valid"]


def default_root_missing(root: str | Path) -> bool:
    """True when `root` is the default data root (recipe.DEFAULT_DATA_ROOT) and holds no complete synthetic root
    that generate_root wrote (absent, empty, or interrupted): the commands then generate it on first use."""
    root = Path(root)
    if root.resolve() != Path(DEFAULT_DATA_ROOT).resolve():
        return False
    if not root.exists() or not any(root.iterdir()):
        return True
    try:
        return not json.loads((root / MANIFEST).read_text()).get("complete", False)
    except (OSError, json.JSONDecodeError):
        return False  # not ours (e.g. a real root placed there): never regenerated over


def generate_root(out: str | Path, *, size: str = "default", seed: int = 0, img_size: int | None = None,
                  force: bool = False, progress: Callable[[str, int, int], None] | None = None) -> Path:
    """Write a complete SPIN-layout synthetic data root to `out` and return its path.

    size: "small" (a handful of samples per file, seconds), "default" (~2.4k training and ~150 evaluation
    images per set) or "large" (default's evaluation sets, 24k training images). `img_size` fixes square images
    (default: random 160-240 px sides). An existing complete root with the same size/seed/img_size is kept unless
    `force`. `progress(npz_stem, done, total)` is called after every rendered batch, counting images over the whole
    root (total = total_samples(size)).
    """
    if size not in SIZES:
        raise UserError(f"unknown synthetic size {size!r}; choose one of {', '.join(SIZES)}")
    if img_size is not None and not 64 <= int(img_size) <= 1024:
        raise UserError(f"img_size must be between 64 and 1024 px, got {img_size}")
    root = Path(out)
    manifest = {"format_version": FORMAT_VERSION, "size": size, "seed": int(seed),
                "img_size": None if img_size is None else int(img_size)}
    if not force and _complete(root, manifest):
        log.info("synthetic root %s is complete (size=%s, seed=%d); use force to regenerate", root, size, seed)
        return root
    if root.exists() and any(root.iterdir()):
        if not (root / MANIFEST).is_file():  # never wipe a folder we did not write (e.g. a real SPIN root)
            raise UserError(f"{root} exists and is not a synthetic data root ({MANIFEST} missing); choose another "
                            "--out or empty the folder")
        for sub in ("dataset_extras", "static_fits", "smpl", C.UPI_S1H_FOLDER, *set(C.IMAGE_FOLDERS.values())):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    # Written first (incomplete) so an interrupted run is recognised as ours and regenerated next time.
    (root / MANIFEST).write_text(json.dumps({**manifest, "complete": False}, indent=2))
    t0 = time.time()
    log.info("synthetic: writing the body model to %s", root)
    body_mod.write_body_files(root)
    # One thread: the work is many small batched ops, and on a shared machine extra threads mostly spin
    # (measured: 15 ms of CPU per image with one thread, ~100 ms with two under load).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        synth = _Synth(root, img_size, progress, total_samples(size))
        written = _build_all(synth, root, SIZES[size], seed)
    finally:
        torch.set_num_threads(threads)
    manifest["files"] = written
    manifest["complete"] = True
    manifest["seconds"] = round(time.time() - t0, 1)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2))
    log.info("synthetic root ready: %s (%d files, %.1fs)", root, len(written), time.time() - t0)
    return root
