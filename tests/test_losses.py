"""SPIN losses and distillation terms against closed forms."""
from __future__ import annotations

import math

import pytest
import torch

from compress.errors import UserError
from compress.geometry import batch_rodrigues, project_to_crop
from compress.losses import (LossWeights, camera_loss, check_finite, compute_losses, distill_losses,
                             keypoint_2d_loss, keypoint_3d_loss, loss_values, loss_weights, shape_loss,
                             smpl_param_losses, spin_losses)


def _kp(b=2, conf=1.0):
    g = torch.Generator().manual_seed(0)
    kp = torch.rand(b, 49, 3, generator=g) * 2 - 1
    kp[:, :, 2] = conf
    return kp


def test_keypoint_2d_zero_and_known_offset():
    gt = _kp()
    assert keypoint_2d_loss(gt[:, :, :2].clone(), gt).item() == 0.0
    d = 0.1
    pred = gt[:, :, :2] + d
    # OpenPose joints have weight 0: only 24 of 49 joints count, averaged over 49 x 2 coordinates
    assert keypoint_2d_loss(pred, gt).item() == pytest.approx(24 * 2 * d**2 / (49 * 2), rel=1e-5)
    assert keypoint_2d_loss(pred, gt, openpose_weight=1.0).item() == pytest.approx(d**2, rel=1e-5)
    assert keypoint_2d_loss(pred, gt, openpose_weight=1.0, gt_weight=0.0).item() == pytest.approx(
        25 * d**2 / 49, rel=1e-5)


def test_keypoint_2d_confidence_masks_joints():
    gt = _kp()
    gt[:, 25:30, 2] = 0.0  # invisible GT joints
    pred = gt[:, :, :2].clone()
    pred[:, 25:30] += 5.0  # wrong only where invisible
    assert keypoint_2d_loss(pred, gt).item() == 0.0


def test_keypoint_3d_centred_at_hips_and_masked():
    g = torch.Generator().manual_seed(1)
    gt3 = torch.randn(3, 24, 4, generator=g)
    gt3[:, :, 3] = 1.0
    joints = torch.randn(3, 49, 3, generator=g)
    joints[:, 25:] = gt3[:, :, :3] + torch.tensor([1.0, -2.0, 3.0])  # a global translation only
    has = torch.tensor([1.0, 1.0, 0.0])
    joints[2] = 100.0  # garbage in the sample without 3D ground truth
    assert keypoint_3d_loss(joints, gt3, has).item() == pytest.approx(0.0, abs=1e-10)
    # move one non-hip joint of sample 0 by d along x: error d^2 over 2 samples x 24 joints x 3 coords
    d = 0.3
    joints[0, 25 + 10, 0] += d
    assert keypoint_3d_loss(joints, gt3, has).item() == pytest.approx(d**2 / (2 * 24 * 3), rel=1e-5)
    gt3[0, 10, 3] = 0.0  # that joint invalid -> zero again
    assert keypoint_3d_loss(joints, gt3, has).item() == pytest.approx(0.0, abs=1e-10)
    assert keypoint_3d_loss(joints, gt3, torch.zeros(3)).item() == 0.0


def test_smpl_param_losses_zero_known_and_mask():
    g = torch.Generator().manual_seed(2)
    pose = torch.randn(4, 72, generator=g) * 0.5
    rotmat = batch_rodrigues(pose.reshape(-1, 3)).reshape(4, 24, 3, 3)
    betas = torch.randn(4, 10, generator=g)
    has = torch.tensor([1.0, 0.0, 1.0, 0.0])
    rotmat[1] = 7.0  # ignored (no SMPL ground truth)
    lp, lb = smpl_param_losses(rotmat, betas + 0.5 * (1 - has[:, None]), pose, betas, has)
    assert lp.item() == pytest.approx(0.0, abs=1e-10) and lb.item() == 0.0
    lp, lb = smpl_param_losses(rotmat, betas + 0.2, pose, betas, has)
    assert lb.item() == pytest.approx(0.04, rel=1e-5)
    # identity vs a 90 degree rotation about z on every joint of one valid sample
    rot = torch.eye(3).expand(1, 24, 3, 3).clone()
    aa = torch.zeros(1, 72)
    aa[:, 2::3] = math.pi / 2
    lp, _ = smpl_param_losses(rot, torch.zeros(1, 10), aa, torch.zeros(1, 10), torch.ones(1))
    # I - Rz(90): four entries differ by 1 (two diagonal cos terms, two sin terms) of 9
    assert lp.item() == pytest.approx(4 / 9, rel=1e-5)
    assert smpl_param_losses(rot, torch.zeros(1, 10), aa, torch.zeros(1, 10), torch.zeros(1))[0].item() == 0.0


def test_shape_and_camera_closed_forms():
    v = torch.zeros(2, 6890, 3)
    assert shape_loss(v + 0.25, v, torch.ones(2)).item() == pytest.approx(0.25)
    assert shape_loss(v + 0.25, v, torch.zeros(2)).item() == 0.0
    cam = torch.tensor([[0.0, 0.1, 0.2], [0.1, 0.0, 0.0]])
    assert camera_loss(cam).item() == pytest.approx((1 + math.exp(-2)) / 2, rel=1e-6)


def _batch(joints, cam, img_res, b):
    kp = torch.ones(b, 49, 3)
    kp[:, :, :2] = project_to_crop(joints, cam, img_res=img_res)
    pose_3d = torch.ones(b, 24, 4)
    pose_3d[:, :, :3] = joints[:, 25:]
    pose = torch.zeros(b, 72)
    return {"keypoints": kp, "pose_3d": pose_3d, "has_pose_3d": torch.ones(b), "pose": pose,
            "betas": torch.zeros(b, 10), "has_smpl": torch.ones(b)}


def test_spin_losses_consistent_prediction_and_total():
    b, res = 2, 64
    g = torch.Generator().manual_seed(3)
    joints = torch.randn(b, 49, 3, generator=g) * 0.3
    cam = torch.tensor([[0.9, 0.05, -0.1], [1.1, 0.0, 0.1]])
    out = {"rotmat": torch.eye(3).expand(b, 24, 3, 3), "betas": torch.zeros(b, 10), "cam": cam}
    batch = _batch(joints, cam, res, b)
    w = LossWeights()
    terms = spin_losses(out, torch.zeros(b, 6890, 3), joints, batch, weights=w, img_res=res)
    assert set(terms) == {"kp2d", "kp3d", "pose", "betas", "cam"}
    for name in ("kp2d", "kp3d", "pose", "betas"):
        assert terms[name].item() == pytest.approx(0.0, abs=1e-10), name
    losses = compute_losses(terms, w)
    assert losses["total"].item() == pytest.approx(60 * camera_loss(cam).item(), rel=1e-6)
    # the 2D term goes through the 5000 px focal length at this img_res: a depth shift changes it
    batch["keypoints"][:, :, :2] = project_to_crop(joints, cam * torch.tensor([2.0, 1, 1]), img_res=res)
    assert spin_losses(out, None, joints, batch, weights=w, img_res=res)["kp2d"].item() > 1e-3
    # shape needs GT vertices when weighted
    with pytest.raises(ValueError):
        spin_losses(out, torch.zeros(b, 6890, 3), joints, batch, weights=LossWeights(shape=1.0), img_res=res)


def test_total_weights_and_scale():
    terms = {"kp2d": torch.tensor(1.0), "kp3d": torch.tensor(2.0), "pose": torch.tensor(3.0),
             "betas": torch.tensor(4.0), "cam": torch.tensor(5.0), "distill_joints": torch.tensor(6.0)}
    w = LossWeights(distill_joints=0.5)
    expected = 60 * (5 * 1 + 5 * 2 + 1 * 3 + 0.001 * 4 + 1 * 5 + 0.5 * 6)
    assert compute_losses(terms, w)["total"].item() == pytest.approx(expected, rel=1e-6)


def test_check_finite_raises_user_error():
    check_finite(loss_values({"kp2d": torch.tensor(1.0), "total": torch.tensor(2.0)}))
    with pytest.raises(UserError, match="non-finite loss at step 7.*kp2d=nan"):
        check_finite(loss_values({"kp2d": torch.tensor(float("nan")), "total": torch.tensor(1.0)}),
                     where="step 7")


def test_distill_terms():
    g = torch.Generator().manual_seed(4)
    out = {"rotmat": torch.randn(2, 24, 3, 3, generator=g), "betas": torch.randn(2, 10, generator=g),
           "cam": torch.randn(2, 3, generator=g), "features": torch.randn(2, 8, generator=g)}
    joints = torch.randn(2, 49, 3, generator=g)
    w = LossWeights(distill_rotmat=1, distill_betas=1, distill_cam=1, distill_joints=1, distill_features=1)
    same = distill_losses(out, {k: v.clone() for k, v in out.items()}, joints=joints, teacher_joints=joints.clone(),
                          weights=w)
    assert set(same) == {"distill_rotmat", "distill_betas", "distill_cam", "distill_joints", "distill_features"}
    assert all(v.item() == 0.0 for v in same.values())
    teacher = {k: v + 0.5 for k, v in out.items()}
    teacher["features"] = torch.zeros(2, 16)  # different width: the feature term is skipped
    diff = distill_losses(out, teacher, joints=joints, teacher_joints=joints + 0.5, weights=w)
    assert "distill_features" not in diff
    assert all(v.item() == pytest.approx(0.25, rel=1e-5) for v in diff.values())
    # gradients flow to the student only
    s = {k: v.clone().requires_grad_() for k, v in out.items()}
    t = {k: v.clone().requires_grad_() for k, v in teacher.items()}
    distill_losses(s, t, joints=joints, teacher_joints=joints, weights=w)["distill_cam"].backward()
    assert s["cam"].grad is not None and t["cam"].grad is None
    assert distill_losses(out, teacher, joints=joints, teacher_joints=joints, weights=LossWeights()) == {}


def test_loss_weights_from_spec():
    from compress.recipe import DistillSpec, TrainSpec

    kd = DistillSpec(teacher="runs/base/trained.pt", rotmat=1.0, betas=0.01, cam=0.5, joints=2.0, features=0.0)
    spec = TrainSpec(distill=kd)
    w = loss_weights(spec)
    assert w == LossWeights(distill_rotmat=1.0, distill_betas=0.01, distill_cam=0.5, distill_joints=2.0)
    assert w.distill and not loss_weights(spec, distill=False).distill
    assert not loss_weights(TrainSpec(distill=None)).distill
    assert loss_weights(TrainSpec(pose=10.0, betas=0.1)) == LossWeights(pose=10.0, betas=0.1)
