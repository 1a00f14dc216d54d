"""Constant predictors that calibrate what a trained model's numbers mean on a data root.

`rest`: every image gets the rest pose (T-pose), facing the camera, with zero betas.
`mean`: every image gets the data root's `smpl_mean_params.npz` (SPIN's file: its training data's mean pose and
shape), which is also where a freshly initialised model starts. A model whose PA-MPJPE is not below `mean`'s has
not learned articulation.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from compress.constants import SMPL_MEAN_PARAMS
from compress.errors import UserError
from compress.geometry import rot6d_to_rotmat
from compress.models.hmr import mean_params

REFERENCES = ("rest", "mean")


class ConstantModel(nn.Module):
    """image batch -> the same {"rotmat", "betas", "cam"} for every image."""

    def __init__(self, pose6d: torch.Tensor, betas: torch.Tensor, cam: torch.Tensor, img_res: int):
        super().__init__()
        self.img_res = img_res
        self.register_buffer("rotmat", rot6d_to_rotmat(pose6d.reshape(1, -1).float()).reshape(1, 24, 3, 3))
        self.register_buffer("betas", betas.reshape(1, 10).float())
        self.register_buffer("cam", cam.reshape(1, 3).float())

    def forward(self, img: torch.Tensor) -> dict[str, torch.Tensor]:
        n = img.shape[0]
        return {"rotmat": self.rotmat.expand(n, -1, -1, -1), "betas": self.betas.expand(n, -1),
                "cam": self.cam.expand(n, -1)}


def reference_model(kind: str, root: str | Path, *, img_res: int = 64) -> ConstantModel:
    """The constant predictor `kind` (rest | mean) for data root `root`."""
    if kind not in REFERENCES:
        raise UserError(f"unknown reference {kind!r}; choose one of {', '.join(REFERENCES)}")
    if kind == "rest":
        p = mean_params(None)
        return ConstantModel(p["pose"], torch.zeros(10), p["cam"], img_res)
    path = Path(root) / SMPL_MEAN_PARAMS
    if not path.is_file():
        raise UserError(f"--reference mean needs {path} (SPIN's smpl_mean_params.npz); use --reference rest")
    p = mean_params(path)
    return ConstantModel(p["pose"], p["shape"], p["cam"], img_res)
