"""What a 3D benchmark lets an image model reach: 2D precision, per-bone depth order, and the PA-MPJPE floor of
depth ambiguity.

A near-orthographic camera (SPIN's: focal 5000 px, the body ~45 m away) shows each bone's 2D projection but not
the sign of its depth: a bone pointing at the camera and one pointing away look alike but for shading and
occlusion. `depth_flip_floor` measures what that costs in PA-MPJPE: the ground truth itself, rebuilt bone by bone
with every bone's depth sign flipped with probability p (2D and bone lengths exact). On poses drawn joint by joint
inside angle limits (the synthetic root) the depth signs are uncorrelated, so the floor rises fast with p. The
model-side figures say what a trained model got: its 2D error (scale-aligned, orthographic) and how often it
orders a bone's ends in depth as the ground truth does.

All joints here are the 14 LSP joints in J14 order (compress.constants.J24_TO_J14 / H36M_TO_J14), in metres.
"""
from __future__ import annotations

import numpy as np
import torch

from compress.eval.metrics import pa_mpjpe

# J14: 0 R ankle, 1 R knee, 2 R hip, 3 L hip, 4 L knee, 5 L ankle, 6 R wrist, 7 R elbow, 8 R shoulder,
# 9 L shoulder, 10 L elbow, 11 L wrist, 12 neck, 13 head top. ROOT (-1) is the hips' midpoint.
ROOT = -1
BONES = ((ROOT, 2), (ROOT, 3), (2, 1), (1, 0), (3, 4), (4, 5), (ROOT, 12), (12, 8), (12, 9), (8, 7), (7, 6),
         (9, 10), (10, 11), (12, 13))  # (parent, child), parents first
HIPS = (2, 3)


def _point(joints: np.ndarray, i: int) -> np.ndarray:
    return joints[:, HIPS].mean(axis=1) if i == ROOT else joints[:, i]


def bone_vectors(joints: np.ndarray) -> np.ndarray:
    """(N, 14, 3) joints -> (N, len(BONES), 3) child minus parent."""
    return np.stack([_point(joints, c) - _point(joints, p) for p, c in BONES], axis=1)


def rebuild(root: np.ndarray, bones: np.ndarray) -> np.ndarray:
    """Joints (N, 14, 3) from the hips' midpoint (N, 3) and bone vectors, walking BONES in order."""
    out = np.zeros((bones.shape[0], 14, 3), dtype=np.float64)
    for b, (p, c) in enumerate(BONES):
        out[:, c] = (root if p == ROOT else out[:, p]) + bones[:, b]
    return out


def flip_depths(joints: np.ndarray, p: float, rng: np.random.Generator) -> np.ndarray:
    """The joints rebuilt with each bone's depth (z) sign flipped independently with probability p."""
    bones = bone_vectors(joints.astype(np.float64))
    flips = rng.uniform(size=bones.shape[:2]) < p
    bones[..., 2] = np.where(flips, -bones[..., 2], bones[..., 2])
    return rebuild(_point(joints.astype(np.float64), ROOT), bones)


def depth_flip_floor(joints: np.ndarray, probabilities, *, seed: int = 0, repeats: int = 4) -> dict[float, float]:
    """{p: mean PA-MPJPE in mm} of the ground truth with bone depth signs flipped w.p. p (`repeats` draws)."""
    rng = np.random.default_rng(seed)
    gt = torch.from_numpy(joints.astype(np.float64))
    out = {}
    for p in probabilities:
        errs = [pa_mpjpe(torch.from_numpy(flip_depths(joints, float(p), rng)), gt).mean() for _ in range(repeats)]
        out[float(p)] = 1000.0 * float(np.mean(errs))
    return out


def depth_order_accuracy(pred: np.ndarray, gt: np.ndarray, *, min_dz: float = 0.05) -> float:
    """Share of bones, among those whose ends differ in depth by more than `min_dz` m in the ground truth, whose
    predicted depth difference has the ground truth's sign (0.5 is chance)."""
    dz_pred, dz_gt = bone_vectors(pred)[..., 2], bone_vectors(gt)[..., 2]
    clear = np.abs(dz_gt) > min_dz
    if not clear.any():
        raise ValueError(f"no bone differs in depth by more than {min_dz} m")
    return float((np.sign(dz_pred) == np.sign(dz_gt))[clear].mean())


def xy_error(pred: np.ndarray, gt: np.ndarray) -> float:
    """Mean 2D joint error in metres: both centred at the hips' midpoint, the prediction's image-plane (x, y)
    scaled by the least-squares factor per sample (an orthographic camera's scale)."""
    p = pred[..., :2] - _point(pred, ROOT)[:, None, :2]
    g = gt[..., :2] - _point(gt, ROOT)[:, None, :2]
    scale = (p * g).sum(axis=(1, 2)) / np.maximum((p * p).sum(axis=(1, 2)), 1e-12)
    return float(np.linalg.norm(scale[:, None, None] * p - g, axis=-1).mean())
