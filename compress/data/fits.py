"""SPIN's static fits: SMPL targets for training samples without SMPL ground truth, and SPIN's rule that keeps
only the fits that agree with the sample's 2D keypoints (spin_protocol.md section 6)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from compress.constants import FOCAL_LENGTH, IMG_RES, JOINT_NAMES
from compress.data.crop import augment_pose
from compress.errors import UserError
from compress.geometry import perspective_projection

N_OPENPOSE = 25  # joints 25..48 of the 49 are the 24 ground-truth joints the translation is estimated from
GMOF_SIGMA = 100.0  # SMPLify's robust reprojection error scale, in pixels
# SMPLify gives these joints no weight (hip definitions differ between SMPL, OpenPose and the datasets)
FIT_IGNORED = [JOINT_NAMES.index(n) for n in ("OP Neck", "OP RHip", "OP LHip", "Right Hip", "Left Hip")]


class StaticFits:
    """SPIN's static fits `<root>/static_fits/<dataset>_fits.npy` ((N, 82): 72 pose + 10 betas per training sample):
    SMPL targets for samples without SMPL ground truth, rotated and flipped like the item. No SMPLify runs in the
    loop, so these files never change. As in SPIN, fits with any |beta| > 3 have their betas zeroed."""

    def __init__(self, root: str | os.PathLike, keys: Iterable[str]) -> None:
        self.fits: dict[str, np.ndarray] = {}
        for key in keys:
            path = Path(root) / "static_fits" / f"{key}_fits.npy"
            if path.is_file():
                arr = np.load(path, allow_pickle=False).astype(np.float32)
                if arr.ndim != 2 or arr.shape[1] != 82:
                    raise UserError(f"{path}: expected (N, 82) pose+betas fits, got {arr.shape}")
                arr[np.abs(arr[:, 72:]).max(axis=1) > 3, 72:] = 0.0
                self.fits[key] = arr

    def __bool__(self) -> bool:
        return bool(self.fits)

    def apply(self, batch: dict, targets: dict[str, torch.Tensor]) -> None:
        """Fill pose/betas/has_smpl of the samples without SMPL ground truth from their fits (in place) and mark
        them in targets["fitted"] (B,), so that the validity rule (`fit_validity`) can judge them."""
        need = (targets["has_smpl"] < 0.5).nonzero().flatten().tolist()
        rows, poses, betas = [], [], []
        for i in need:
            arr = self.fits.get(batch["dataset_name"][i])
            j = int(batch["sample_index"][i])
            if arr is None or j >= len(arr):
                continue
            rows.append(i)
            poses.append(augment_pose(arr[j, :72], float(batch["rot_angle"][i]), flip=bool(batch["is_flipped"][i])))
            betas.append(arr[j, 72:])
        targets["fitted"] = torch.zeros_like(targets["has_smpl"])
        if rows:
            idx = torch.tensor(rows, device=targets["pose"].device)
            targets["pose"][idx] = torch.from_numpy(np.stack(poses)).to(targets["pose"])
            targets["betas"][idx] = torch.from_numpy(np.stack(betas)).to(targets["betas"])
            targets["has_smpl"][idx] = 1.0
            targets["fitted"][idx] = 1.0


# ----------------------------------------------------------------------------------------------- validity rule


def estimate_translation(joints: torch.Tensor, kp_px: torch.Tensor, *, focal_length: float = FOCAL_LENGTH,
                         img_res: int = IMG_RES) -> torch.Tensor:
    """The camera translation (B, 3) that best projects the 24 ground-truth joints joints[:, 25:] (B, 49, 3) onto
    their pixels kp_px[:, 25:] (B, 49, 3: x, y, conf), as SPIN's estimate_translation: pinhole camera with focal
    `focal_length` and principal point (img_res/2, img_res/2), no rotation; weighted linear least squares with
    weights sqrt(conf). From u = f (X + tx) / (Z + tz) + c: f tx + (c - u) tz = (u - c) Z - f X (same for y).
    Samples with fewer than two confident joints (the translation is undetermined) get (0, 0, 2 f / (0.9 img_res)),
    the depth of SPIN's mean camera. Solved in float64."""
    x, y, z = joints[:, N_OPENPOSE:].double().unbind(-1)  # (B, 24) each
    u, v, conf = kp_px[:, N_OPENPOSE:].double().unbind(-1)
    f, c = float(focal_length), img_res / 2.0
    fs, zero = torch.full_like(u, f), torch.zeros_like(u)
    a = torch.cat([torch.stack([fs, zero, c - u], -1), torch.stack([zero, fs, c - v], -1)], 1)  # (B, 48, 3)
    b = torch.cat([(u - c) * z - f * x, (v - c) * z - f * y], 1)  # (B, 48)
    w = conf.clamp_min(0).sqrt().repeat(1, 2)
    a, b = a * w[..., None], b * w
    ata, atb = a.transpose(1, 2) @ a, (a.transpose(1, 2) @ b[..., None])[..., 0]
    ok = (conf > 0).sum(1) >= 2
    eye = torch.eye(3, dtype=ata.dtype, device=ata.device)
    default = torch.tensor([0.0, 0.0, 2 * f / (0.9 * img_res)], dtype=ata.dtype, device=ata.device)
    ata = torch.where(ok[:, None, None], ata, eye)
    atb = torch.where(ok[:, None], atb, default)
    return torch.linalg.solve(ata, atb).to(joints.dtype)


def gmof(residual: torch.Tensor, sigma: float = GMOF_SIGMA) -> torch.Tensor:
    """Geman-McClure robust error sigma^2 r^2 / (r^2 + sigma^2), elementwise."""
    r2 = residual**2
    return sigma**2 * r2 / (r2 + sigma**2)


def fitting_loss(joints: torch.Tensor, kp_px: torch.Tensor, cam_t: torch.Tensor, *,
                 focal_length: float = FOCAL_LENGTH, img_res: int = IMG_RES) -> torch.Tensor:
    """SMPLify's reprojection loss per sample (B,), as SPIN's get_fitting_loss(...).mean(-1): the 49 joints
    (B, 49, 3) projected with translation cam_t (B, 3) vs kp_px (B, 49, 3: pixels + conf);
    per joint conf^2 * sum over x, y of gmof(residual); FIT_IGNORED joints weigh 0; mean over the 49 joints."""
    n = joints.shape[0]
    eye = torch.eye(3, dtype=joints.dtype, device=joints.device).expand(n, 3, 3)
    center = joints.new_full((n, 2), img_res / 2.0)
    proj = perspective_projection(joints, eye, cam_t.to(joints.dtype), focal_length, center)  # (B, 49, 2)
    conf = kp_px[..., 2].clone()
    conf[:, FIT_IGNORED] = 0.0
    return (conf**2 * gmof(proj - kp_px[..., :2]).sum(-1)).mean(-1)


def fit_losses(joints: torch.Tensor, keypoints: torch.Tensor) -> torch.Tensor:
    """The fitting loss (B,) of SMPL joints (B, 49, 3) of the fits against the item's keypoints (B, 49, 3) in
    normalised crop coordinates, with the translation estimated from the keypoints (SPIN's train_step).

    Judged in SPIN's 224 px crop frame whatever the model's input size: the keypoints are resolution-free, and the
    threshold (100) and GMoF sigma (100) are pixel values of that frame (at 224 this is exactly SPIN).
    Unlike SPIN, a translation that puts a joint at depth <= 0 gives an infinite loss: the linear estimate is free
    to place the body behind the camera, where the projection is point-reflected, so a fit turned upside down
    (180 deg in the image plane) would otherwise score as well as a good one."""
    joints, kp = joints.double(), keypoints.double().clone()
    kp[..., :2] = IMG_RES / 2.0 * (kp[..., :2] + 1)
    cam_t = estimate_translation(joints, kp)
    behind = (joints[..., 2] + cam_t[:, None, 2] <= 0).any(-1)
    return fitting_loss(joints, kp, cam_t).masked_fill(behind, float("inf"))


def fit_validity(joints: torch.Tensor, keypoints: torch.Tensor, *, threshold: float) -> torch.Tensor:
    """SPIN's valid_fit (without the has_smpl part): fitting loss below `threshold` -> (B,) bool."""
    return fit_losses(joints, keypoints) < threshold
