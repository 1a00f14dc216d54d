"""HMR networks: image -> features -> iterative error feedback (IEF) -> SMPL pose (6D), shape, camera.

Layout and initialisation follow SPIN's `models/hmr.py` (../shared/reference/spin_protocol.md section 1).
The concat order inside the IEF loop is `[features, pose, shape, cam]` and the initial estimates are
buffers, exactly as SPIN: Torch-Pruning maps the concat correctly only in this order (torch_pruning_notes.md
sections 0 and 4.2), so keep it.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from compress.constants import N_ESTIMATE, NPOSE_6D, NUM_SMPL_JOINTS
from compress.errors import UserError
from compress.geometry import rot6d_to_rotmat

# SPIN's data/smpl_mean_params.npz `shape` (float32), used when no mean-params file is given.
DEFAULT_MEAN_SHAPE = (0.205610, 0.335563, -0.350683, 0.356129, 0.417541, 0.030888, 0.304757, 0.236134, 0.209127,
                      0.312126)
DEFAULT_MEAN_CAM = (0.9, 0.0, 0.0)
GLOBAL_ORIENT_6D = (1.0, 0.0, 0.0, -1.0, 0.0, 0.0)  # diag(1,-1,-1): 180 degrees about x (the camera looks at +z)
IDENTITY_6D = (1.0, 0.0, 0.0, 1.0, 0.0, 0.0)


def mean_params(path: str | Path | None = None) -> dict[str, torch.Tensor]:
    """SMPL mean parameters {pose (144,), shape (10,), cam (3,)}: SPIN's npz (numpy only, no pickle) or defaults."""
    if path is None:
        pose = torch.tensor(GLOBAL_ORIENT_6D + IDENTITY_6D * (NUM_SMPL_JOINTS - 1))
        return {"pose": pose, "shape": torch.tensor(DEFAULT_MEAN_SHAPE), "cam": torch.tensor(DEFAULT_MEAN_CAM)}
    path = Path(path)
    if not path.is_file():
        raise UserError(f"mean params file not found: {path} (SPIN's data/smpl_mean_params.npz), or leave it unset")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: np.asarray(npz[k], dtype=np.float32).reshape(-1) for k in ("pose", "shape", "cam")}
    except (KeyError, ValueError, OSError) as exc:
        raise UserError(f"cannot read mean params {path}: {exc} (need arrays pose (144,), shape (10,), cam (3,))")
    sizes = {"pose": NPOSE_6D, "shape": 10, "cam": 3}
    for key, n in sizes.items():
        if arrays[key].size != n:
            raise UserError(f"mean params {path}: `{key}` has {arrays[key].size} values, expected {n}")
    return {k: torch.from_numpy(v.copy()) for k, v in arrays.items()}


class IEFModel(nn.Module):
    """Shared behaviour: buffers with the initial estimate, forward = extract_features + regress."""

    n_iter: int
    img_res: int
    head_names: list[str]
    regressor_names: list[str]
    concat_layers: list[str]  # Linear layers whose input is cat[features, pose, shape, cam]

    def _register_estimate(self, path: str | Path | None) -> None:
        # Registered before any module so the state_dict starts with init_pose, init_shape, init_cam (as SPIN).
        params = mean_params(path)
        self.register_buffer("init_pose", params["pose"].reshape(1, NPOSE_6D).float())
        self.register_buffer("init_shape", params["shape"].reshape(1, 10).float())
        self.register_buffer("init_cam", params["cam"].reshape(1, 3).float())

    def _initial_estimate(self, batch: int, init_pose, init_shape, init_cam):
        pose = self.init_pose.expand(batch, -1) if init_pose is None else init_pose.expand(batch, -1)
        shape = self.init_shape.expand(batch, -1) if init_shape is None else init_shape.expand(batch, -1)
        cam = self.init_cam.expand(batch, -1) if init_cam is None else init_cam.expand(batch, -1)
        return pose, shape, cam  # (B, 144), (B, 10), (B, 3)

    def extract_features(self, img: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def regress(self, features: torch.Tensor, *, n_iter: int | None = None, init_pose=None, init_shape=None,
                init_cam=None) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def forward(self, img: torch.Tensor, *, n_iter: int | None = None, init_pose=None, init_shape=None,
                init_cam=None) -> dict[str, torch.Tensor]:
        features = self.extract_features(img)  # (B, F)
        return self.regress(features, n_iter=n_iter, init_pose=init_pose, init_shape=init_shape, init_cam=init_cam)

    def _output(self, features, pose, shape, cam) -> dict[str, torch.Tensor]:
        rotmat = rot6d_to_rotmat(pose).view(pose.shape[0], NUM_SMPL_JOINTS, 3, 3)  # (B, 24, 3, 3)
        return {"rotmat": rotmat, "betas": shape, "cam": cam, "pose6d": pose, "features": features}


class HMR(IEFModel):
    """SPIN's regressor on any encoder.

    `backbone` modules are registered at the root under their names (SPIN's ResNet-50 keeps conv1 ... layer4
    there) or as one `encoder` submodule; `pool` says whether the trunk output still needs global pooling.
    """

    def __init__(self, backbone: "OrderedDict[str, nn.Module]", *, feat_dim: int, pool: bool, hidden: int = 1024,
                 fc2: bool = True, n_iter: int = 3, ief_relu: bool = False, img_res: int = 224,
                 mean_params: str | Path | None = None, dropout: float = 0.5) -> None:
        super().__init__()
        self._register_estimate(mean_params)
        self._trunk = list(backbone)
        for name, module in backbone.items():
            self.add_module(name, module)
        if pool:
            self.avgpool = nn.AdaptiveAvgPool2d(1)  # SPIN: AvgPool2d(7), which only fits 224 px input
        self.fc1 = nn.Linear(feat_dim + N_ESTIMATE, hidden)
        self.drop1 = nn.Dropout(dropout)
        if fc2:
            self.fc2 = nn.Linear(hidden, hidden)
            self.drop2 = nn.Dropout(dropout)
        self.decpose = nn.Linear(hidden, NPOSE_6D)
        self.decshape = nn.Linear(hidden, 10)
        self.deccam = nn.Linear(hidden, 3)
        for head in (self.decpose, self.decshape, self.deccam):
            nn.init.xavier_uniform_(head.weight, gain=0.01)
        self.n_iter = n_iter
        self.ief_relu = ief_relu
        self.img_res = img_res
        self.head_names = ["decpose", "decshape", "deccam"]
        self.regressor_names = ["fc1", "drop1"] + (["fc2", "drop2"] if fc2 else []) + self.head_names
        self.concat_layers = ["fc1"]

    def extract_features(self, img: torch.Tensor) -> torch.Tensor:
        x = img
        for name in self._trunk:
            x = getattr(self, name)(x)
        if hasattr(self, "avgpool"):
            x = self.avgpool(x)
        return x.flatten(1)  # (B, F)

    def regress(self, features: torch.Tensor, *, n_iter: int | None = None, init_pose=None, init_shape=None,
                init_cam=None) -> dict[str, torch.Tensor]:
        pose, shape, cam = self._initial_estimate(features.shape[0], init_pose, init_shape, init_cam)
        act = F.relu if self.ief_relu else (lambda t: t)  # SPIN has no nonlinearity here (original HMR had ReLU)
        for _ in range(self.n_iter if n_iter is None else n_iter):
            xc = torch.cat([features, pose, shape, cam], dim=1)  # (B, F + 157); features first, see module doc
            x = self.drop1(act(self.fc1(xc)))
            if hasattr(self, "fc2"):
                x = self.drop2(act(self.fc2(x)))
            pose = self.decpose(x) + pose
            shape = self.decshape(x) + shape
            cam = self.deccam(x) + cam
        return self._output(features, pose, shape, cam)


class SeedHMR(IEFModel):
    """The original study's "My MobileNetV2" head (seed_study.md), with its shape update fixed.

    MobileNetV2 features (1280 x h x w) feed a 24 x 24 attention-like map: a = softmax(Linear(conv2(f).flatten))
    (B,24,1), b = Linear(avgpool(f)) (B,1,24); conv3 maps (a @ b).flatten (576) to the features x (B, hidden).
    IEF: each estimate gets its own decoder on cat[x, pose, shape, cam] and a small Linear merging the
    decoder output with the previous estimate. The original fixed 24*7*7 = 1176 (224 px); here h = w = ceil(R/32).
    """

    def __init__(self, encoder: nn.Module, *, hidden: int = 1024, n_iter: int = 3, img_res: int = 224,
                 mean_params: str | Path | None = None, attn: int = 24) -> None:
        super().__init__()
        self._register_estimate(mean_params)
        self.encoder = encoder  # torchvision MobileNetV2 without classifier; `.features` is the trunk
        side = math.ceil(img_res / 32)
        self.conv2 = nn.Conv2d(1280, attn, 1, bias=False)
        self.classifier2 = nn.Linear(attn * side * side, attn)
        self.classifier1 = nn.Linear(1280, attn)
        self.conv3 = nn.Linear(attn * attn, hidden)
        xc = hidden + N_ESTIMATE
        self.decpose2 = nn.Linear(xc, NPOSE_6D)
        self.decshape2 = nn.Linear(xc, 10)
        self.deccam2 = nn.Linear(xc, 3)
        self.poseconv = nn.Linear(2 * NPOSE_6D, NPOSE_6D)
        self.shapeconv = nn.Linear(2 * 10, 10)
        self.camconv = nn.Linear(2 * 3, 3)
        for dec in (self.decpose2, self.decshape2, self.deccam2):
            nn.init.xavier_uniform_(dec.weight, gain=0.01)
        for merge in (self.poseconv, self.shapeconv, self.camconv):
            # Start as SPIN's residual update (new = delta + old); the study's init is not documented.
            n = merge.out_features
            with torch.no_grad():
                merge.weight.copy_(torch.cat([torch.eye(n), torch.eye(n)], dim=1))
                merge.bias.zero_()
        self.n_iter = n_iter
        self.img_res = img_res
        self.head_names = ["classifier1", "classifier2", "decpose2", "decshape2", "deccam2", "poseconv", "shapeconv",
                           "camconv"]
        self.regressor_names = ["decpose2", "decshape2", "deccam2", "poseconv", "shapeconv", "camconv"]
        self.concat_layers = ["decpose2", "decshape2", "deccam2"]

    def extract_features(self, img: torch.Tensor) -> torch.Tensor:
        f = self.encoder.features(img)  # (B, 1280, h, w)
        a = torch.softmax(self.classifier2(self.conv2(f).flatten(1)), dim=1).unsqueeze(2)  # (B, 24, 1)
        b = self.classifier1(F.adaptive_avg_pool2d(f, 1).flatten(1)).unsqueeze(1)  # (B, 1, 24)
        return self.conv3(torch.bmm(a, b).flatten(1))  # (B, 24, 24) -> (B, hidden)

    def regress(self, features: torch.Tensor, *, n_iter: int | None = None, init_pose=None, init_shape=None,
                init_cam=None) -> dict[str, torch.Tensor]:
        pose, shape, cam = self._initial_estimate(features.shape[0], init_pose, init_shape, init_cam)
        for _ in range(self.n_iter if n_iter is None else n_iter):
            xc = torch.cat([features, pose, shape, cam], dim=1)  # (B, hidden + 157)
            pose = self.poseconv(torch.cat([self.decpose2(xc), pose], dim=1))  # (B, 144)
            shape = self.shapeconv(torch.cat([self.decshape2(xc), shape], dim=1))  # (B, 10); the original lost this
            cam = self.camconv(torch.cat([self.deccam2(xc), cam], dim=1))  # (B, 3)
        return self._output(features, pose, shape, cam)
