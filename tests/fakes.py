"""Stand-ins for the training-loop tests (tests/test_train.py, and the DDP worker script of tests/test_ddp.py,
which imports this file by path): a linear "SMPL" and a small seeded dataset with SPIN's item fields."""
from __future__ import annotations

import types

import torch
from torch import nn

RES = 32
EPOCH = [0]  # the epoch the loader factory is at (ToyData's nan_from reads it)


class FakeSMPL(nn.Module):
    """A fixed linear map (rotmat, betas) -> 49 joints, standing in for SMPL in loop tests."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(24 * 9 + 10, 49 * 3, generator=g) * 0.02)

    def forward(self, rotmat, betas):
        joints = (torch.cat([rotmat.flatten(1), betas], 1) @ self.w).view(-1, 49, 3)  # (B, 49, 3)
        return types.SimpleNamespace(vertices=joints, joints=joints)


class ToyData(torch.utils.data.Dataset):
    """n seeded items at RES px; every other one has SMPL targets (every one with all_smpl). With nan_from, a
    keypoint is NaN from that epoch on (a bad sample)."""

    def __init__(self, n: int = 16, *, nan_from: int | None = None, all_smpl: bool = False) -> None:
        g = torch.Generator().manual_seed(1)
        self.img = torch.randn(n, 3, RES, RES, generator=g)
        self.kp = torch.rand(n, 49, 3, generator=g) * 2 - 1
        self.kp[:, :, 2] = 1
        self.p3 = torch.randn(n, 24, 4, generator=g) * 0.2
        self.p3[:, :, 3] = 1
        self.pose = torch.randn(n, 72, generator=g) * 0.2
        self.nan_from = nan_from
        self.all_smpl = all_smpl

    def __len__(self) -> int:
        return len(self.img)

    def __getitem__(self, i):
        kp = self.kp[i].clone()
        if self.nan_from is not None and EPOCH[0] >= self.nan_from:
            kp[25, 0] = float("nan")
        return {"img": self.img[i], "keypoints": kp, "pose_3d": self.p3[i], "has_pose_3d": torch.tensor(1.0),
                "pose": self.pose[i], "betas": torch.zeros(10), "has_smpl": torch.tensor(1.0 if self.all_smpl else float(i % 2))}
