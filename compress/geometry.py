"""Rotations, cameras and Procrustes alignment, vectorised in torch (float32 and float64).

Conventions follow SPIN (../shared/reference/spin_protocol.md sections 1 and 3).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from compress.constants import FOCAL_LENGTH, IMG_RES


def rot6d_to_rotmat(x: torch.Tensor) -> torch.Tensor:
    """6D rotation (Zhou et al.) -> rotation matrices, SPIN's layout.

    Each 6 numbers are read row-major as a 3x2 matrix whose columns a1, a2 are Gram-Schmidt
    orthonormalised into the first two *columns* of R (not pytorch3d's row convention).
    Input (..., 6k) -> (N, 3, 3) with N = numel / 6.
    """
    a = x.reshape(-1, 3, 2)
    b1 = F.normalize(a[:, :, 0], dim=-1, eps=1e-12)
    a2 = a[:, :, 1]
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1, eps=1e-12)
    # SPIN calls torch.cross without dim, which is wrong for exactly 3 rotations; dim=-1 is always right.
    b3 = torch.linalg.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)  # (N, 3, 3), columns b1 b2 b3


def rotmat_to_rot6d(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (..., 3, 3) -> SPIN 6D (..., 6): the first two columns, flattened row-major."""
    return rotmat[..., :, :2].reshape(*rotmat.shape[:-2], 6)


def batch_rodrigues(axis_angle: torch.Tensor) -> torch.Tensor:
    """Axis-angle (N, 3) -> rotation matrices (N, 3, 3); exact at zero angle."""
    aa = axis_angle.reshape(-1, 3)
    angle = aa.norm(dim=-1, keepdim=True)  # (N, 1)
    axis = aa / angle.clamp_min(1e-12)
    cos, sin = torch.cos(angle)[..., None], torch.sin(angle)[..., None]  # (N, 1, 1)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    skew = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=aa.dtype, device=aa.device).expand_as(skew)
    outer = axis[:, :, None] * axis[:, None, :]
    return cos * eye + sin * skew + (1 - cos) * outer


def rotmat_to_axis_angle(rotmat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices (N, 3, 3) -> axis-angle (N, 3), stable near 0 and near pi."""
    r = rotmat.reshape(-1, 3, 3)
    trace = r[:, 0, 0] + r[:, 1, 1] + r[:, 2, 2]
    cos = ((trace - 1) / 2).clamp(-1.0, 1.0)
    angle = torch.acos(cos)  # (N,)
    vee = torch.stack([r[:, 2, 1] - r[:, 1, 2], r[:, 0, 2] - r[:, 2, 0], r[:, 1, 0] - r[:, 0, 1]], dim=-1)
    sin = torch.sin(angle)
    # Generic case: axis from the skew part. Small angles: angle/sin(angle) -> 1.
    factor = torch.where(sin.abs() > 1e-4, angle / sin.clamp_min(1e-12) * 0.5, 0.5 + angle**2 / 12)
    aa = vee * factor[:, None]
    # Near pi the skew part vanishes: take the axis from the symmetric part (R + I) / 2 = axis axis^T.
    near_pi = (math.pi - angle) < 1e-3
    if near_pi.any():
        sym = (r[near_pi] + torch.eye(3, dtype=r.dtype, device=r.device)) / 2
        diag = torch.diagonal(sym, dim1=-2, dim2=-1).clamp_min(0)
        k = diag.argmax(dim=-1)  # the largest axis component is the safest to divide by
        col = sym[torch.arange(sym.shape[0]), :, k]  # (M, 3) = axis * axis_k
        axis = col / col[torch.arange(sym.shape[0]), k].clamp_min(1e-12).sqrt()[:, None]
        # fix the overall sign with the (tiny) skew part so the result is continuous
        sign = torch.where((axis * vee[near_pi]).sum(-1) < 0, -1.0, 1.0).to(r.dtype)
        aa = aa.clone()
        aa[near_pi] = F.normalize(axis, dim=-1) * sign[:, None] * angle[near_pi][:, None]
    return aa


def perspective_projection(
    points: torch.Tensor,
    rotation: torch.Tensor,
    translation: torch.Tensor,
    focal_length: torch.Tensor | float,
    camera_center: torch.Tensor,
) -> torch.Tensor:
    """Pinhole projection of (B, N, 3) points with per-sample R (B,3,3), t (B,3) -> pixels (B, N, 2)."""
    p = torch.einsum("bij,bnj->bni", rotation, points) + translation[:, None, :]
    uv = p[..., :2] / p[..., 2:3]
    f = torch.as_tensor(focal_length, dtype=points.dtype, device=points.device).reshape(-1, 1, 1)
    return uv * f + camera_center.reshape(-1, 1, 2).to(points.dtype)


def cam_to_translation(cam: torch.Tensor, *, focal_length: float = FOCAL_LENGTH, img_res: int = IMG_RES) -> torch.Tensor:
    """Weak-perspective (s, tx, ty) in the [-1, 1] crop frame -> camera translation (B, 3)."""
    s, tx, ty = cam.unbind(-1)
    tz = 2 * focal_length / (img_res * s + 1e-9)
    return torch.stack([tx, ty, tz], dim=-1)


def project_to_crop(
    points: torch.Tensor, cam: torch.Tensor, *, focal_length: float = FOCAL_LENGTH, img_res: int = IMG_RES
) -> torch.Tensor:
    """Project (B, N, 3) body points with the predicted camera into normalised crop coordinates [-1, 1]."""
    b = points.shape[0]
    eye = torch.eye(3, dtype=points.dtype, device=points.device).expand(b, 3, 3)
    center = torch.zeros(b, 2, dtype=points.dtype, device=points.device)
    t = cam_to_translation(cam, focal_length=focal_length, img_res=img_res)
    return perspective_projection(points, eye, t, focal_length, center) / (img_res / 2.0)


def similarity_transform(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Batched Procrustes: the similarity transform (s, R, t) of pred (B,N,3) onto gt that minimises the
    squared error, reflection-safe (det R = +1), as SPIN's reconstruction_error. Returns aligned pred."""
    mu_x, mu_y = pred.mean(dim=1, keepdim=True), gt.mean(dim=1, keepdim=True)
    x0, y0 = pred - mu_x, gt - mu_y
    k = x0.transpose(1, 2) @ y0  # (B, 3, 3) = sum_i x_i y_i^T
    u, _, vh = torch.linalg.svd(k)
    v = vh.transpose(1, 2)
    z = torch.eye(3, dtype=pred.dtype, device=pred.device).repeat(pred.shape[0], 1, 1)
    z[:, 2, 2] = torch.sign(torch.linalg.det(u @ vh))
    rot = v @ z @ u.transpose(1, 2)  # (B, 3, 3)
    var_x = (x0**2).sum(dim=(1, 2)).clamp_min(1e-12)
    scale = torch.einsum("bii->b", rot @ k) / var_x  # trace(R K) / |X0|^2
    return scale[:, None, None] * x0 @ rot.transpose(1, 2) + mu_y

