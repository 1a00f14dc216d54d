"""Evaluation metrics: MPJPE, PA-MPJPE (SPIN's reconstruction error), PVE, and LSP segmentation scores.

3D metrics take (B, N, 3) arrays (numpy or torch; the same type comes out) and return per-sample values (B,)
in the input's units. Callers centre the joints (SPIN: pelvis) before calling; PA-MPJPE is centring-invariant.
Segmentation follows SPIN's eval.py (spin_protocol.md section 4), "consistent with the original UP-3D code".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

import numpy as np
import torch

from compress.geometry import similarity_transform

Array = Union[np.ndarray, torch.Tensor]

IGNORE_LABEL = 255  # UP-3D / LSP part PNGs: pixels to ignore
N_PARTS = 7  # background + 6 LSP parts


def _as_torch(x: Array) -> torch.Tensor:
    t = torch.from_numpy(np.asarray(x)) if not isinstance(x, torch.Tensor) else x
    return t if t.is_floating_point() else t.double()


def _back(value: torch.Tensor, like: Array) -> Array:
    if isinstance(like, torch.Tensor):
        return value.to(like.dtype) if like.is_floating_point() else value
    dtype = like.dtype if np.issubdtype(np.asarray(like).dtype, np.floating) else np.float64
    return value.detach().cpu().numpy().astype(dtype, copy=False)


def _check(pred: Array, gt: Array, name: str) -> None:
    if tuple(pred.shape) != tuple(gt.shape) or len(pred.shape) != 3 or pred.shape[-1] != 3:
        raise ValueError(f"{name}: expected two (B, N, 3) arrays of the same shape, got {tuple(pred.shape)} "
                         f"and {tuple(gt.shape)}")


def _mean_distance(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    return (pred - gt).norm(dim=-1).mean(dim=-1)  # (B,)


def mpjpe(pred: Array, gt: Array) -> Array:
    """Mean per-joint position error per sample: mean_j ||pred_j - gt_j|| -> (B,)."""
    _check(pred, gt, "mpjpe")
    return _back(_mean_distance(_as_torch(pred), _as_torch(gt).to(_as_torch(pred))), pred)


def procrustes_align(pred: Array, gt: Array) -> Array:
    """Similarity-align pred onto gt per sample (SPIN's reconstruction_error alignment, reflection-safe).

    Computed in float64 (the SVD of a nearly degenerate cross-covariance is sensitive) and returned in the
    input's type and dtype.
    """
    _check(pred, gt, "procrustes_align")
    p, g = _as_torch(pred), _as_torch(gt)
    aligned = similarity_transform(p.double(), g.to(p.device).double())
    return _back(aligned, pred)


def pa_mpjpe(pred: Array, gt: Array) -> Array:
    """Procrustes-aligned MPJPE ("reconstruction error") per sample -> (B,)."""
    _check(pred, gt, "pa_mpjpe")
    p, g = _as_torch(pred), _as_torch(gt)
    g64 = g.to(p.device).double()
    aligned = similarity_transform(p.double(), g64)
    return _back(_mean_distance(aligned, g64), pred)


def pve(pred_verts: Array, gt_verts: Array) -> Array:
    """Per-vertex error per sample: mean_v ||pred_v - gt_v|| -> (B,). Align (e.g. at the pelvis) beforehand."""
    _check(pred_verts, gt_verts, "pve")
    p = _as_torch(pred_verts)
    return _back(_mean_distance(p, _as_torch(gt_verts).to(p)), pred_verts)


# ----------------------------------------------------------------------------------------------- segmentation


@dataclass
class ConfusionAccumulator:
    """Dataset-level per-class tp/fp/fn and pixel accuracy, SPIN's accumulation for LSP.

    `update(pred, gt)` takes integer label images of one size. Pixels where gt == `ignore_label` add nothing
    to tp/fp/fn, but count toward accuracy as background (gt and pred 255 -> 0), exactly as SPIN.
    """

    n_classes: int
    ignore_label: int | None = None
    tp: np.ndarray = field(init=False)
    fp: np.ndarray = field(init=False)
    fn: np.ndarray = field(init=False)
    correct: int = field(init=False, default=0)
    pixels: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.tp = np.zeros(self.n_classes, dtype=np.int64)
        self.fp = np.zeros(self.n_classes, dtype=np.int64)
        self.fn = np.zeros(self.n_classes, dtype=np.int64)

    def update(self, pred: np.ndarray, gt: np.ndarray) -> float:
        """Add one image; returns its own pixel accuracy in %."""
        pred, gt = np.asarray(pred).astype(np.int64), np.asarray(gt).astype(np.int64)
        if pred.shape != gt.shape:
            raise ValueError(f"prediction {pred.shape} and ground truth {gt.shape} differ in size")
        valid = np.ones(gt.shape, dtype=bool) if self.ignore_label is None else gt != self.ignore_label
        for c in range(self.n_classes):
            is_gt, is_pred = gt == c, (pred == c) & valid
            self.tp[c] += np.count_nonzero(is_gt & is_pred)
            self.fp[c] += np.count_nonzero(~is_gt & is_pred)
            self.fn[c] += np.count_nonzero(is_gt & ~is_pred)
        if self.ignore_label is not None:
            gt = np.where(valid, gt, 0)
            pred = np.where(pred == self.ignore_label, 0, pred)
        correct = int(np.count_nonzero(gt == pred))
        self.correct += correct
        self.pixels += gt.size
        return 100.0 * correct / max(gt.size, 1)

    @property
    def accuracy(self) -> float:
        """Pixel accuracy over everything seen, in %."""
        return 100.0 * self.correct / self.pixels if self.pixels else float("nan")

    @property
    def f1(self) -> float:
        """Mean over all classes (background included) of 2tp / (2tp + fp + fn), in 0..1."""
        denom = 2 * self.tp + self.fp + self.fn
        per_class = np.where(denom > 0, 2 * self.tp / np.maximum(denom, 1), np.nan)
        return float(np.nanmean(per_class)) if np.isfinite(per_class).any() else float("nan")


@dataclass
class LspSegmentation:
    """FG/BG and 6-part segmentation scores over the LSP test set (SPIN's rules)."""

    fgbg: ConfusionAccumulator = field(default_factory=lambda: ConfusionAccumulator(2))
    parts: ConfusionAccumulator = field(default_factory=lambda: ConfusionAccumulator(N_PARTS, IGNORE_LABEL))

    def update(self, pred_mask: np.ndarray, gt_mask: np.ndarray, pred_parts: np.ndarray,
               gt_parts: np.ndarray) -> tuple[float, float]:
        """Add one image (original resolution). Masks are binarised with > 0. Returns (fb_acc, parts_acc) in %."""
        fb = self.fgbg.update(np.asarray(pred_mask) > 0, np.asarray(gt_mask) > 0)
        pa = self.parts.update(pred_parts, gt_parts)
        return fb, pa

    def summary(self) -> dict[str, float]:
        return {"fb_acc": self.fgbg.accuracy, "fb_f1": self.fgbg.f1,
                "parts_acc": self.parts.accuracy, "parts_f1": self.parts.f1}
