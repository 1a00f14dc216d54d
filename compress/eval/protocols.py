"""The HMR evaluation suite exactly as SPIN's eval.py runs it (spin_protocol.md section 4), plus PVE.

One function, `evaluate()`, serves train, finetune, eval and report.

Per dataset (keys of compress.constants.EVAL_DATASETS):
- Predictions: neutral SMPL from the predicted rotmats and betas; `J_regressor_h36m @ vertices` (17 joints);
  pelvis = H36M joint 0; joints H36M_TO_J17 for mpi-inf-3dhp, else H36M_TO_J14; minus the pelvis.
- Ground truth: h36m-p1, h36m-p2, mpi-inf-3dhp use `pose_3d` (npz `S`, already root-centred) with J24_TO_J14 or
  J24_TO_J17, no further centring. 3dpw builds GT meshes with the gendered models (gender 0 = 'm' -> male,
  anything else -> female, as SPIN) and takes the same H36M-regressor path.
- MPJPE and PA-MPJPE (SPIN's reconstruction error) per sample, reported as 1000 x the mean over samples (mm).
- PVE (not in SPIN's eval): wherever a GT mesh exists (3dpw; any sample with has_smpl), the mean vertex distance
  after translating both meshes so that their H36M pelvis is at the origin (no rotation or scale alignment).
  GT meshes of has_smpl samples outside 3dpw use the gendered model when the gender is known, else neutral.
- lsp: the predicted mesh rendered into the crop, uncropped into the original image, scored against UP-3D's
  masks and part PNGs with SPIN's accumulation (compress.eval.metrics.LspSegmentation).
- Crops: SPIN's eval pixels (`compress.data.crop.spin_crop`: integer box, black fill, per-crop min-max stretch,
  PIL bilinear resize, /255 and ImageNet normalisation), so a SPIN checkpoint reproduces SPIN's numbers; the
  LSP uncrop then inverts that integer box as SPIN does. `crop="warp"` evaluates on the training warp instead.
"""
from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional

import numpy as np
import torch
from torch import nn

from compress.checkpoint import load_checkpoint
from compress.constants import (EVAL_DATASETS, H36M_TO_J14, H36M_TO_J17, IMG_RES, J24_TO_J14, J24_TO_J17,
                                UPI_S1H_FOLDER)
from compress.data.datasets import BaseDataset
from compress.errors import UserError
from compress.eval.metrics import LspSegmentation, mpjpe, pa_mpjpe, pve
from compress.eval.render import load_face_labels, render_parts, uncrop
from compress.geometry import rotmat_to_axis_angle
from compress.io import atomic_write_bytes, atomic_write_json, atomic_write_text, json_text
from compress.onnx_model import OnnxHMR, is_onnx
from compress.runs import metrics_file
from compress.smpl import SMPL

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]
METRIC_KEYS_3D = ("mpjpe_mm", "pa_mpjpe_mm", "pve_mm")
METRIC_KEYS_LSP = ("fb_acc", "fb_f1", "parts_acc", "parts_f1")


def dataset_file(root: str | Path, key: str) -> Path:
    """The npz of an evaluation dataset key under a SPIN-layout root."""
    if key not in EVAL_DATASETS:
        raise UserError(f"unknown evaluation dataset {key!r}; choose from {', '.join(EVAL_DATASETS)}")
    return Path(root) / "dataset_extras" / f"{EVAL_DATASETS[key]}.npz"


def present_datasets(root: str | Path, datasets: Iterable[str], *, strict: bool = False,
                     warn: bool = True) -> list[str]:
    """The requested evaluation datasets whose npz exists under `root`, in the requested order.

    Unknown keys raise UserError. A missing file is skipped (with a warning when `warn`), unless `strict` (then
    any missing file is an error) or none of the requested datasets has its file (evaluating nothing would
    print an empty table): then one UserError line lists the missing files and how to get them.
    Nothing requested -> [].
    """
    root = Path(root)
    keys = list(dict.fromkeys(datasets))
    files = {key: dataset_file(root, key) for key in keys}  # validates every key first
    missing = [key for key in keys if not files[key].is_file()]
    if missing and (strict or len(missing) == len(keys)):
        what = ("no evaluation data: none of the requested datasets has its file" if len(missing) == len(keys)
                else "evaluation data not found")
        raise UserError(
            f"{what} ({', '.join(str(files[k]) for k in missing)}); for the synthetic benchmark run "
            f"`compress data synth --out {root}`, for the real datasets point --data at SPIN's data root "
            "(see docs/real-data.md)")
    if warn:
        for key in missing:
            log.warning("skipping %s: %s not found", key, files[key])
    return [key for key in keys if key not in missing]


def evaluate(
    model: nn.Module,
    root: str | Path,
    *,
    datasets: Iterable[str] = tuple(EVAL_DATASETS),
    img_res: Optional[int] = None,
    batch_size: int = 32,
    subset: Optional[int] = None,
    device: str | torch.device | None = None,
    smpl_dir: str | Path | None = None,
    progress: Optional[Progress] = None,
    save_dir: str | Path | None = None,
    strict: bool = False,
    workers: int = 0,
    image_roots: Optional[Mapping[str, str]] = None,
    cache: bool = False,
    crop: str = "spin",
) -> dict[str, dict[str, float]]:
    """Run the suite on `model` (image -> {"rotmat", "betas", "cam", ...}) -> {dataset_key: {metric: value}}.

    The model must already be on `device` (default: the device of its parameters); it runs in eval mode and
    its training mode is restored afterwards. Missing dataset files are skipped with a warning, or raise
    UserError when `strict`; when none of the requested datasets has its file, UserError names the missing files
    and how to get them (see `present_datasets`). `smpl_dir` defaults
    to the data root (SMPL files under <root>/smpl, regressors at the root). `progress(key, done, total)` is
    called after every batch. With `save_dir`, per-sample results go to `<save_dir>/<key>.npz` and the
    summary to `<save_dir>/summary.json`. `cache` reads crops from the HDF5 cache (compress.data.cache).
    `crop`: "spin" (SPIN's eval crop, the default) or "warp" (the training crop, continuous box).
    """
    root = Path(root)
    present = present_datasets(root, datasets, strict=strict)
    img_res = int(img_res or getattr(model, "img_res", IMG_RES))
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)

    results: dict[str, dict[str, float]] = {}
    if not present:
        return results
    bodies = _Bodies(smpl_dir or root, device)
    was_training = model.training
    model.eval()
    try:
        for key in present:
            loader = _loader(root, key, img_res=img_res, batch_size=batch_size, subset=subset, workers=workers,
                             image_roots=image_roots, cache=cache, crop=crop)
            if key == "lsp":
                summary, per_sample = _eval_lsp(model, loader, bodies, key=key, root=root, img_res=img_res,
                                                device=device, progress=progress, image_roots=image_roots)
            else:
                summary, per_sample = _eval_3d(model, loader, bodies, key=key, device=device, progress=progress)
            results[key] = summary
            log.info("%s: %s", key, ", ".join(f"{k}={v:.4g}" for k, v in summary.items()))
            if save_dir is not None:
                _save(Path(save_dir), key, per_sample, results)
    finally:
        model.train(was_training)
    return results


def evaluate_checkpoint(
    checkpoint: str | Path,
    *,
    root: str | Path,
    name: Optional[str] = None,
    img_res: Optional[int] = None,
    device: str | torch.device | None = None,
    **kwargs,
) -> dict[str, dict[str, float]]:
    """Load a checkpoint (ours, SPIN's or a bare state_dict with `name=`, or an `.onnx` file run in ONNX Runtime)
    and `evaluate()` it."""
    # a root without the files fails before the checkpoint is loaded
    present_datasets(root, kwargs.get("datasets", tuple(EVAL_DATASETS)), strict=bool(kwargs.get("strict")),
                     warn=False)
    if is_onnx(checkpoint):  # an exported (or INT8) model, run in ONNX Runtime at its own resolution
        model = OnnxHMR(checkpoint, device=device or "cpu")
        return evaluate(model, root, img_res=model.img_res, device=device, **kwargs)
    overrides = {"img_res": img_res} if img_res else {}
    model, _ = load_checkpoint(checkpoint, name=name, **overrides)
    if device is not None:
        model = model.to(device)
    return evaluate(model, root, img_res=img_res or getattr(model, "img_res", IMG_RES), device=device, **kwargs)


def format_results_table(results: Mapping[str, Mapping[str, float]]) -> list[list[str]]:
    """Rows for a table in the study's layout: a header row, then one row per dataset ('-' where n/a)."""
    head = ["dataset", "n", "MPJPE mm", "PA-MPJPE mm", "PVE mm", "FB acc %", "FB F1", "parts acc %", "parts F1"]
    keys = [*METRIC_KEYS_3D, *METRIC_KEYS_LSP]
    digits = {"fb_f1": 4, "parts_f1": 4}
    rows = [head]
    for ds, metrics in results.items():
        row = [ds, str(int(metrics.get("n", 0)))]
        for k in keys:
            v = metrics.get(k)
            row.append("-" if v is None or not np.isfinite(v) else f"{v:.{digits.get(k, 2)}f}")
        rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------- internals


class _Bodies:
    """The SMPL models the suite needs, built on first use (the gendered ones only for GT meshes)."""

    def __init__(self, model_dir: str | Path, device: torch.device):
        self.model_dir, self.device = Path(model_dir), device
        self._models: dict[str, nn.Module] = {}

    def __call__(self, gender: str) -> nn.Module:
        if gender not in self._models:
            self._models[gender] = SMPL(self.model_dir, gender=gender).to(self.device).eval()
        return self._models[gender]

    def gt_vertices(self, pose: torch.Tensor, betas: torch.Tensor, genders: list[str]) -> torch.Tensor:
        """GT meshes (B, 6890, 3) from axis-angle pose (B, 72) and betas, each sample with its gender's model."""
        out = None
        for g in dict.fromkeys(genders):
            idx = torch.tensor([i for i, x in enumerate(genders) if x == g], device=pose.device)
            v = self(g).forward_axis_angle(pose[idx], betas[idx]).vertices
            if out is None:
                out = v.new_zeros(pose.shape[0], *v.shape[1:])
            out[idx] = v
        return out


def _loader(root: Path, key: str, *, img_res: int, batch_size: int, subset: Optional[int], workers: int,
            image_roots: Optional[Mapping[str, str]], cache: bool, crop: str) -> torch.utils.data.DataLoader:
    kwargs = {"cache": True} if cache else {}
    ds = BaseDataset(root, key, img_res=img_res, is_train=False, augment=False,
                     image_roots=dict(image_roots or {}), subset=subset, crop=crop, **kwargs)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       pin_memory=False, drop_last=False)


def _predict(model: nn.Module, batch: dict, bodies: _Bodies, device: torch.device):
    with torch.no_grad():
        out = model(batch["img"].to(device))
        rotmat, betas, cam = out["rotmat"].float(), out["betas"].float(), out["cam"].float()
        vertices = bodies("neutral")(rotmat, betas).vertices  # (B, 6890, 3)
    return rotmat, betas, cam, vertices


def _to_list(x) -> list:
    return x.tolist() if isinstance(x, torch.Tensor) else list(x)


def _eval_3d(model, loader, bodies: _Bodies, *, key: str, device, progress: Optional[Progress]):
    joints_sel = H36M_TO_J17 if key == "mpi-inf-3dhp" else H36M_TO_J14
    gt_sel = J24_TO_J17 if key == "mpi-inf-3dhp" else J24_TO_J14
    total, done = len(loader.dataset), 0
    acc: dict[str, list] = {k: [] for k in ("mpjpe", "pa_mpjpe", "pve", "pred_joints", "rotmat", "betas", "cam",
                                            "sample_index", "imgname")}
    neutral = bodies("neutral")
    for batch in loader:
        rotmat, betas, cam, verts = _predict(model, batch, bodies, device)
        with torch.no_grad():
            h36m = neutral.joints_h36m(verts)  # (B, 17, 3)
            pelvis = h36m[:, :1]
            pred = h36m[:, joints_sel] - pelvis
            has_smpl = batch["has_smpl"].to(device).float() > 0.5
            gt_verts = gt_pelvis = None
            if key == "3dpw":
                genders = ["male" if int(g) == 0 else "female" for g in _to_list(batch["gender"])]
                gt_verts = bodies.gt_vertices(batch["pose"].to(device).float(), batch["betas"].to(device).float(),
                                              genders)
                gt_h36m = neutral.joints_h36m(gt_verts)
                gt_pelvis = gt_h36m[:, :1]
                gt = gt_h36m[:, joints_sel] - gt_pelvis
                has_smpl = torch.ones_like(has_smpl)
            else:
                gt = batch["pose_3d"].to(device).float()[:, gt_sel, :3]
                if has_smpl.any():
                    genders = [{0: "male", 1: "female"}.get(int(g), "neutral") for g in _to_list(batch["gender"])]
                    gt_verts = bodies.gt_vertices(batch["pose"].to(device).float(), batch["betas"].to(device).float(),
                                                  genders)
                    gt_pelvis = neutral.joints_h36m(gt_verts)[:, :1]
            acc["mpjpe"].append(mpjpe(pred, gt).cpu())
            acc["pa_mpjpe"].append(pa_mpjpe(pred, gt).cpu())
            err_v = torch.full((pred.shape[0],), float("nan"))
            if gt_verts is not None:
                err = pve(verts - pelvis, gt_verts - gt_pelvis).cpu()
                err_v = torch.where(has_smpl.cpu(), err, err_v)
            acc["pve"].append(err_v)
        acc["pred_joints"].append(h36m.cpu())
        acc["rotmat"].append(rotmat.cpu())
        acc["betas"].append(betas.cpu())
        acc["cam"].append(cam.cpu())
        acc["sample_index"].append(torch.as_tensor(batch["sample_index"]).cpu())
        acc["imgname"].extend(_to_list(batch["imgname"]))
        done += pred.shape[0]
        if progress is not None:
            progress(key, done, total)
    if not done:
        return {"n": 0}, {}
    per = {k: (np.asarray(v) if k == "imgname" else torch.cat(v).numpy()) for k, v in acc.items()}
    summary = {"n": int(done),
               "mpjpe_mm": 1000.0 * float(per["mpjpe"].mean()),
               "pa_mpjpe_mm": 1000.0 * float(per["pa_mpjpe"].mean())}
    with_mesh = np.isfinite(per["pve"])
    if with_mesh.any():
        summary["pve_mm"] = 1000.0 * float(per["pve"][with_mesh].mean())
        summary["n_pve"] = int(with_mesh.sum())
    for k in ("mpjpe", "pa_mpjpe", "pve"):
        per[f"{k}_mm"] = 1000.0 * per.pop(k)
    return summary, per


def _read_label_png(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise UserError(f"LSP ground-truth segmentation {path} not found; the upi-s1h folder is incomplete")
    with Image.open(path) as im:
        return np.asarray(im.convert("L"))


def _label_path(root: Path, name: str, image_roots: Optional[Mapping[str, str]]) -> Path:
    p = Path(name)
    if p.is_absolute() or p.exists():  # BaseDataset already resolves maskname/partname under the data root
        return p
    base = Path((image_roots or {}).get(UPI_S1H_FOLDER) or root / UPI_S1H_FOLDER)
    return base / p


def _eval_lsp(model, loader, bodies: _Bodies, *, key: str, root: Path, img_res: int, device,
              progress: Optional[Progress], image_roots: Optional[Mapping[str, str]]):
    neutral = bodies("neutral")
    faces = neutral.faces.to(device)
    face_labels = torch.as_tensor(load_face_labels(root, faces.cpu().numpy()), device=device)
    seg = LspSegmentation()
    spin_box = loader.dataset.crop_kind == "spin"  # invert the crop's own box: SPIN's integer one, or continuous
    total, done = len(loader.dataset), 0
    acc: dict[str, list] = {k: [] for k in ("fb_acc", "parts_acc", "rotmat", "betas", "cam", "sample_index",
                                            "imgname")}
    for batch in loader:
        rotmat, betas, cam, verts = _predict(model, batch, bodies, device)
        with torch.no_grad():
            mask, parts = render_parts(verts, faces, face_labels, cam, img_res=img_res)  # (B, R, R) each
        mask, parts = mask.cpu().numpy().astype(np.uint8), parts.cpu().numpy().astype(np.uint8)
        centers, scales = batch["center"].numpy(), batch["scale"].numpy()
        shapes = batch["orig_shape"].numpy().astype(np.int64)
        for i in range(mask.shape[0]):
            pred_mask = uncrop(mask[i], centers[i], float(scales[i]), tuple(shapes[i]), spin_rounding=spin_box)
            pred_parts = uncrop(parts[i], centers[i], float(scales[i]), tuple(shapes[i]), spin_rounding=spin_box)
            gt_mask = _read_label_png(_label_path(root, batch["maskname"][i], image_roots))
            gt_parts = _read_label_png(_label_path(root, batch["partname"][i], image_roots))
            if gt_mask.shape != pred_mask.shape or gt_parts.shape != pred_parts.shape:
                raise UserError(f"{batch['maskname'][i]}: ground truth {gt_mask.shape} does not match the image "
                                f"size {tuple(shapes[i])} of {batch['imgname'][i]}")
            fb, pa = seg.update(pred_mask, gt_mask, pred_parts, gt_parts)
            acc["fb_acc"].append(fb)
            acc["parts_acc"].append(pa)
        acc["rotmat"].append(rotmat.cpu())
        acc["betas"].append(betas.cpu())
        acc["cam"].append(cam.cpu())
        acc["sample_index"].append(torch.as_tensor(batch["sample_index"]).cpu())
        acc["imgname"].extend(_to_list(batch["imgname"]))
        done += mask.shape[0]
        if progress is not None:
            progress(key, done, total)
    if not done:
        return {"n": 0}, {}
    per = {k: (np.asarray(v) if isinstance(v[0], (float, str)) else torch.cat(v).numpy()) for k, v in acc.items()}
    return {"n": int(done), **seg.summary()}, per


def _save(save_dir: Path, key: str, per_sample: dict, results: dict) -> None:
    """Per-sample arrays as <key>.npz, and the summary of everything so far as summary.json (atomic writes)."""
    save_dir.mkdir(parents=True, exist_ok=True)
    arrays = dict(per_sample)
    if "rotmat" in arrays:  # SPIN's result files store axis-angle pose (N, 72)
        rot = torch.from_numpy(arrays.pop("rotmat"))
        arrays["pose"] = rotmat_to_axis_angle(rot.reshape(-1, 3, 3)).reshape(rot.shape[0], 72).numpy()
    if "imgname" in arrays:
        arrays["imgname"] = np.asarray(arrays["imgname"]).astype(str)
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    atomic_write_bytes(save_dir / f"{key}.npz", buf.getvalue())
    atomic_write_text(save_dir / "summary.json", json_text(results, sort_keys=True))


def evaluate_into_run(checkpoint: str | Path, recipe, *, progress: Optional[Progress] = None) -> dict:
    """Evaluate a run's checkpoint on the recipe's eval datasets and record the results beside it in
    `metrics/<checkpoint stem>.json` (where `compress report` looks for them)."""
    checkpoint = Path(checkpoint)
    results = evaluate_checkpoint(
        checkpoint, root=recipe.data.root, datasets=list(recipe.eval.datasets), subset=recipe.eval.subset,
        batch_size=recipe.eval.batch_size, img_res=recipe.model.img_res, workers=recipe.eval.workers,
        image_roots=dict(recipe.data.image_roots) or None, cache=recipe.data.cache, progress=progress,
    )
    atomic_write_json(metrics_file(checkpoint.parent, checkpoint.name), {"checkpoint": str(checkpoint), "metrics": results})
    return results
