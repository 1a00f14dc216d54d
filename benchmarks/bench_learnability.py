"""What the synthetic benchmark lets a model reach, and what the shipped reference model got: the diagnosis behind
issue 15's unmet goal (PA-MPJPE at most 0.75x the constant mean pose's).

For H36M and MPI-INF-3DHP, on the evaluation set and on the first N training samples (no augmentation, SPIN's
crop), the model and the constant mean pose are scored on the 14 LSP joints: PA-MPJPE, 2D error (scale-aligned,
orthographic) and depth order (share of bones whose ends the model orders in depth as the ground truth does, among
bones deeper than 5 cm; 0.5 is chance). Train and eval alike means the model underfits rather than overfits.
Then the floor of depth ambiguity (compress.eval.learnability): the ground truth itself with each bone's depth sign
flipped with probability p, as a ratio to the mean pose's PA-MPJPE.

    python benchmarks/bench_learnability.py                       # the shipped model, about 2 min
    python benchmarks/bench_learnability.py --checkpoint runs/x/trained.pt --subset 300

Writes benchmarks/reference/learnability.json.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.checkpoint import load_checkpoint  # noqa: E402
from compress.constants import H36M_TO_J14, J24_TO_J14  # noqa: E402
from compress.data.datasets import BaseDataset  # noqa: E402
from compress.eval.learnability import depth_flip_floor, depth_order_accuracy, xy_error  # noqa: E402
from compress.eval.metrics import pa_mpjpe  # noqa: E402
from compress.eval.reference import reference_model  # noqa: E402
from compress.shipped import REFERENCE  # noqa: E402
from compress.smpl import SMPL  # noqa: E402

OUT = Path(__file__).resolve().parent / "reference" / "learnability.json"
SETS = {"H36M": ("h36m", "h36m-p1"), "MPI-INF-3DHP": ("mpi-inf-3dhp", "mpi-inf-3dhp")}  # (training key, eval key)
FLIPS = (0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.5)


def joints_of(model: torch.nn.Module, smpl: SMPL, dataset: BaseDataset) -> tuple[np.ndarray, np.ndarray]:
    """(predicted, ground-truth) J14 joints (N, 14, 3) in metres over `dataset`."""
    pred, gt = [], []
    for batch in torch.utils.data.DataLoader(dataset, batch_size=50):
        with torch.no_grad():
            out = model(batch["img"])
            verts = smpl(out["rotmat"].float(), out["betas"].float()).vertices
            pred.append(smpl.joints_h36m(verts)[:, H36M_TO_J14].numpy())
        gt.append(batch["pose_3d"][:, J24_TO_J14, :3].numpy())
    return np.concatenate(pred).astype(np.float64), np.concatenate(gt).astype(np.float64)


def scores(pred: np.ndarray, gt: np.ndarray) -> dict:
    pa = 1000.0 * float(pa_mpjpe(torch.from_numpy(pred), torch.from_numpy(gt)).mean())
    return {"pa_mpjpe_mm": pa, "xy_error_mm": 1000.0 * xy_error(pred, gt),
            "depth_order": depth_order_accuracy(pred, gt)}


def diagnose(checkpoint: str, root: str, subset: int) -> dict:
    model, _ = load_checkpoint(checkpoint)
    res = int(getattr(model, "img_res", 64))
    mean = reference_model("mean", root, img_res=res)
    smpl = SMPL(root, gender="neutral").eval()
    out: dict = {"checkpoint": checkpoint, "root": root, "img_res": res, "subset": subset, "sets": {}}
    for title, (train_key, eval_key) in SETS.items():
        for split, key, is_train in (("train", train_key, True), ("eval", eval_key, False)):
            ds = BaseDataset(root, key, img_res=res, is_train=is_train, augment=False, subset=subset, crop="spin")
            got = {}
            for name, m in (("model", model), ("mean pose", mean)):
                pred, gt = joints_of(m, smpl, ds)
                got[name] = scores(pred, gt)
            got["n"] = len(ds)
            got["pa_ratio"] = got["model"]["pa_mpjpe_mm"] / got["mean pose"]["pa_mpjpe_mm"]
            got["xy_ratio"] = got["model"]["xy_error_mm"] / got["mean pose"]["xy_error_mm"]
            if split == "eval":
                got["floor_mm"] = depth_flip_floor(gt, FLIPS)
            out["sets"][f"{title} {split}"] = got
    return out


def print_diagnosis(d: dict) -> None:
    print(f"{d['checkpoint']} at {d['img_res']} px on {d['root']} (first {d['subset']} samples per set), 14 joints")
    print(f"{'set':<20}{'n':>5}{'PA model':>10}{'PA mean':>9}{'ratio':>7}{'2D model':>10}{'2D mean':>9}"
          f"{'ratio':>7}{'depth order':>13}")
    for name, s in d["sets"].items():
        m, c = s["model"], s["mean pose"]
        print(f"{name:<20}{s['n']:>5}{m['pa_mpjpe_mm']:>10.1f}{c['pa_mpjpe_mm']:>9.1f}{s['pa_ratio']:>7.3f}"
              f"{m['xy_error_mm']:>10.1f}{c['xy_error_mm']:>9.1f}{s['xy_ratio']:>7.3f}"
              f"{m['depth_order']:>8.2f} vs {c['depth_order']:.2f}")
    print("PA and 2D in mm; depth order: share of bones (> 5 cm deep) ordered as the ground truth, model vs mean")
    print("\nfloor of depth ambiguity: exact 2D and bone lengths, each bone's depth sign flipped w.p. p")
    print(f"{'set':<20}" + "".join(f"{'p=' + format(p, 'g'):>9}" for p in FLIPS))
    for name, s in d["sets"].items():
        if "floor_mm" in s:
            ref = s["mean pose"]["pa_mpjpe_mm"]
            print(f"{name:<20}" + "".join(f"{v:>9.1f}" for v in s["floor_mm"].values()))
            print(f"{'  x mean pose':<20}" + "".join(f"{v / ref:>9.2f}" for v in s["floor_mm"].values()))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=str(REFERENCE))
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--subset", type=int, default=300)
    p.add_argument("--out", default=str(OUT))
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    d = diagnose(args.checkpoint, args.data, args.subset)
    print_diagnosis(d)
    Path(args.out).write_text(json.dumps(d, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
