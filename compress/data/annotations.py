"""SPIN's annotation files and image folders: where a dataset's npz and images are, and what the npz holds.

A data root has SPIN's layout (DESIGN.md "Data root"): `dataset_extras/<npz>` per dataset and split, images under
`<root>/<folder>` with the npz `imgname` relative to it (folders in `compress.constants.IMAGE_FOLDERS`, each
movable with `image_roots`). As in SPIN, a dataset key resolves to the eval split's npz when `is_train` is False
and to the train split's npz otherwise (`mpi-inf-3dhp` exists in both).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

from compress.constants import EVAL_DATASETS, IMAGE_FOLDERS, TRAIN_DATASETS, UPI_S1H_FOLDER
from compress.errors import UserError


# ----------------------------------------------------------------------------------------------- files


def npz_path(root: str | os.PathLike, key: str, *, is_train: bool) -> Path:
    """`<root>/dataset_extras/<npz>` of a dataset key for the train or eval split (SPIN's DATASET_FILES)."""
    table = TRAIN_DATASETS if is_train else EVAL_DATASETS
    if key not in table:
        split = "training" if is_train else "evaluation"
        raise UserError(f"unknown {split} dataset {key!r}; valid: {', '.join(table)}")
    return Path(root) / "dataset_extras" / f"{table[key]}.npz"


def image_folder(root: str | os.PathLike, key: str, image_roots: Optional[dict] = None) -> Path:
    """Folder the npz `imgname` is relative to: `image_roots[key]` if given, else `<root>/<IMAGE_FOLDERS[key]>`."""
    if image_roots and key in image_roots:
        return Path(image_roots[key])
    return Path(root) / IMAGE_FOLDERS[key]


def masks_folder(root: str | os.PathLike, image_roots: Optional[dict] = None) -> Path:
    """UP-3D's UPi-S1h folder (LSP test masks and part PNGs); `image_roots["upi-s1h"]` moves it."""
    if image_roots and UPI_S1H_FOLDER in image_roots:
        return Path(image_roots[UPI_S1H_FOLDER])
    return Path(root) / UPI_S1H_FOLDER


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """All arrays of an npz file (no pickles: object arrays are refused)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"missing dataset file {path} (run `compress data synth`, or point --data at a SPIN root)")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except ValueError as exc:
        raise UserError(f"{path}: {exc} (store strings as fixed-width unicode arrays)") from None
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: not a readable npz file ({exc})") from None


# ----------------------------------------------------------------------------------------------- annotations


@dataclass(frozen=True)
class Annotations:
    """One npz file with SPIN's fields and defaults; N samples."""

    imgname: np.ndarray     # (N,) str, relative to the image folder
    center: np.ndarray      # (N, 2) px, float64
    scale: np.ndarray       # (N,) box side / 200, float64
    keypoints: np.ndarray   # (N, 49, 3) = concat[openpose (25), part (24)], px + confidence
    pose: np.ndarray        # (N, 72) axis-angle (zeros where has_smpl is 0)
    betas: np.ndarray       # (N, 10)
    has_smpl: np.ndarray    # (N,) 0/1
    pose_3d: np.ndarray     # (N, 24, 4) root-centred metres + validity (zeros without S)
    has_pose_3d: int        # dataset-level flag: the npz has S
    gender: np.ndarray      # (N,) 0 male, 1 female, -1 unknown
    maskname: np.ndarray    # (N,) str, "" if absent
    partname: np.ndarray    # (N,) str, "" if absent

    def __len__(self) -> int:
        return len(self.imgname)


def annotations_from_npz(data: dict[str, np.ndarray]) -> Annotations:
    """SPIN's BaseDataset field handling: missing part/openpose are zeros, SMPL params count where present (with
    `has_smpl` if given, else all ones), S sets the dataset's has_pose_3d, gender 'm' -> 0, 'f' -> 1, else -1."""
    n = len(data["imgname"])
    zeros = lambda *shape: np.zeros((n, *shape), np.float32)  # noqa: E731
    part = data["part"].astype(np.float32) if "part" in data else zeros(24, 3)
    openpose = data["openpose"].astype(np.float32) if "openpose" in data else zeros(25, 3)
    has_params = "pose" in data and "shape" in data
    has_smpl = data["has_smpl"].astype(np.float32) if "has_smpl" in data else np.full(n, float(has_params), np.float32)
    return Annotations(
        # center and scale stay float64 as in SPIN: its eval crop box is truncated from them (compress.data.crop)
        imgname=data["imgname"].astype(str), center=data["center"].astype(np.float64),
        scale=data["scale"].astype(np.float64).reshape(n), keypoints=np.concatenate([openpose, part], axis=1),
        pose=data["pose"].astype(np.float32) if has_params else zeros(72),
        betas=data["shape"].astype(np.float32)[:, :10] if has_params else zeros(10),
        has_smpl=has_smpl if has_params else np.zeros(n, np.float32),
        pose_3d=data["S"].astype(np.float32) if "S" in data else zeros(24, 4), has_pose_3d=int("S" in data),
        gender=_genders(data["gender"]) if "gender" in data else np.full(n, -1, np.int64),
        maskname=data["maskname"].astype(str) if "maskname" in data else np.full(n, "", dtype=object),
        partname=data["partname"].astype(str) if "partname" in data else np.full(n, "", dtype=object),
    )


def _genders(values: np.ndarray) -> np.ndarray:
    if np.issubdtype(values.dtype, np.number):
        return values.astype(np.int64)
    table = {"m": 0, "male": 0, "f": 1, "female": 1}
    return np.array([table.get(str(g).strip().lower(), -1) for g in values], np.int64)


def load_annotations(root: str | os.PathLike, key: str, *, is_train: bool) -> Annotations:
    return annotations_from_npz(read_npz(npz_path(root, key, is_train=is_train)))


def open_image(path: Path, key: str) -> Image.Image:
    """PIL image (lazy decode) with a one-line error naming the file and the setting that moves the folder."""
    try:
        return Image.open(path)
    except FileNotFoundError:
        raise UserError(f"image not found: {path} (dataset {key}; set data.image_roots.{key} if the images "
                        "live elsewhere)") from None
    except OSError as exc:
        raise UserError(f"cannot read image {path}: {exc}") from None
