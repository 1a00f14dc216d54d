"""HDF5 cache of pre-cropped uint8 images (`compress data cache`), read by the datasets instead of the image files.

One file per dataset split, crop size and crop kind (compress.data.crop.CROPS): `<out>/<npz stem>_r<img_res>.h5`
for the continuous warp, `<out>/<npz stem>_r<img_res>_spin.h5` for SPIN's eval crop (default `<out>` =
`<root>/cache`). `compress data cache` writes warp files for training splits and spin files for evaluation splits,
what the datasets read by default. A file holds
- `images (N, R+2p, R+2p, 3) uint8`: warp: the SPIN box of every sample (rotation 0, scale 1) enlarged by a margin
  of p pixels on each side at the final crop's pixel density, so rotation/scale augmentation still has the
  surroundings (`margin` 0.8 covers SPIN's worst case, scale 1.25 at 45 degrees); spin: exactly the R x R
  `spin_crop` of every sample (p = 0 always; it takes no augmentation);
- `matrices (N, 3, 3)`: image -> cache-image affine maps, so any later crop is one warp of the cached image;
- `orig_shape (N, 2)` and the npz fields under `annotations/`.
Attributes: `fingerprint` (npz size + mtime + a hash of every field, img_res, the image folder, the cache
version and, for spin files, the crop kind), `crop`, `pad`, and `complete`, written last. A file whose
fingerprint differs (the source changed), that has no `complete` flag or that h5py cannot open (truncated,
corrupt) is rebuilt, never read. Files are written to a temp name and renamed. Changes to the image files
themselves are not detected: rebuild with `force=True`.
A warp crop without augmentation is an exact sub-image of the cached one, so it equals the raw path's crop up to
uint8 rounding; a spin file returns the raw path's crop exactly. Size: (1.8 R)^2 x 3 bytes per training sample
with the default margin (490 kB at 224 px, 40 kB at 64 px), R^2 x 3 per eval sample; stored uncompressed so a
read is a plain copy.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
from pathlib import Path
from typing import Iterable, Optional

import h5py
import numpy as np

from compress.constants import EVAL_DATASETS, TRAIN_DATASETS
from compress.data import crop as C
from compress.data.annotations import annotations_from_npz, image_folder, npz_path, open_image, read_npz
from compress.errors import UserError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
DEFAULT_MARGIN = 0.8  # extra box side per unit of crop side (scale 1.25 x rotation 45 deg needs 0.77)


def default_cache_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "cache"


def cache_file(folder: str | os.PathLike, npz: Path, img_res: int, crop: str = "warp") -> Path:
    suffix = "" if crop == "warp" else f"_{crop}"
    return Path(folder) / f"{npz.stem}_r{int(img_res)}{suffix}.h5"


def pad_pixels(img_res: int, margin: float) -> int:
    """Margin in pixels on each side of the R x R crop."""
    return int(math.ceil(float(margin) * img_res / 2))


def source_fingerprint(npz: Path, folder: Path, img_res: int, crop: str = "warp") -> str:
    """Hash of the npz (size, mtime, every field's dtype/shape/bytes), the image folder, img_res, the version and
    the crop kind (warp files keep their original key: their pixels did not change when spin files came)."""

    st = npz.stat()
    kind = "" if crop == "warp" else f"|crop={crop}"
    h = hashlib.sha256(f"v{CACHE_VERSION}|{st.st_size}|{st.st_mtime_ns}|{img_res}|{folder.resolve()}{kind}".encode())
    for name, arr in sorted(read_npz(npz).items()):
        h.update(f"|{name}|{arr.dtype.str}|{arr.shape}|".encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def cache_is_valid(path: Path, fingerprint: str, *, min_pad: int = 0) -> bool:
    """True when `path` opens, is complete, matches `fingerprint` and has at least `min_pad` margin pixels."""

    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as f:
            ok = bool(f.attrs.get("complete", False)) and f.attrs.get("fingerprint") == fingerprint
            ok = ok and int(f.attrs.get("pad", -1)) >= min_pad and "images" in f and "matrices" in f
            return ok and f["images"].shape[0] == f["matrices"].shape[0] == int(f.attrs["n"])
    except (OSError, KeyError, ValueError, RuntimeError) as exc:
        log.warning("HDF5 cache %s is unreadable (%s): rebuilding it", path, exc)
        return False


# ----------------------------------------------------------------------------------------------- building


def build_dataset_cache(root: str | os.PathLike, key: str, *, is_train: bool, path: Path, img_res: int, pad: int,
                        image_roots: Optional[dict] = None, fingerprint: Optional[str] = None,
                        crop: str = "warp") -> Path:
    """Write the cache file of one dataset split (temp file, `complete` flag last, rename)."""


    npz, folder = npz_path(root, key, is_train=is_train), image_folder(root, key, image_roots)
    fingerprint = fingerprint or source_fingerprint(npz, folder, img_res, crop)
    pad = 0 if crop == "spin" else pad
    raw = read_npz(npz)
    ann = annotations_from_npz(raw)
    n, side = len(ann), img_res + 2 * pad
    log.info("building HDF5 cache %s (%d crops of %d px)", path, n, side)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update({"version": CACHE_VERSION, "dataset": key, "npz": str(npz), "img_res": img_res,
                            "crop": crop, "pad": pad, "n": n, "fingerprint": fingerprint, "complete": False})
            images = f.create_dataset("images", (n, side, side, 3), np.uint8, chunks=(1, side, side, 3))
            matrices = np.zeros((n, 3, 3))
            orig = np.zeros((n, 2), np.int32)
            for i in range(n):
                scale = float(ann.scale[i])
                matrices[i] = C.crop_matrix(ann.center[i], scale * side / img_res, side)
                with open_image(folder / ann.imgname[i], key) as img:
                    images[i] = _cached_crop(img, crop, ann.center[i], scale, matrices[i], side, img_res)
                    orig[i] = (img.height, img.width)
            f["matrices"], f["orig_shape"] = matrices, orig
            _write_annotations(f.create_group("annotations"), raw)
            f.attrs["complete"] = True  # last: a file without it is never read
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _cached_crop(img, crop: str, center, scale: float, matrix: np.ndarray, side: int, img_res: int) -> np.ndarray:
    """The stored pixels of one sample: SPIN's eval crop, or the warp of the (padded) box."""
    if crop == "spin":
        return C.spin_crop(img, center, scale, img_res)
    return C.warp(img, matrix, side, prefilter=C.reduce_factor(200.0 * scale, img_res))


def _write_annotations(group, raw: dict[str, np.ndarray]) -> None:

    for name, arr in raw.items():
        if arr.dtype.kind in "US":
            group.create_dataset(name, data=arr.astype(str).astype(object), dtype=h5py.string_dtype())
        else:
            group.create_dataset(name, data=arr)


def ensure_cache(root: str | os.PathLike, key: str, *, is_train: bool, img_res: int, margin: float,
                 out: Optional[str | os.PathLike] = None, image_roots: Optional[dict] = None,
                 force: bool = False, crop: Optional[str] = None) -> tuple[Path, int]:
    """The valid cache file of a dataset split (built if missing, stale, truncated or `force`) and its pad.

    `crop` defaults to the split's: "warp" for training, "spin" for evaluation (spin files have no margin)."""

    crop = crop or ("warp" if is_train else "spin")
    npz = npz_path(root, key, is_train=is_train)
    path = cache_file(out or default_cache_dir(root), npz, img_res, crop)
    fingerprint = source_fingerprint(npz, image_folder(root, key, image_roots), img_res, crop)
    pad = 0 if crop == "spin" else pad_pixels(img_res, margin)
    if force or not cache_is_valid(path, fingerprint, min_pad=pad):
        build_dataset_cache(root, key, is_train=is_train, path=path, img_res=img_res, pad=pad,
                            image_roots=image_roots, fingerprint=fingerprint, crop=crop)
    return path, pad


def build_cache(root: str | os.PathLike, dataset_keys: Iterable[str], *, out: Optional[str | os.PathLike] = None,
                img_res: int = 224, margin: Optional[float] = None, image_roots: Optional[dict] = None,
                force: bool = False) -> Path:
    """`compress data cache`: cache every split of the given dataset keys present under `root` -> the cache folder.

    `margin` defaults to DEFAULT_MARGIN for training splits and 0 for eval splits (never augmented). Training
    splits get warp files, evaluation splits spin files (SPIN's eval crop), as the datasets read them.
    Keys whose npz files are missing are skipped with a warning.
    """

    built = 0
    for key in dataset_keys:
        splits = [s for s, table in ((False, EVAL_DATASETS), (True, TRAIN_DATASETS)) if key in table]
        if not splits:
            raise UserError(f"unknown dataset {key!r}; valid: {', '.join(sorted({*EVAL_DATASETS, *TRAIN_DATASETS}))}")
        for is_train in splits:
            if not npz_path(root, key, is_train=is_train).is_file():
                log.warning("cache: %s skipped, %s not found", key, npz_path(root, key, is_train=is_train))
                continue
            split_margin = margin if margin is not None else (DEFAULT_MARGIN if is_train else 0.0)
            ensure_cache(root, key, is_train=is_train, img_res=img_res, margin=split_margin, out=out,
                         image_roots=image_roots, force=force)
            built += 1
    if not built:
        raise UserError(f"no dataset files for {', '.join(dataset_keys)} under {Path(root) / 'dataset_extras'}")
    return Path(out) if out else default_cache_dir(root)


# ----------------------------------------------------------------------------------------------- reading


class DatasetCache:
    """Reads cached crops; the HDF5 handle is opened lazily in each process (DataLoader workers fork)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._file, self._pid = None, None
        self._matrices = self._orig = None

    def __getstate__(self) -> dict:
        return {"path": self.path, "_file": None, "_pid": None, "_matrices": None, "_orig": None}

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file, self._pid = None, None

    def _h5(self):

        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
            self._matrices, self._orig = self._file["matrices"][:], self._file["orig_shape"][:]  # small: keep in RAM
        return self._file

    def crop(self, index: int, matrix: np.ndarray, res: int) -> tuple[np.ndarray, tuple[int, int]]:
        """(res, res, 3) uint8 crop under `matrix` (image -> crop coordinates) and the original (H, W)."""
        f = self._h5()
        rel = matrix @ np.linalg.inv(self._matrices[index])  # cache-image -> crop coordinates
        orig = (int(self._orig[index][0]), int(self._orig[index][1]))
        shift = -rel[:2, 2]
        side = f["images"].shape[1]
        exact = np.allclose(rel[:2, :2], np.eye(2), atol=1e-9) and np.allclose(shift, np.round(shift), atol=1e-6)
        if exact and 0 <= round(shift.min()) and round(shift.max()) + res <= side:
            x, y = (int(round(v)) for v in shift)  # no augmentation: the crop is a sub-image
            return f["images"][index, y:y + res, x:x + res], orig
        return C.warp(f["images"][index], rel, res), orig


def open_dataset_cache(dataset, *, out: Optional[str | os.PathLike], margin: float,
                       crop: str = "warp") -> DatasetCache:
    """The cache reader of a BaseDataset (building the file first when needed) for its crop kind."""
    path, _ = ensure_cache(dataset.root, dataset.key, is_train=dataset.is_train, img_res=dataset.img_res,
                           margin=margin, out=out, image_roots={dataset.key: str(dataset.folder)}, crop=crop)
    return DatasetCache(path)
