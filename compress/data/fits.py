"""SPIN's static fits: SMPL targets for training samples without SMPL ground truth."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

from compress.data.crop import augment_pose
from compress.errors import UserError

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
        """Fill pose/betas/has_smpl of the samples without SMPL ground truth from their fits (in place)."""
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
        if rows:
            idx = torch.tensor(rows, device=targets["pose"].device)
            targets["pose"][idx] = torch.from_numpy(np.stack(poses)).to(targets["pose"])
            targets["betas"][idx] = torch.from_numpy(np.stack(betas)).to(targets["betas"])
            targets["has_smpl"][idx] = 1.0
