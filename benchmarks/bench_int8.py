"""Which INT8 settings keep a trained model closest to fp32: every combination of the layers kept in fp32 (none or
the IEF heads), the calibration method and 7-bit weights, each scored on the 3D sets against the same fp32 ONNX
file. Prints the change of MPJPE and PA-MPJPE per set and the worst of each (issue 14's goal: within 2 mm and 1 mm).

    python benchmarks/bench_int8.py runs/bench_ftlen/kd_ft20 checkpoints/mbv2_reference.pt   # about 4 min each

Files go to --out/<model>/ (kept; re-running re-scores them).
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.devices import cpu_info, describe_cpu  # noqa: E402
from compress.export import export_onnx  # noqa: E402
from compress.profile import load_any  # noqa: E402
from compress.quantize import QuantSpec, _data_spec, _evaluate_pair, calibration_images, quantize_onnx  # noqa: E402
from compress.runs import resolve_checkpoint  # noqa: E402

SETS = ["3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2"]
HEADS = ("decpose", "decshape", "deccam")
VARIANTS = {  # name -> QuantSpec fields
    "heads fp32, minmax, 8-bit": {"keep_fp32": HEADS, "method": "minmax", "reduce_range": "off"},
    "all, minmax, 8-bit": {"keep_fp32": (), "method": "minmax", "reduce_range": "off"},
    "heads fp32, minmax, 7-bit": {"keep_fp32": HEADS, "method": "minmax", "reduce_range": "on"},
    "all, minmax, 7-bit": {"keep_fp32": (), "method": "minmax", "reduce_range": "on"},
    "all, percentile, 8-bit": {"keep_fp32": (), "method": "percentile", "reduce_range": "off"},
    "all, percentile, 7-bit": {"keep_fp32": (), "method": "percentile", "reduce_range": "on"},
    "all, entropy, 8-bit": {"keep_fp32": (), "method": "entropy", "reduce_range": "off"},
}


def study(target: str, out: Path, data: str, calib: int) -> dict[str, dict]:
    """{variant: {set: (d MPJPE, d PA-MPJPE)}} for one model."""
    ckpt = resolve_checkpoint(Path(target), what="bench_int8")
    model, _ = load_any(str(ckpt))
    res = int(getattr(model, "img_res", 224))
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.onnx"
    export_onnx(model, fp32, img_res=res)
    images = calibration_images(_data_spec(Path(target), data), img_res=res, n=calib)
    results = {}
    for i, (name, fields) in enumerate(VARIANTS.items()):
        int8 = out / f"v{i}.onnx"
        quantize_onnx(fp32, int8, images, dataclasses.replace(QuantSpec(calib=calib), **fields))
        m = _evaluate_pair(fp32, int8, data, datasets=SETS, subset=None)
        results[name] = {ds: (m["int8"][ds]["mpjpe_mm"] - m["fp32"][ds]["mpjpe_mm"],
                              m["int8"][ds]["pa_mpjpe_mm"] - m["fp32"][ds]["pa_mpjpe_mm"]) for ds in SETS}
        print(f"  {name:<28}" + "".join(f"{d[0]:+7.2f}/{d[1]:+5.2f}" for d in results[name].values())
              + f"   worst {max(abs(d[0]) for d in results[name].values()):.2f} / "
              f"{max(abs(d[1]) for d in results[name].values()):.2f}", flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("targets", nargs="+", help="runs or checkpoints (trained models)")
    p.add_argument("--data", default="data/synthetic")
    p.add_argument("--calib", type=int, default=64)
    p.add_argument("--out", default="runs/bench_int8")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    print(f"CPU: {describe_cpu(cpu_info())}; change INT8 - fp32 in mm, MPJPE/PA-MPJPE per set: {', '.join(SETS)}")
    for i, target in enumerate(args.targets):
        print(f"\n{target}")
        study(target, Path(args.out) / f"m{i}", args.data, args.calib)
    return 0


if __name__ == "__main__":
    sys.exit(main())
