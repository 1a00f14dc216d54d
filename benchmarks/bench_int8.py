"""Which INT8 settings keep a trained model closest to fp32: the layers kept in fp32 (none or the IEF heads), the
calibration method and 7-bit weights, each scored on the 3D sets against the same fp32 ONNX file, for each of
--seeds draws of calibration crops. Prints the change of MPJPE and PA-MPJPE per set and the worst of each over
models and draws (issue 14's goal: within 2 mm and 1 mm).

    python benchmarks/bench_int8.py runs/bench_ftlen/kd_ft20 checkpoints/mbv2_reference.pt   # about 6 min each

Files go to --out/<model>/ (kept; re-running re-scores them); the figures to benchmarks/reference/int8_settings.json.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.devices import cpu_info, describe_cpu  # noqa: E402
from compress.export import export_onnx  # noqa: E402
from compress.profile import load_any  # noqa: E402
from compress.quantize import (  # noqa: E402
    QuantSpec,
    calibration_images,
    data_spec_for,
    evaluate_pair,
    quantize_onnx,
)
from compress.runs import resolve_checkpoint  # noqa: E402

OUT = Path(__file__).resolve().parent / "reference" / "int8_settings.json"
SETS = ["3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2"]
HEADS = ("decpose", "decshape", "deccam")
VARIANTS = {  # name -> QuantSpec fields
    "heads fp32, minmax, 8-bit": {"keep_fp32": HEADS, "method": "minmax", "reduce_range": "off"},
    "all, minmax, 8-bit": {"keep_fp32": (), "method": "minmax", "reduce_range": "off"},
    "all, minmax, 7-bit": {"keep_fp32": (), "method": "minmax", "reduce_range": "on"},
    "all, percentile, 8-bit": {"keep_fp32": (), "method": "percentile", "reduce_range": "off"},
    "all, percentile, 7-bit": {"keep_fp32": (), "method": "percentile", "reduce_range": "on"},
}


def study(target: str, out: Path, data: str, calib: int, seed: int) -> dict[str, dict]:
    """{variant: {set: (d MPJPE, d PA-MPJPE)}} for one model and one draw of calibration crops."""
    ckpt = resolve_checkpoint(Path(target), what="bench_int8")
    model, _ = load_any(str(ckpt))
    res = int(getattr(model, "img_res", 224))
    out.mkdir(parents=True, exist_ok=True)
    fp32 = out / "model.onnx"
    export_onnx(model, fp32, img_res=res)
    images = calibration_images(data_spec_for(Path(target), data), img_res=res, n=calib, seed=seed)
    results = {}
    for i, (name, fields) in enumerate(VARIANTS.items()):
        int8 = out / f"v{i}_s{seed}.onnx"
        quantize_onnx(fp32, int8, images, dataclasses.replace(QuantSpec(calib=calib, seed=seed), **fields))
        m = evaluate_pair(fp32, int8, data, datasets=SETS, subset=None)
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
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="draws of calibration crops")
    p.add_argument("--out", default="runs/bench_int8")
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cpu = cpu_info()
    print(f"CPU: {describe_cpu(cpu)}; change INT8 - fp32 in mm, MPJPE/PA-MPJPE per set: {', '.join(SETS)}")
    results = {}
    for i, target in enumerate(args.targets):
        for seed in args.seeds:
            print(f"\n{target}, calibration seed {seed}")
            results[f"{target} seed {seed}"] = study(target, Path(args.out) / f"m{i}", args.data, args.calib, seed)
    print("\nworst |change| over models and seeds (MPJPE / PA-MPJPE mm):")
    for name in VARIANTS:
        worst = [max(abs(d[j]) for r in results.values() for d in r[name].values()) for j in (0, 1)]
        print(f"  {name:<28}{worst[0]:6.2f} / {worst[1]:.2f}")
    OUT.write_text(json.dumps({"cpu": cpu, "calib": args.calib, "seeds": args.seeds, "sets": SETS,
                               "results": results}, indent=1) + "\n")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
