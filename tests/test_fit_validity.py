"""SPIN's static-fit validity rule (compress.data.fits, compress.losses.spin_batch_terms): the translation estimate,
SMPLify's reprojection loss, which fits become SMPL targets, the recipe switch, and the synthetic root's bad fits."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from compress.constants import FOCAL_LENGTH, JOINT_NAMES
from compress.data import synthetic
from compress.data.datasets import BaseDataset
from compress.data.fits import (StaticFits, estimate_translation, fit_losses, fitting_loss, gmof)
from compress.geometry import batch_rodrigues, perspective_projection
from compress.losses import LossWeights, batch_targets, compute_losses, loss_weights, spin_batch_terms
from compress.recipe import TrainSpec, recipe_from_dict
from compress.smpl import training_smpl

NO_GT_KEYS = ("h36m", "lsp-orig", "mpii", "lspet", "coco")  # the synthetic training sets without SMPL ground truth


def _project(joints, t, img_res=224):
    """Pixels (B, 49, 2) of joints (float64) under translation t with SPIN's camera (f 5000, centre img_res/2)."""
    b = joints.shape[0]
    eye = torch.eye(3, dtype=joints.dtype).expand(b, 3, 3)
    return perspective_projection(joints, eye, t, FOCAL_LENGTH, joints.new_full((b, 2), img_res / 2))


def _joints(b=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 49, 3, generator=g, dtype=torch.float64) * 0.4


@pytest.mark.parametrize("img_res", [224, 256])
def test_estimate_translation_recovers_a_known_translation(img_res):
    joints = _joints()
    t = torch.tensor([[0.1, -0.2, 40.0], [-0.3, 0.05, 55.0], [0.0, 0.3, 25.0]], dtype=torch.float64)
    kp = torch.ones(3, 49, 3, dtype=torch.float64)
    kp[..., :2] = _project(joints, t, img_res)
    kp[:, 25:, 2] = torch.rand(3, 24, generator=torch.Generator().manual_seed(1), dtype=torch.float64) + 0.1
    kp[0, 30:40, 2] = 0.0  # unseen joints
    kp[0, 30:40, :2] += 50.0  # ... whose (wrong) pixels must not matter
    kp[:, :25, :2] += 80.0  # the OpenPose joints are not used for the translation
    est = estimate_translation(joints, kp, img_res=img_res)
    torch.testing.assert_close(est, t, atol=1e-4, rtol=0)


def test_fitting_loss_is_zero_for_a_perfect_fit_and_gmof_by_hand():
    joints = _joints(b=1)
    t = torch.tensor([[0.05, 0.1, 45.0]], dtype=torch.float64)
    kp = torch.ones(1, 49, 3, dtype=torch.float64)
    kp[..., :2] = _project(joints, t)
    assert fitting_loss(joints, kp, t).item() < 1e-9
    j = JOINT_NAMES.index("Right Wrist")
    kp[0, j, 0] += 30.0  # one joint 30 px off in x
    kp[0, j, 2] = 0.8
    expected = 0.8**2 * (100.0**2 * 30.0**2 / (30.0**2 + 100.0**2)) / 49
    assert fitting_loss(joints, kp, t).item() == pytest.approx(expected, rel=1e-6)
    assert gmof(torch.tensor([30.0])).item() == pytest.approx(100.0**2 * 900 / (900 + 100.0**2))
    for name in ("OP Neck", "OP RHip", "OP LHip", "Right Hip", "Left Hip"):  # SMPLify ignores these joints
        kp[0, JOINT_NAMES.index(name), :2] += 70.0
    assert fitting_loss(joints, kp, t).item() == pytest.approx(expected, rel=1e-6)


def test_a_camera_behind_the_body_is_no_fit():
    """Turning a perfect fit 180 deg in the image plane is undone by a negative depth (the projection is then
    point-reflected); SPIN's loss alone would accept it, the depth check rejects it."""
    joints = _joints(b=1)
    joints[..., 2] *= 0.1  # a flat body: the reflection is then (nearly) exact
    kp = torch.ones(1, 49, 3, dtype=torch.float64)
    kp[..., :2] = (_project(joints, torch.tensor([[0.0, 0.0, 45.0]], dtype=torch.float64)) - 112) / 112
    turned = joints * torch.tensor([-1.0, -1.0, 1.0], dtype=torch.float64)
    assert fit_losses(joints, kp).item() < 1e-6
    px = kp.clone()
    px[..., :2] = 112 * (px[..., :2] + 1)
    cam_t = estimate_translation(turned, px)
    assert cam_t[0, 2] < 0 and fitting_loss(turned, px, cam_t).item() < 100  # what SPIN's rule alone would do
    assert fit_losses(turned, kp).item() == float("inf")


# ----------------------------------------------------------------------------------------------- in the losses


def _turn(pose: torch.Tensor, deg: float) -> torch.Tensor:
    """Axis-angle pose (72,) with the global orientation turned `deg` about the camera axis (in the image plane)."""
    from scipy.spatial.transform import Rotation

    out = pose.clone()
    glob = Rotation.from_rotvec([0, 0, np.radians(deg)]) * Rotation.from_rotvec(pose[:3].numpy())
    out[:3] = torch.from_numpy(glob.as_rotvec()).float()
    return out


@pytest.fixture(scope="module")
def scene(synth_root):
    """SMPL of the synthetic root and three samples showing the same body (keypoints = its projection):
    0 a perfect fit, 1 a fit turned 45 deg in the image plane (loss ~2500), 2 that wrong pose as SMPL ground truth."""
    smpl = training_smpl(synth_root, TrainSpec())
    fit = np.load(synth_root / "static_fits" / "coco_fits.npy")[0]
    pose, betas = torch.from_numpy(fit[:72]), torch.from_numpy(fit[72:])
    with torch.no_grad():
        joints = smpl(batch_rodrigues(pose.reshape(-1, 3)).reshape(1, 24, 3, 3), betas[None]).joints.double()
    kp = torch.ones(3, 49, 3)
    kp[:, :, :2] = ((_project(joints, torch.tensor([[0.05, 0.1, 45.0]], dtype=torch.float64)) - 112) / 112).float()
    targets = {"keypoints": kp, "pose": torch.stack([pose, _turn(pose, 45), _turn(pose, 45)]),
               "betas": betas.expand(3, 10).clone(), "has_smpl": torch.ones(3), "fitted": torch.tensor([1.0, 1.0, 0.0]),
               "pose_3d": torch.zeros(3, 24, 4), "has_pose_3d": torch.zeros(3)}
    return smpl, targets


def _pose_grad(smpl, targets, weights):
    """The SMPL terms and the gradient of the pose term w.r.t. each sample's predicted rotations (B,)."""
    rotmat = torch.eye(3).expand(3, 24, 3, 3).clone().requires_grad_(True)
    out = {"rotmat": rotmat, "betas": torch.zeros(3, 10), "cam": torch.tensor([[0.9, 0.0, 0.0]] * 3)}
    terms, _ = spin_batch_terms(out, smpl, dict(targets), weights=weights, img_res=224)
    terms["pose"].backward()
    return terms, rotmat.grad.flatten(1).abs().sum(1)


def test_a_bad_fit_is_no_target_and_a_good_one_is(scene):
    smpl, targets = scene
    terms, grad = _pose_grad(smpl, targets, LossWeights())
    assert grad[0] > 0 and grad[1] == 0 and grad[2] > 0  # good fit used, bad fit dropped, ground truth kept
    assert terms["fits_rejected"].item() == pytest.approx(1 / 3)
    losses = compute_losses(terms, LossWeights())
    weighted = sum(getattr(LossWeights(), k) * v for k, v in terms.items() if k != "fits_rejected")
    assert losses["total"].item() == pytest.approx(60 * weighted.item())  # the statistic is not a loss
    assert targets["has_smpl"].tolist() == [1.0, 1.0, 1.0]  # the caller's targets are left alone


def test_the_switch_off_uses_every_fit(scene):
    smpl, targets = scene
    spec = recipe_from_dict({"train": {"fit_threshold": None}}).train
    assert spec.fit_threshold is None and TrainSpec().fit_threshold == 100.0
    assert loss_weights(TrainSpec()).fit_threshold == 100.0
    weights = loss_weights(spec)
    assert weights.fit_threshold is None
    terms, grad = _pose_grad(smpl, targets, weights)
    assert bool((grad > 0).all()) and "fits_rejected" not in terms
    # a threshold above the bad fit's loss keeps it too
    _, grad = _pose_grad(smpl, targets, LossWeights(fit_threshold=1e9))
    assert bool((grad > 0).all())


def test_extreme_betas_are_zeroed(tmp_path):
    (tmp_path / "static_fits").mkdir()
    fits = np.zeros((3, 82), np.float32)
    fits[:, 72:] = 0.5
    fits[0, 74], fits[1, 80], fits[2, 73] = 3.2, -3.5, 2.9
    np.save(tmp_path / "static_fits" / "mpii_fits.npy", fits)
    batch = {"dataset_name": ["mpii"] * 3, "sample_index": torch.arange(3), "rot_angle": torch.zeros(3),
             "is_flipped": torch.zeros(3), "keypoints": torch.zeros(3, 49, 3), "pose_3d": torch.zeros(3, 24, 4),
             "has_pose_3d": torch.zeros(3), "pose": torch.zeros(3, 72), "betas": torch.zeros(3, 10),
             "has_smpl": torch.zeros(3)}
    targets = batch_targets(batch, torch.device("cpu"), fits=StaticFits(tmp_path, ["mpii"]))
    assert targets["betas"][0].abs().sum() == 0 and targets["betas"][1].abs().sum() == 0
    torch.testing.assert_close(targets["betas"][2], torch.from_numpy(fits[2, 72:]))
    assert targets["fitted"].tolist() == [1.0, 1.0, 1.0]


# ----------------------------------------------------------------------------------------------- synthetic root


def test_the_synthetic_root_has_bad_fits_that_the_rule_rejects(synth_root):
    smpl = training_smpl(synth_root, TrainSpec())
    fits = StaticFits(synth_root, NO_GT_KEYS)
    assert sorted(fits.fits) == sorted(NO_GT_KEYS)
    kinds = {"good": [], "wrong": [], "betas": []}
    for key in NO_GT_KEYS:
        raw = np.load(synth_root / "static_fits" / f"{key}_fits.npy")
        row = np.arange(len(raw)) % synthetic.BAD_FIT_EVERY
        assert (np.abs(raw[row == synthetic.EXTREME_BETAS, 72:]).max(1) > 3).all()
        assert (np.abs(raw[row != synthetic.EXTREME_BETAS, 72:]).max(1) <= 3).all()
        ds = BaseDataset(synth_root, key, img_res=32, is_train=True, augment=False)
        batch = default_collate([ds[i] for i in range(len(ds))])
        targets = batch_targets(batch, torch.device("cpu"), fits=fits)
        assert targets["fitted"].tolist() == [1.0] * len(ds)
        assert targets["betas"][row == synthetic.EXTREME_BETAS].abs().sum() == 0  # zeroed, as SPIN
        with torch.no_grad():
            rotmat = batch_rodrigues(targets["pose"].reshape(-1, 3)).reshape(-1, 24, 3, 3)
            loss = fit_losses(smpl(rotmat, targets["betas"]).joints, targets["keypoints"])
        for i, value in enumerate(loss.tolist()):
            kinds["wrong" if row[i] == synthetic.WRONG_POSE else "betas" if row[i] == synthetic.EXTREME_BETAS
                  else "good"].append(value)
        if key == "mpii":  # the whole path: the loss terms report the rejected share of the batch
            out = {"rotmat": torch.eye(3).expand(len(ds), 24, 3, 3), "betas": torch.zeros(len(ds), 10),
                   "cam": torch.tensor([[0.9, 0.0, 0.0]]).expand(len(ds), 3)}
            terms, _ = spin_batch_terms(out, smpl, targets, weights=LossWeights(), img_res=32)
            assert terms["fits_rejected"].item() == pytest.approx((row == synthetic.WRONG_POSE).mean())
    assert len(kinds["wrong"]) == len(NO_GT_KEYS) and len(kinds["betas"]) >= len(NO_GT_KEYS)
    assert min(kinds["wrong"]) > 300, kinds["wrong"]  # far above SPIN's threshold of 100
    assert max(kinds["good"]) < 10, kinds["good"]  # exact fits: only the OpenPose noise
    assert max(kinds["betas"]) < 100, kinds["betas"]  # zeroed betas: the mean shape still fits the keypoints
