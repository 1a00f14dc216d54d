"""SPIN's training losses (no discriminator, no SMPLify in the loop) and output-level distillation.

Facts: ../shared/reference/spin_protocol.md section 6. Every term is returned unweighted under its own name
(for logging); `total_loss` applies the weights and SPIN's overall x60 scale. Losses are computed in float32
even under autocast.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.data.fits import fit_validity
from compress.errors import UserError
from compress.geometry import batch_rodrigues, project_to_crop
from compress.recipe import TrainSpec

log = logging.getLogger(__name__)

N_OPENPOSE = 25  # joints 0..24 of the 49 are OpenPose BODY_25, 25..48 the 24 "GT" joints
HIP_RIGHT, HIP_LEFT = 2, 3  # J24 indices whose mid-point centres the 3D keypoints

SPIN_TERMS = ("kp2d", "kp3d", "pose", "betas", "shape", "cam")
DISTILL_TERMS = ("distill_rotmat", "distill_betas", "distill_cam", "distill_joints", "distill_features")
STAT_TERMS = ("fits_rejected",)  # logged with the terms, never weighted into the total


@dataclasses.dataclass(frozen=True)
class LossWeights:
    """Weights of every term; defaults are SPIN's (keypoint_loss_weight 5 for 2D and 3D, pose 1, betas 0.001,
    shape 0, camera 1, OpenPose joints 0, GT joints 1, total x60). Distillation terms default to off.
    fit_threshold: static fits whose SMPLify reprojection loss is not below it are no SMPL target (SPIN's
    smplify_threshold, 100); None uses every fit."""

    kp2d: float = 5.0
    kp3d: float = 5.0
    pose: float = 1.0
    betas: float = 0.001
    shape: float = 0.0
    cam: float = 1.0
    openpose_weight: float = 0.0
    gt_weight: float = 1.0
    loss_scale: float = 60.0
    fit_threshold: float | None = 100.0
    distill_rotmat: float = 0.0
    distill_betas: float = 0.0
    distill_cam: float = 0.0
    distill_joints: float = 0.0
    distill_features: float = 0.0

    @property
    def distill(self) -> bool:
        return any(getattr(self, t) > 0 for t in DISTILL_TERMS)


def loss_weights(spec: TrainSpec, *, distill: bool = True) -> LossWeights:
    """LossWeights from a recipe's train/finetune section: its SPIN term weights (same names) and the
    `distill` section's rotmat, betas, cam, joints, features. distill=False (no teacher) or spec.distill None
    zeroes the KD terms."""
    kw = {f.name: float(getattr(spec, f.name)) for f in dataclasses.fields(LossWeights)
          if not f.name.startswith("distill_") and f.name != "fit_threshold"}
    kw["fit_threshold"] = None if spec.fit_threshold is None else float(spec.fit_threshold)
    kd = spec.distill
    if distill and kd is not None:  # an empty kd.teacher means "the default teacher": the caller resolves it
        kw.update(distill_rotmat=kd.rotmat, distill_betas=kd.betas, distill_cam=kd.cam, distill_joints=kd.joints,
                  distill_features=kd.features)
    return LossWeights(**kw)


# ----------------------------------------------------------------------------------------------- SPIN terms


def keypoint_2d_loss(pred_kp: torch.Tensor, gt_kp: torch.Tensor, *, openpose_weight: float = 0.0,
                     gt_weight: float = 1.0) -> torch.Tensor:
    """Confidence-weighted MSE of projected joints (B, 49, 2) vs GT (B, 49, 3) in normalised crop coordinates,
    averaged over B x 49 x 2 (SPIN's mean, which counts zero-confidence joints in the denominator)."""
    conf = gt_kp[:, :, 2:].clone()  # (B, 49, 1)
    conf[:, :N_OPENPOSE] *= openpose_weight
    conf[:, N_OPENPOSE:] *= gt_weight
    return (conf * (pred_kp - gt_kp[:, :, :2]) ** 2).mean()


def keypoint_3d_loss(pred_joints: torch.Tensor, gt_joints: torch.Tensor, has_pose_3d: torch.Tensor) -> torch.Tensor:
    """Predicted joints 25..48 (of B, 49, 3) vs GT pose_3d (B, 24, 4), both centred at the hip mid-point, only on
    samples with 3D ground truth; confidence-weighted MSE averaged over those samples x 24 x 3."""
    valid = has_pose_3d > 0.5
    if not bool(valid.any()):
        return pred_joints.new_zeros(())
    pred = pred_joints[valid][:, N_OPENPOSE:]  # (N, 24, 3)
    gt, conf = gt_joints[valid][:, :, :3], gt_joints[valid][:, :, 3:]
    pred = pred - (pred[:, HIP_RIGHT] + pred[:, HIP_LEFT])[:, None] / 2
    gt = gt - (gt[:, HIP_RIGHT] + gt[:, HIP_LEFT])[:, None] / 2
    return (conf * (pred - gt) ** 2).mean()


def smpl_param_losses(pred_rotmat: torch.Tensor, pred_betas: torch.Tensor, gt_pose: torch.Tensor,
                      gt_betas: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """MSE of rotation matrices (B, 24, 3, 3) vs Rodrigues(GT axis-angle (B, 72)) and of betas (B, 10), on valid
    samples only; zero (with no gradient path needed) when none is valid."""
    valid = valid > 0.5
    if not bool(valid.any()):
        zero = pred_rotmat.new_zeros(())
        return zero, zero
    gt_rotmat = batch_rodrigues(gt_pose[valid].reshape(-1, 3)).reshape(-1, 24, 3, 3)
    return F.mse_loss(pred_rotmat[valid], gt_rotmat), F.mse_loss(pred_betas[valid], gt_betas[valid])


def shape_loss(pred_vertices: torch.Tensor, gt_vertices: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-vertex L1 (B, 6890, 3) on valid samples (SPIN's weight is 0: off by default)."""
    valid = valid > 0.5
    if not bool(valid.any()):
        return pred_vertices.new_zeros(())
    return F.l1_loss(pred_vertices[valid], gt_vertices[valid])


def camera_loss(cam: torch.Tensor) -> torch.Tensor:
    """mean(exp(-10 s)^2): pushes the weak-perspective scale (and so the depth) to be positive."""
    return (torch.exp(-10 * cam[:, 0]) ** 2).mean()


def spin_losses(out: dict, vertices: torch.Tensor, joints: torch.Tensor, batch: dict, *, weights: LossWeights,
                img_res: int, gt_vertices: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """The unweighted SPIN terms for one batch.

    out: model output dict (rotmat, betas, cam); vertices (B, 6890, 3) and joints (B, 49, 3): SMPL of the prediction;
    batch: SPIN item dict (keypoints, pose_3d, has_pose_3d, pose, betas, has_smpl). gt_vertices is needed only when
    the shape weight is non-zero.
    """
    cam = out["cam"].float()
    joints = joints.float()
    pred_kp = project_to_crop(joints, cam, img_res=img_res)  # (B, 49, 2) in [-1, 1]
    pose, betas = smpl_param_losses(out["rotmat"].float(), out["betas"].float(), batch["pose"], batch["betas"],
                                    batch["has_smpl"])
    terms = {
        "kp2d": keypoint_2d_loss(pred_kp, batch["keypoints"], openpose_weight=weights.openpose_weight,
                                 gt_weight=weights.gt_weight),
        "kp3d": keypoint_3d_loss(joints, batch["pose_3d"], batch["has_pose_3d"]),
        "pose": pose,
        "betas": betas,
        "cam": camera_loss(cam),
    }
    if weights.shape > 0:
        if gt_vertices is None:
            raise ValueError("shape loss weight > 0 needs gt_vertices")
        terms["shape"] = shape_loss(vertices.float(), gt_vertices, batch["has_smpl"])
    return terms


TARGET_KEYS = ("keypoints", "pose_3d", "has_pose_3d", "pose", "betas", "has_smpl")  # the batch fields the terms read


def batch_targets(batch: dict, device: torch.device, *, fits=None) -> dict[str, torch.Tensor]:
    """The batch's targets on `device` (float); with static fits (compress.data.fits.StaticFits), samples without
    SMPL ground truth get their fit as SMPL target (marked in "fitted")."""
    targets = {k: batch[k].to(device, non_blocking=True).float() for k in TARGET_KEYS}
    if fits:
        fits.apply(batch, targets)
    return targets


def reject_bad_fits(targets: dict, joints: torch.Tensor, threshold: float) -> tuple[dict, torch.Tensor]:
    """SPIN's valid_fit = (fit loss < threshold) | has_smpl: the targets with has_smpl cleared on the fitted
    samples whose fit (SMPL joints (B, 49, 3) of the targets) fails, and the fraction of the batch rejected."""
    rejected = (targets["fitted"] > 0.5) & ~fit_validity(joints, targets["keypoints"], threshold=threshold)
    return {**targets, "has_smpl": targets["has_smpl"] * (~rejected).float()}, rejected.float().mean()


def spin_batch_terms(out: dict, smpl: Callable, targets: dict, *, weights: LossWeights, img_res: int):
    """SMPL of the prediction (float32: blend shapes and skinning lose too much in half) and SPIN's terms.
    smpl(rotmat, betas) -> .joints (B, 49, 3), .vertices. With static fits in `targets` and a fit threshold, the
    fits that fail SPIN's validity rule are no SMPL target, and "fits_rejected" (a statistic, not weighted) is the
    fraction of the batch they make up. Returns (terms, the prediction's SMPL output)."""
    pred = smpl(out["rotmat"].float(), out["betas"].float())
    judge = weights.fit_threshold is not None and "fitted" in targets
    target_smpl = None
    if weights.shape > 0 or (judge and bool((targets["fitted"] > 0.5).any())):
        with torch.no_grad():
            gt_rotmat = batch_rodrigues(targets["pose"].reshape(-1, 3)).reshape(-1, 24, 3, 3)
            target_smpl = smpl(gt_rotmat, targets["betas"])  # .vertices (B, 6890, 3), .joints (B, 49, 3)
    rejected = None
    if judge:
        rejected = targets["has_smpl"].new_zeros(())
        if target_smpl is not None:
            targets, rejected = reject_bad_fits(targets, target_smpl.joints, weights.fit_threshold)
    gt_vertices = target_smpl.vertices if weights.shape > 0 else None
    terms = spin_losses(out, pred.vertices, pred.joints, targets, weights=weights, img_res=img_res,
                        gt_vertices=gt_vertices)
    if rejected is not None:
        terms["fits_rejected"] = rejected
    return terms, pred


def spin_loss_fn(smpl: nn.Module, *, weights: LossWeights, img_res: int, fits=None) -> Callable:
    """loss_fn(model, batch) -> SPIN's weighted total, the training loss without distillation (for Taylor
    importance: the gradients pruning ranks channels by are those fine-tuning will follow). The batch and SMPL go
    to the device of the model it is called with (a latency target may move the model to CUDA after this is built)."""

    def loss_fn(model: nn.Module, batch: dict) -> torch.Tensor:
        device = next(model.parameters()).device
        body = smpl.to(device)
        targets = batch_targets(batch, device, fits=fits)
        terms, _ = spin_batch_terms(model(batch["img"].to(device)), body, targets, weights=weights, img_res=img_res)
        return compute_losses(terms, weights)["total"]

    return loss_fn


# ----------------------------------------------------------------------------------------------- distillation

_feature_note_logged = False


def distill_losses(out: dict, teacher: dict, *, joints: torch.Tensor, teacher_joints: torch.Tensor,
                   weights: LossWeights) -> dict[str, torch.Tensor]:
    """Output-level knowledge distillation: MSE of the student's rotmat, betas, cam and SMPL joints (B, 49, 3)
    against the teacher's (computed in eval mode without gradients by the caller). The feature term needs equal
    feature widths; when they differ it is skipped (a learned adapter would add parameters to the student)."""
    global _feature_note_logged
    terms = {}
    pairs = {"distill_rotmat": (out["rotmat"], teacher["rotmat"]), "distill_betas": (out["betas"], teacher["betas"]),
             "distill_cam": (out["cam"], teacher["cam"]), "distill_joints": (joints, teacher_joints)}
    for name, (s, t) in pairs.items():
        if getattr(weights, name) > 0:
            terms[name] = F.mse_loss(s.float(), t.detach().float())
    if weights.distill_features > 0:
        fs, ft = out.get("features"), teacher.get("features")
        if fs is not None and ft is not None and fs.shape == ft.shape:
            terms["distill_features"] = F.mse_loss(fs.float(), ft.detach().float())
        elif not _feature_note_logged:
            _feature_note_logged = True
            log.info("feature distillation skipped: student features %s vs teacher %s (no adapter by design)",
                     None if fs is None else tuple(fs.shape[1:]), None if ft is None else tuple(ft.shape[1:]))
    return terms


# ----------------------------------------------------------------------------------------------- total


def total_loss(terms: dict[str, torch.Tensor], weights: LossWeights) -> torch.Tensor:
    """loss_scale x sum(weight x term), over the terms present (statistics such as fits_rejected excluded)."""
    total = sum(getattr(weights, name) * value for name, value in terms.items() if name not in STAT_TERMS)
    return weights.loss_scale * total


def compute_losses(terms: dict[str, torch.Tensor], weights: LossWeights) -> dict[str, torch.Tensor]:
    """The term dict plus "total". The training loop checks it with `check_finite` every step (after averaging
    over DDP ranks, so that every rank stops together)."""
    result = dict(terms)
    result["total"] = total_loss(terms, weights)
    return result


def loss_values(losses: dict[str, torch.Tensor]) -> dict[str, float]:
    """Detached float values of a loss dict with a single device->host copy."""
    names = list(losses)
    values = torch.stack([torch.as_tensor(losses[k]).detach().float().reshape(()) for k in names]).tolist()
    return dict(zip(names, values))


def check_finite(values: dict[str, float], *, where: str = "") -> None:
    """Raise UserError when the total (or any term) is NaN/inf; the caller keeps its last good checkpoint."""
    if all(math.isfinite(v) for v in values.values()):
        return
    bad = ", ".join(f"{k}={v}" for k, v in values.items() if not math.isfinite(v))
    where = f" at {where}" if where else ""
    raise UserError(f"non-finite loss{where} ({bad}): lower the learning rate (--set finetune.lr=...) or check "
                    "the data; the last good epoch checkpoint is kept (continue with --resume)")
