import math

import numpy as np
import pytest
import torch

from compress import geometry as g


def _rot_z(deg, dtype=torch.float64):
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]], dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rot6d_identity_and_spin_layout(dtype):
    six = torch.tensor([[1, 0, 0, 1, 0, 0]], dtype=dtype)
    assert torch.allclose(g.rot6d_to_rotmat(six)[0], torch.eye(3, dtype=dtype))
    # SPIN's mean global orientation [1,0,0,-1,0,0] is diag(1,-1,-1): 180 degrees about x.
    flip = g.rot6d_to_rotmat(torch.tensor([1.0, 0, 0, -1, 0, 0], dtype=dtype))[0]
    assert torch.allclose(flip, torch.diag(torch.tensor([1.0, -1, -1], dtype=dtype)))


def test_rot6d_round_trip_and_three_rotations():
    torch.manual_seed(0)
    rot = g.batch_rodrigues(torch.randn(3, 3, dtype=torch.float64))  # exactly 3: SPIN's cross() pitfall
    back = g.rot6d_to_rotmat(g.rotmat_to_rot6d(rot))
    assert torch.allclose(back, rot, atol=1e-10)
    assert torch.allclose(torch.linalg.det(back), torch.ones(3, dtype=torch.float64))


def test_rodrigues_closed_forms():
    aa = torch.tensor([[0.0, 0.0, math.pi / 2], [0.0, 0.0, 0.0]], dtype=torch.float64)
    r = g.batch_rodrigues(aa)
    assert torch.allclose(r[0], _rot_z(90), atol=1e-12)
    assert torch.allclose(r[1], torch.eye(3, dtype=torch.float64))


@pytest.mark.parametrize("angle", [0.0, 1e-6, 0.3, 2.0, math.pi - 1e-5, math.pi])
def test_axis_angle_round_trip(angle):
    axis = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)
    aa = (axis / axis.norm() * angle)[None]
    r = g.batch_rodrigues(aa)
    back = g.batch_rodrigues(g.rotmat_to_axis_angle(r))
    assert torch.allclose(back, r, atol=1e-6)


def test_cam_to_translation_and_projection_weak_perspective_limit():
    cam = torch.tensor([[0.9, 0.1, -0.2]])
    t = g.cam_to_translation(cam, img_res=224)
    assert torch.allclose(t, torch.tensor([[0.1, -0.2, 2 * 5000 / (224 * 0.9)]]), rtol=1e-6)
    pts = torch.tensor([[[0.0, 0.0, 0.0], [0.2, -0.1, 0.0]]])
    uv = g.project_to_crop(pts, cam, img_res=224)
    # for depth << tz, x ~= s * (X + tx)
    assert torch.allclose(uv, 0.9 * (pts[..., :2] + cam[:, None, 1:]), atol=1e-5)


def test_perspective_projection_pixels():
    pts = torch.tensor([[[1.0, 2.0, 10.0]]])
    uv = g.perspective_projection(pts, torch.eye(3)[None], torch.zeros(1, 3), 100.0, torch.tensor([[50.0, 60.0]]))
    assert torch.allclose(uv, torch.tensor([[[60.0, 80.0]]]))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_similarity_transform_recovers_rotated_scaled_copy(dtype):
    torch.manual_seed(1)
    x = torch.randn(4, 14, 3, dtype=dtype)
    rot = g.batch_rodrigues(torch.randn(4, 3, dtype=dtype))
    y = 1.7 * x @ rot.transpose(1, 2) + torch.tensor([0.3, -1.0, 2.0], dtype=dtype)
    aligned = g.similarity_transform(x, y)
    assert (aligned - y).norm(dim=-1).max() < (1e-4 if dtype == torch.float32 else 1e-10)


def test_similarity_transform_mirror_is_not_reflected():
    torch.manual_seed(2)
    x = torch.randn(1, 10, 3, dtype=torch.float64)
    y = x * torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64)  # a mirrored copy
    aligned = g.similarity_transform(x, y)
    # a proper rotation cannot undo a mirror: the error stays positive, and it matches a numpy reference
    x0 = x[0].numpy() - x[0].numpy().mean(0)
    y0 = y[0].numpy() - y[0].numpy().mean(0)
    u, _, vt = np.linalg.svd(x0.T @ y0)
    z = np.diag([1, 1, np.sign(np.linalg.det(u @ vt))])
    r = vt.T @ z @ u.T
    s = np.trace(r @ (x0.T @ y0)) / (x0**2).sum()
    ref = s * x0 @ r.T + y[0].numpy().mean(0)
    assert np.allclose(aligned[0].numpy(), ref, atol=1e-10)
    assert (aligned - y).norm(dim=-1).mean() > 1e-3
