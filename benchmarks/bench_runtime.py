"""Where models are deployed: HMR-MobileNetV2, its P1/P2 prunings (the shipped recipes' prune sections) and their
INT8 models, timed in PyTorch eager and in ONNX Runtime, two models at a time in alternation (A B A B ...).

Prints, per pair and batch size, both medians and the speed-up, and the issue-14 goals met or not:
  ORT fp32: P1 >= 1.3x faster than the baseline at batch 1 and 32, P2 >= 1.8x (and both faster in PyTorch too);
  INT8 of P1 >= 1.5x faster than fp32 P1 in ORT; P2+INT8 >= 3x faster than the fp32 baseline and >= 8x smaller.
With `--run RUN` (a fine-tuned run) it also quantizes that run and compares INT8 with fp32 accuracy on the 3D sets
(goal: PA-MPJPE within 1 mm, MPJPE within 2 mm).

    python benchmarks/bench_runtime.py                         # 224 px, 1 thread, recipes as shipped
    python benchmarks/bench_runtime.py --round-to 1            # the same with unrounded widths
    python benchmarks/bench_runtime.py --run runs/demo/mbv2_p1 --data data/synthetic
    python benchmarks/bench_runtime.py --ops                   # where P1's INT8 time goes, and what else was tried

`--ops` profiles P1 fp32 and P1+INT8 node by node in ONNX Runtime (its own profiler, one thread, batch 1) and sums
the kernel time per layer kind (first 3x3 convolution, depthwise, pointwise, fully connected, the rest); then it
times other quantizations of P1 against the default (per-tensor weights, 8-bit weights, the first convolution or
every depthwise convolution kept in fp32), all in alternation.
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.devices import cpu_info, describe_cpu  # noqa: E402
from compress.export import export_onnx  # noqa: E402
from compress.latency import ab_latency  # noqa: E402
from compress.models import create_model  # noqa: E402
from compress.prune import prune_model  # noqa: E402
from compress.quantize import QuantSpec, ab_onnx_latency, quantize_onnx, run_quantize  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402

RECIPES = Path(__file__).resolve().parents[1] / "recipes"
GOALS = [  # (pair, runtime, at least this speed-up, goal text)
    (("baseline", "P1"), "ort", 1.3, "ORT fp32: P1 >= 1.3x faster than the baseline"),
    (("baseline", "P2"), "ort", 1.8, "ORT fp32: P2 >= 1.8x faster than the baseline"),
    (("baseline", "P1"), "torch", 1.0, "PyTorch: P1 faster than the baseline"),
    (("baseline", "P2"), "torch", 1.0, "PyTorch: P2 faster than the baseline"),
    (("P1", "P1+INT8"), "ort", 1.5, "ORT: INT8 of P1 >= 1.5x faster than fp32 P1"),
    (("baseline", "P2+INT8"), "ort", 3.0, "ORT: P2+INT8 >= 3x faster than the fp32 baseline"),
]


def build_models(img_res: int, round_to: int | None) -> dict[str, torch.nn.Module]:
    """The baseline (seeded random weights: latency does not depend on their values), P1 and P2 as the shipped
    recipes prune (round_to from the recipe unless given)."""
    torch.manual_seed(0)
    base = create_model("hmr_mobilenet_v2", img_res=img_res).eval()
    example = torch.randn(1, 3, img_res, img_res)
    models = {"baseline": base}
    for stage, recipe in (("P1", "mbv2_p1.yaml"), ("P2", "mbv2_p2.yaml")):
        spec = load_recipe(RECIPES / recipe).prune
        if round_to is not None:
            spec = dataclasses.replace(spec, round_to=round_to)
        source = models["P1" if stage == "P2" else "baseline"]
        models[stage], _ = prune_model(source, spec, example)
    return models


def calibration(img_res: int, n: int = 32) -> np.ndarray:
    """Calibration inputs for the latency models (their weights are random, so are the inputs: only speed is
    measured here; `--run` calibrates a trained model on real crops)."""
    return np.random.default_rng(0).standard_normal((n, 3, img_res, img_res)).astype(np.float32)


def export_all(models: dict, tmp: Path, img_res: int) -> dict[str, Path]:
    files = {}
    for name, model in models.items():
        files[name] = Path(export_onnx(model, tmp / f"{name}.onnx", img_res=img_res)["path"])
    for name in ("P1", "P2", "baseline"):
        out = tmp / f"{name}_int8.onnx"
        quantize_onnx(files[name], out, calibration(img_res), QuantSpec())
        files[f"{name}+INT8"] = out
    return files


def time_pair(a: str, b: str, runtime: str, *, models: dict, files: dict, img_res: int, threads: int) -> dict:
    out = {}
    for batch, rounds in ((1, 40), (32, 8)):
        if runtime == "ort":
            stats = ab_onnx_latency({a: files[a], b: files[b]}, img_res=img_res, batch=batch, threads=threads,
                                    rounds=rounds)
        else:
            with torch.no_grad():
                stats = ab_latency({a: models[a], b: models[b]}, img_res=img_res, batch=batch, threads=threads,
                                   repeats=rounds)
        out[batch] = (stats[a]["median_ms"], stats[b]["median_ms"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--img-res", type=int, default=224)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--round-to", type=int, default=None, help="override the recipes' prune.round_to")
    p.add_argument("--run", default=None, help="a fine-tuned run to quantize and score (INT8 vs fp32 accuracy)")
    p.add_argument("--data", default=None, help="data root for --run (default: the run's)")
    p.add_argument("--subset", type=int, default=None)
    p.add_argument("--ops", action="store_true", help="per-layer-kind profile of P1 fp32 vs INT8, and variants")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = build_models(args.img_res, args.round_to)
    if args.ops:
        return ops_profile(models["P1"], args.img_res)
    with tempfile.TemporaryDirectory() as tmp_name:
        files = export_all(models, Path(tmp_name), args.img_res)
        _print_models(models, files)
        print(f"\nCPU: {describe_cpu(cpu_info())}")
        print(f"medians, {args.threads} thread(s), {args.img_res} px, pairs timed in alternation:")
        print(f"{'pair':<24}{'runtime':>8}{'batch':>6}{'A ms':>10}{'B ms':>10}{'A/B':>7}  goal")
        met = []
        for (a, b), runtime, need, text in GOALS:
            times = time_pair(a, b, runtime, models=models, files=files, img_res=args.img_res, threads=args.threads)
            ok = all(ta / tb >= need for ta, tb in times.values())
            met.append((text, ok, {k: ta / tb for k, (ta, tb) in times.items()}))
            for batch, (ta, tb) in times.items():
                print(f"{a + ' vs ' + b:<24}{runtime:>8}{batch:>6}{ta:>10.2f}{tb:>10.2f}{ta / tb:>7.2f}  "
                      f"{'>= ' + str(need) + 'x' if runtime == 'ort' or need > 1 else 'faster'}")
        size = files["baseline"].stat().st_size / files["P2+INT8"].stat().st_size
        met.append(("P2+INT8 >= 8x smaller on disk than the fp32 baseline", size >= 8, {"x": size}))
    print("\ngoals:")
    for text, ok, ratios in met:
        print(f"  {'MET    ' if ok else 'NOT MET'} {text}: " + ", ".join(f"b{k} {v:.2f}x" if k != "x" else
                                                                          f"{v:.2f}x" for k, v in ratios.items()))
    _cuda_pairs(models, args.img_res)
    if args.run:
        _accuracy(args.run, args.data, args.subset)
    return 0


def _cuda_pairs(models: dict, img_res: int) -> None:
    """The fp32 models in ONNX Runtime's CUDA execution provider (batch 1 and 32), where this machine has it."""
    from compress.report.costs import cuda_provider_missing

    why = cuda_provider_missing()
    if why:
        print(f"\nONNX Runtime CUDA: not timed ({why})")
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        files = {k: Path(export_onnx(models[k], Path(tmp_name) / f"{k}.onnx", img_res=img_res)["path"])
                 for k in ("baseline", "P1", "P2")}
        print("\nONNX Runtime CUDA execution provider, fp32, pairs timed in alternation (host arrays in and out):")
        for b_name in ("P1", "P2"):
            for batch, rounds in ((1, 100), (32, 30)):
                st = ab_onnx_latency({"baseline": files["baseline"], b_name: files[b_name]}, img_res=img_res,
                                     batch=batch, rounds=rounds, device="cuda")
                ta, tb = st["baseline"]["median_ms"], st[b_name]["median_ms"]
                print(f"{'baseline vs ' + b_name:<24}{'ort-cuda':>8}{batch:>6}{ta:>10.2f}{tb:>10.2f}{ta / tb:>7.2f}")


KINDS = ("first conv", "depthwise", "pointwise", "fully connected", "rest")


def layer_kinds(model_path: Path) -> dict[str, str]:
    """Node name -> layer kind, for the (ORT-optimised) graph in `model_path`."""
    import onnx

    kinds, seen_conv = {}, False
    for node in onnx.load(str(model_path)).graph.node:
        attrs = {a.name: a for a in node.attribute}
        if "Conv" in node.op_type:
            kind = ("depthwise" if attrs.get("group") and attrs["group"].i > 1 else
                    "pointwise" if list(getattr(attrs.get("kernel_shape"), "ints", [])) == [1, 1] else
                    "first conv" if not seen_conv else "rest")
            seen_conv = True
        else:
            kind = "fully connected" if node.op_type in ("Gemm", "QGemm", "MatMul") else "rest"
        kinds[node.name] = kind
    return kinds


def kernel_ms(path: Path, img_res: int, runs: int = 60) -> dict[str, float]:
    """ms per batch-1 run in each layer kind, from ONNX Runtime's own profiler (one thread; its trace and the
    optimised graph are written beside `path`)."""
    import json

    import onnxruntime as ort

    path = Path(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = opts.inter_op_num_threads = 1
    opts.enable_profiling = True
    opts.profile_file_prefix = str(path.with_suffix(".profile"))
    opts.optimized_model_filepath = str(path.with_suffix(".opt.onnx"))
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    kinds = layer_kinds(path.with_suffix(".opt.onnx"))
    x = np.random.default_rng(0).standard_normal((1, 3, img_res, img_res)).astype(np.float32)
    for _ in range(runs):
        sess.run(None, {"img": x})
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    out = dict.fromkeys(KINDS, 0.0)
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            out[kinds.get(e["name"][:-len("_kernel_time")], "rest")] += e["dur"] / 1000 / runs
    return out


def ops_profile(p1: torch.nn.Module, img_res: int) -> int:
    import onnx

    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fp32 = Path(export_onnx(p1, tmp / "P1.onnx", img_res=img_res)["path"])
        convs = [n for n in onnx.load(str(fp32)).graph.node if n.op_type == "Conv"]
        depthwise = tuple(n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute))
        variants = {"INT8 (default)": QuantSpec(), "per-tensor weights": QuantSpec(per_channel=False),
                    "8-bit weights": QuantSpec(reduce_range="off"), "first conv fp32": QuantSpec(keep_fp32=(
                        convs[0].name,)), "depthwise fp32": QuantSpec(keep_fp32=depthwise)}
        files = {"fp32": fp32}
        for i, (name, spec) in enumerate(variants.items()):
            files[name] = tmp / f"v{i}.onnx"
            quantize_onnx(fp32, files[name], calibration(img_res), spec)
        fp, q = kernel_ms(fp32, img_res), kernel_ms(files["INT8 (default)"], img_res)
        print(f"P1 at {img_res} px, batch 1, one thread: kernel ms per run by layer kind (ONNX Runtime profiler)")
        print(f"{'kind':<18}{'fp32':>8}{'INT8':>8}{'fp32/INT8':>11}")
        for kind in KINDS:
            print(f"{kind:<18}{fp[kind]:>8.2f}{q[kind]:>8.2f}{fp[kind] / max(q[kind], 1e-9):>11.2f}")
        print(f"{'all':<18}{sum(fp.values()):>8.2f}{sum(q.values()):>8.2f}{sum(fp.values()) / sum(q.values()):>11.2f}")
        print(f"\nquantizations of P1, all timed in alternation (medians, ms; CPU: {describe_cpu(cpu_info())}):")
        for batch, rounds in ((1, 40), (32, 5)):
            st = ab_onnx_latency(files, img_res=img_res, batch=batch, rounds=rounds)
            base = st["fp32"]["median_ms"]
            print(f"  batch {batch:>2}: " + ", ".join(f"{k} {v['median_ms']:.2f} ({base / v['median_ms']:.2f}x)"
                                                   for k, v in st.items()))
    return 0


def _print_models(models: dict, files: dict) -> None:
    from compress.prune import cost

    print(f"{'model':<12}{'params':>12}{'MMACs':>9}{'ONNX MB':>9}   widths (first convs)")
    for name, model in models.items():
        c = cost(model, torch.zeros(1, 3, model.img_res, model.img_res))
        convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)][:6]
        print(f"{name:<12}{c.params_total:>12,}{c.macs / 1e6:>9.1f}{files[name].stat().st_size / 2**20:>9.2f}   "
              f"{convs}")
    for name in ("baseline+INT8", "P1+INT8", "P2+INT8"):
        print(f"{name:<12}{'':>12}{'':>9}{files[name].stat().st_size / 2**20:>9.2f}")


def _accuracy(run: str, data: str | None, subset: int | None) -> None:
    summary = run_quantize(run, spec=QuantSpec(), data=data, subset=subset,
                           datasets=["3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2"])
    print(f"\nINT8 vs fp32 accuracy of {summary['checkpoint']} ({summary['calibration_images']} calibration crops):")
    worst_pa = worst_mp = 0.0
    for ds, m in summary["metrics"]["fp32"].items():
        q = summary["metrics"]["int8"][ds]
        d_mp, d_pa = q["mpjpe_mm"] - m["mpjpe_mm"], q["pa_mpjpe_mm"] - m["pa_mpjpe_mm"]
        worst_pa, worst_mp = max(worst_pa, abs(d_pa)), max(worst_mp, abs(d_mp))
        print(f"  {ds:<14} MPJPE {m['mpjpe_mm']:7.2f} -> {q['mpjpe_mm']:7.2f} ({d_mp:+.2f})   "
              f"PA-MPJPE {m['pa_mpjpe_mm']:7.2f} -> {q['pa_mpjpe_mm']:7.2f} ({d_pa:+.2f})")
    print(f"  {'MET    ' if worst_pa <= 1 and worst_mp <= 2 else 'NOT MET'} INT8 within 1 mm PA-MPJPE (worst "
          f"{worst_pa:.2f}) and 2 mm MPJPE (worst {worst_mp:.2f})")


if __name__ == "__main__":
    sys.exit(main())
