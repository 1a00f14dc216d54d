"""SPIN's datasets: the per-sample item (crop + augmentation) and the mixed training set. Files and annotation
fields: compress.data.annotations.

Items follow SPIN's layout (spin_protocol.md section 5); see `BaseDataset.get_item`. Crops: evaluation splits use
SPIN's exact eval crop (`compress.data.crop.spin_crop`, so a SPIN checkpoint sees SPIN's pixels), training splits
the continuous warp with augmentation (`crop="spin"|"warp"` overrides). Augmentation is
deterministic: inside a DataLoader worker a sample's parameters depend only on (dataset seed, the loader's base
seed for this epoch, index), so they do not depend on the number of workers; in the main process the base seed
is drawn from torch's global generator.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from compress.data import crop as C
from compress.data.annotations import image_folder, load_annotations, masks_folder, npz_path, open_image
from compress.data.cache import DEFAULT_MARGIN, open_dataset_cache
from compress.errors import UserError

log = logging.getLogger(__name__)

ITW = "itw"  # the mix key whose weight is shared by every dataset the mix does not name, in proportion to size


# ----------------------------------------------------------------------------------------------- one dataset


class BaseDataset(torch.utils.data.Dataset):
    """One SPIN dataset (npz + images) -> SPIN items at any `img_res`, with SPIN's augmentation when training.

    `cache`: False, True (the HDF5 cache under `<root>/cache`, built if missing or stale) or a cache folder.
    `crop`: "spin" (SPIN's eval pixels, no augmentation) or "warp" (continuous warp); default "spin" for
    evaluation splits (`is_train=False`), "warp" for training splits.
    """

    def __init__(self, root: str | os.PathLike, dataset_key: str, *, img_res: int, is_train: bool, augment: bool,
                 image_roots: Optional[dict] = None, subset: Optional[int] = None,
                 cache: bool | str | os.PathLike = False, seed: int = 0, crop: Optional[str] = None):
        self.root, self.key, self.img_res = Path(root), dataset_key, int(img_res)
        self.is_train, self.augment, self.seed = is_train, bool(augment and is_train), int(seed)
        self.crop_kind = crop or ("warp" if is_train else "spin")
        if self.crop_kind not in C.CROPS:
            raise ValueError(f"crop must be one of {C.CROPS}, not {crop!r}")
        if self.crop_kind == "spin" and self.augment:
            raise ValueError("crop='spin' is SPIN's evaluation crop and takes no augmentation; use crop='warp'")
        self.ann = load_annotations(root, dataset_key, is_train=is_train)
        self.folder = image_folder(root, dataset_key, image_roots)
        self.masks = masks_folder(root, image_roots)
        self.n = len(self.ann) if subset is None else min(int(subset), len(self.ann))
        self.cache = None
        if cache:
            self.cache = open_dataset_cache(self, out=None if cache is True else cache,
                                            margin=DEFAULT_MARGIN if self.augment else 0.0, crop=self.crop_kind)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> dict:
        return self.get_item(index, rng=item_rng(self.seed, index) if self.augment else None)

    def augmentation(self, rng: Optional[np.random.Generator]) -> C.Augmentation:
        return C.sample_augmentation(rng) if (self.augment and rng is not None) else C.Augmentation()

    def get_item(self, index: int, *, rng: Optional[np.random.Generator] = None,
                 aug: Optional[C.Augmentation] = None) -> dict:
        """SPIN's item for sample `index`; `aug` fixes the augmentation (else it is drawn from `rng` when training)."""
        if not 0 <= index < self.n:
            raise IndexError(f"{self.key}: index {index} out of range 0..{self.n - 1}")
        a = self.ann
        aug = aug if aug is not None else self.augmentation(rng)
        scale, center = float(a.scale[index]) * aug.sc, a.center[index]
        matrix = C.crop_matrix(center, scale, self.img_res, aug.rot)
        crop, orig_shape = self.crop(index, matrix, scale)
        img = C.spin_tensor(crop) if self.crop_kind == "spin" else C.to_tensor_image(crop, flip=aug.flip, pn=aug.pn)
        has_smpl = float(a.has_smpl[index])
        return {
            "img": torch.from_numpy(img),  # (3, R, R)
            "pose": torch.from_numpy(C.augment_pose(a.pose[index], aug.rot, flip=aug.flip) if has_smpl
                                     else np.zeros(72, np.float32)),
            "betas": torch.from_numpy(a.betas[index].copy() if has_smpl else np.zeros(10, np.float32)),
            "pose_3d": torch.from_numpy(C.rotate_joints3d(a.pose_3d[index], aug.rot, flip=aug.flip) if a.has_pose_3d
                                        else np.zeros((24, 4), np.float32)),
            "keypoints": torch.from_numpy(C.keypoints_to_crop(a.keypoints[index], matrix, self.img_res,
                                                              flip=aug.flip)),  # (49, 3) in [-1, 1]
            "has_smpl": has_smpl, "has_pose_3d": float(a.has_pose_3d),
            "scale": scale, "center": torch.from_numpy(center.astype(np.float32)),
            "orig_shape": torch.tensor(orig_shape, dtype=torch.int64), "is_flipped": int(aug.flip),
            "rot_angle": float(aug.rot), "gender": int(a.gender[index]), "sample_index": int(index),
            "dataset_name": self.key, "imgname": str(self.folder / a.imgname[index]),
            "maskname": str(self.masks / a.maskname[index]) if a.maskname[index] else "",
            "partname": str(self.masks / a.partname[index]) if a.partname[index] else "",
        }

    def crop(self, index: int, matrix: np.ndarray, scale: float) -> tuple[np.ndarray, tuple[int, int]]:
        """(R, R, 3) uint8 crop under `matrix` and the original (H, W): from the HDF5 cache or the image file.

        With crop="spin" the crop is `spin_crop` of the box (center, scale); the cache then stores exactly it."""
        if self.cache is not None:
            return self.cache.crop(index, matrix, self.img_res)
        path = self.folder / self.ann.imgname[index]
        with open_image(path, self.key) as img:
            if self.crop_kind == "spin":
                return C.spin_crop(img, self.ann.center[index], scale, self.img_res), (img.height, img.width)
            prefilter = C.reduce_factor(200.0 * scale, self.img_res)
            return C.warp(img, matrix, self.img_res, prefilter=prefilter), (img.height, img.width)


def item_rng(seed: int, index: int) -> np.random.Generator:
    """A sample's augmentation generator: (seed, the DataLoader's per-epoch base seed, index)."""
    info = torch.utils.data.get_worker_info()
    base = info.seed - info.id if info is not None else int(torch.randint(0, 2**62, (1,)).item())
    return np.random.default_rng([seed, base % 2**63, index])


# ----------------------------------------------------------------------------------------------- mixed set


def mix_weights(lengths: dict[str, int], mix: dict[str, float]) -> dict[str, float]:
    """Sampling probability of each present dataset.

    Datasets named in `mix` get their weight; the `itw` weight is split over the other datasets in proportion to
    their lengths (SPIN: 30% H36M, 60% LSP/MPII/LSPET/COCO by size, 10% MPI-INF-3DHP). Weights of absent datasets
    drop out and the rest is renormalised. An empty mix samples every dataset in proportion to its length.
    """
    if not mix:
        mix = {ITW: 1.0}
    weights = {k: float(mix[k]) for k in lengths if k in mix and k != ITW}
    pool = [k for k in lengths if k not in mix]
    pool_size = sum(lengths[k] for k in pool)
    for k in pool:
        weights[k] = float(mix.get(ITW, 0.0)) * lengths[k] / pool_size if pool_size else 0.0
    total = sum(weights.values())
    if total <= 0:
        raise UserError(f"data.mix {mix} gives no weight to any of the datasets {list(lengths)}")
    return {k: weights[k] / total for k in lengths}


class MixedDataset(torch.utils.data.Dataset):
    """SPIN's MixedDataset: each item draws its dataset with `mix_weights`, then sample `index % len(dataset)`.

    Datasets whose npz is missing from the root are dropped with a warning. Length = the largest dataset (SPIN), or
    `length`: item i takes sample i % len(dataset) with its own augmentation draw, so a longer epoch repeats samples
    under new augmentation. A dataset longer than the epoch is sampled at random instead (from the item's own
    generator), so that its samples past the epoch's length are drawn too.
    """

    def __init__(self, root: str | os.PathLike, *, datasets: list[str], mix: dict[str, float], img_res: int,
                 is_train: bool = True, augment: bool = True, image_roots: Optional[dict] = None,
                 cache: bool | str | os.PathLike = False, subset: Optional[int] = None, seed: int = 0,
                 length: Optional[int] = None):
        self.seed = int(seed)
        self.datasets: list[BaseDataset] = []
        for key in datasets:
            if not npz_path(root, key, is_train=is_train).is_file():
                log.warning("training set %s skipped: %s not found", key, npz_path(root, key, is_train=is_train))
                continue
            self.datasets.append(BaseDataset(root, key, img_res=img_res, is_train=is_train, augment=augment,
                                             image_roots=image_roots, subset=subset, cache=cache, seed=seed))
        if not self.datasets:
            raise UserError(f"none of the training sets {', '.join(datasets)} exists under {root}/dataset_extras "
                            "(run `compress data synth` or pass --data ROOT)")
        lengths = {ds.key: len(ds) for ds in self.datasets}
        weights = mix_weights(lengths, mix)
        self.weights = np.array([weights[ds.key] for ds in self.datasets])
        self.cumulative = np.cumsum(self.weights)
        self.length = int(length) if length else max(lengths.values())
        log.info("mixed training set: %s", ", ".join(f"{k} {w:.1%} (n={lengths[k]})" for k, w in weights.items()))

    def __len__(self) -> int:
        return self.length

    def choose(self, index: int, rng: np.random.Generator) -> tuple[int, int]:
        """(dataset number, sample index) for item `index`."""
        k = int(np.searchsorted(self.cumulative, rng.uniform() * self.cumulative[-1], side="right"))
        k = min(k, len(self.datasets) - 1)
        n = len(self.datasets[k])
        return k, int(rng.integers(n)) if n > self.length else index % n

    def __getitem__(self, index: int) -> dict:
        rng = item_rng(self.seed, index)
        k, sample = self.choose(index, rng)
        return self.datasets[k].get_item(sample, rng=rng)


def training_set(data, *, img_res: int, augment: bool, seed: int = 0) -> MixedDataset:
    """SPIN's mixed training set of a recipe's `data` section (compress.recipe.DataSpec): what training and
    pruning's calibration read."""
    return MixedDataset(data.root, datasets=list(data.train_datasets), mix=dict(data.mix), img_res=img_res,
                        is_train=True, augment=augment, image_roots=dict(data.image_roots), cache=data.cache,
                        seed=seed, length=data.epoch_length)
