"""`compress quantize RUN|CKPT`: post-training static INT8 quantization in ONNX Runtime, scored like any model.

The model is exported to ONNX (verified against PyTorch, compress.export), calibrated on N crops of the data
root's training sets (the run's `data` section: SPIN's mixed set, no augmentation, a seeded draw), and quantized
with onnxruntime.quantization.quantize_static: QDQ format, per-channel int8 weights (7-bit where the CPU has no
VNNI: `reduce_range`), uint8 activations (on x86 with VNNI signed activations ran no faster than fp32 in our
measurements), percentile calibration by default, every layer quantized unless named in `keep_fp32`. Those defaults
moved INT8 least from fp32 on two trained models (benchmarks/bench_int8.py; docs/benchmark.md). It writes
`<run>/model.onnx` (fp32), `<run>/quantized.onnx` and `<run>/quantized.json` (sizes, ONNX Runtime latency of both
timed in alternation, and the evaluation suite of both when asked).
"""
from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import statistics
import tempfile
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

from compress.devices import cpu_info
from compress.errors import UserError
from compress.io import atomic_write_json
from compress.recipe import DataSpec
from compress.runs import RECIPE_FILE, load_run_recipe, resolve_checkpoint

log = logging.getLogger(__name__)

FP32_FILE, INT8_FILE, SUMMARY_FILE = "model.onnx", "quantized.onnx", "quantized.json"
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
REDUCE_RANGE = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class QuantSpec:
    """How to quantize: calibration size and method, layers kept in fp32, weights per channel, 7-bit weights."""

    calib: int = 64
    method: str = "percentile"
    keep_fp32: tuple[str, ...] = ()
    per_channel: bool = True
    reduce_range: str = "auto"
    seed: int = 0

    def check(self) -> None:
        if self.calib < 1:
            raise UserError(f"--calib must be at least 1, got {self.calib}")
        if self.method not in METHODS:
            raise UserError(f"--method {self.method!r}: choose {', '.join(METHODS)}")
        if self.reduce_range not in REDUCE_RANGE:
            raise UserError(f"--reduce-range {self.reduce_range!r}: choose {', '.join(REDUCE_RANGE)}")

    def seven_bit(self) -> bool:
        """Weights in 7 bits? auto: where this CPU has no VNNI (AVX2/AVX-512 without VNNI multiply uint8 by int8 in
        a saturating 16-bit sum; ONNX Runtime's advice is 7-bit weights there)."""
        return self.reduce_range == "on" or (self.reduce_range == "auto" and not cpu_info()["vnni"])


def calibration_images(data: DataSpec, *, img_res: int, n: int, seed: int = 0) -> np.ndarray:
    """n crops (n, 3, R, R) float32 of the training mix, drawn without augmentation in a seeded order."""
    from compress.data.datasets import training_set

    dataset = training_set(data, img_res=img_res, augment=False)
    if len(dataset) < n:
        raise UserError(f"calibration set too small: {data.root} has {len(dataset)} training crops, --calib {n}; "
                        "lower --calib or point --data at a larger root")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(dataset))[:n]
    picks = [dataset.choose(int(i), rng) for i in order]  # (dataset, sample) from `rng`, not the global torch RNG
    return np.stack([dataset.datasets[k].get_item(j)["img"].numpy() for k, j in picks]).astype(np.float32)


class _Reader:
    """onnxruntime's CalibrationDataReader protocol over an array of images, in batches."""

    def __init__(self, images: np.ndarray, input_name: str, batch: int = 8):
        self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])
        self.input_name = input_name

    def get_next(self) -> Optional[dict]:
        batch = next(self.batches, None)
        return None if batch is None else {self.input_name: batch}


def excluded_nodes(model_path: Path, patterns: Iterable[str]) -> list[str]:
    """Names of the graph's nodes whose name contains one of `patterns` (kept in fp32)."""
    import onnx

    patterns = [p for p in patterns if p]
    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if any(p in n.name for p in patterns)]


def quantize_onnx(fp32: Path, out: Path, images: np.ndarray, spec: QuantSpec) -> dict:
    """quantize_static of `fp32` into `out` (QDQ, uint8 activations, int8 weights); returns what was done."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with tempfile.TemporaryDirectory() as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(fp32), str(prepared), skip_symbolic_shape=True)
        exclude, seven_bit = excluded_nodes(prepared, spec.keep_fp32), spec.seven_bit()
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print their progress
            quantize_static(
                str(prepared), str(out), _Reader(images, "img"), quant_format=QuantFormat.QDQ,
                per_channel=spec.per_channel, reduce_range=seven_bit, activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, METHODS[spec.method]),
                nodes_to_exclude=exclude)
    bits = "int7 (reduced range)" if seven_bit else "int8"
    return {"format": "QDQ", "weights": f"{bits} per-channel" if spec.per_channel else f"{bits} per-tensor",
            "activations": "uint8", "method": spec.method, "calibration_images": len(images),
            "kept_fp32": exclude}


def ab_onnx_latency(paths: dict[str, Path], *, img_res: int, batch: int = 1, threads: int = 1,
                    rounds: int = 30, warmup: int = 5, device: str = "cpu") -> dict[str, dict]:
    """ONNX Runtime latency of several files timed in alternation (A B A B ...): median and p10/p90 in ms; on
    `device` "cuda" in the CUDA execution provider (an error where onnxruntime lacks it)."""
    from compress.export import session

    sessions = {k: session(p, threads=threads, device=torch.device(device)) for k, p in paths.items()}
    for key, sess in sessions.items():
        if device == "cuda" and sess.get_providers()[0] != "CUDAExecutionProvider":
            raise UserError(f"onnxruntime cannot run {key} on CUDA here; install onnxruntime-gpu")
    x = np.random.default_rng(0).standard_normal((batch, 3, img_res, img_res)).astype(np.float32)
    samples: dict[str, list[float]] = {k: [] for k in sessions}
    for i in range(warmup + rounds):
        for key, sess in sessions.items():
            start = time.perf_counter()
            sess.run(None, {"img": x})
            if i >= warmup:
                samples[key].append((time.perf_counter() - start) * 1000.0)
    out = {}
    for key, v in samples.items():
        q = statistics.quantiles(v, n=10)
        out[key] = {"median_ms": statistics.median(v), "p10_ms": q[0], "p90_ms": q[-1], "batch": batch,
                    "threads": threads, "rounds": rounds, "samples_ms": v}
    return out


def ab_model_latency_ort(models: dict[str, torch.nn.Module], *, img_res: int, batch: int = 1, threads: int = 1,
                         repeats: int = 21, **_) -> dict[str, dict]:
    """compress.latency.ab_latency's figures for PyTorch models run in ONNX Runtime: each is exported (and checked)
    to a temporary file, then all are timed in alternation."""
    from compress.export import export_onnx

    with tempfile.TemporaryDirectory() as tmp:
        paths = {k: Path(export_onnx(m, Path(tmp) / f"{i}.onnx", img_res=img_res)["path"])
                 for i, (k, m) in enumerate(models.items())}
        return ab_onnx_latency(paths, img_res=img_res, batch=batch, threads=threads, rounds=repeats)


def data_spec_for(target: Path, root: Optional[str]) -> DataSpec:
    """The data section a target calibrates on: its run's recipe with `root` over it, else the default mix under
    `root`."""
    run_dir = target if target.is_dir() else target.parent
    if (run_dir / RECIPE_FILE).is_file():
        data = load_run_recipe(run_dir, [f"data.root={root}"] if root else []).data
    else:
        from compress.recipe import data_root

        data = DataSpec(root=str(data_root(root)))
    return dataclasses.replace(data, workers=0)


def run_quantize(target: str | Path, *, spec: QuantSpec = QuantSpec(), data: Optional[str] = None,
                 out: Optional[str | Path] = None, datasets: Optional[list[str]] = None,
                 subset: Optional[int] = None, threads: int = 1) -> dict:
    """Export, calibrate, quantize, then time (and with `datasets`, evaluate) fp32 and INT8 side by side."""
    from compress.export import export_onnx
    from compress.profile import load_any

    spec.check()
    target = Path(target)
    ckpt = resolve_checkpoint(target, what="compress quantize")
    model, _ = load_any(str(ckpt))
    res = int(getattr(model, "img_res", 224))
    int8 = Path(out) if out else ckpt.parent / INT8_FILE
    fp32 = int8.with_name(FP32_FILE if not out else int8.stem + ".fp32.onnx")
    data_spec = data_spec_for(target, data)
    images = calibration_images(data_spec, img_res=res, n=spec.calib, seed=spec.seed)  # fails before exporting
    export_onnx(model, fp32, img_res=res)
    done = quantize_onnx(fp32, int8, images, spec)
    summary = {"checkpoint": str(ckpt), "fp32": str(fp32), "int8": str(int8), "img_res": res, **done,
               "cpu": cpu_info(), "size_mb": {"fp32": fp32.stat().st_size / 2**20, "int8": int8.stat().st_size / 2**20}}
    summary["latency_ms"] = {f"b{b}": _without_samples(ab_onnx_latency({"fp32": fp32, "int8": int8}, img_res=res,
                                                                       batch=b, threads=threads,
                                                                       rounds=30 if b == 1 else 8))
                             for b in (1, 32)}
    if datasets:
        summary["metrics"] = evaluate_pair(fp32, int8, data_spec.root, datasets=datasets, subset=subset)
    atomic_write_json(int8.with_name(int8.stem + ".json") if out else int8.with_name(SUMMARY_FILE), summary)
    return summary


def _without_samples(stats: dict[str, dict]) -> dict[str, dict]:
    return {k: {n: v for n, v in s.items() if n != "samples_ms"} for k, s in stats.items()}


def evaluate_pair(fp32: Path, int8: Path, root: str, *, datasets: list[str], subset: Optional[int]) -> dict:
    from compress.eval.protocols import evaluate
    from compress.onnx_model import OnnxHMR

    out = {}
    for key, path in (("fp32", fp32), ("int8", int8)):
        model = OnnxHMR(path, threads=torch.get_num_threads())
        out[key] = evaluate(model, root, datasets=datasets, img_res=model.img_res, subset=subset, workers=0)
    return out


def summary_rows(summary: dict) -> list[list[str]]:
    """fp32 vs INT8: size, ONNX Runtime latency (alternating), and each dataset's MPJPE / PA-MPJPE."""
    rows = [["", "fp32", "INT8", "INT8 / fp32"]]
    size = summary["size_mb"]
    rows.append(["size MB", f"{size['fp32']:.2f}", f"{size['int8']:.2f}", f"{size['int8'] / size['fp32']:.2f}x"])
    for key, lat in summary["latency_ms"].items():
        a, b = lat["fp32"]["median_ms"], lat["int8"]["median_ms"]
        rows.append([f"ORT ms {key} ({lat['fp32']['threads']} thr)", f"{a:.2f}", f"{b:.2f}", f"{a / b:.2f}x faster"])
    metrics = summary.get("metrics") or {}
    for ds, m in (metrics.get("fp32") or {}).items():
        q = metrics["int8"].get(ds, {})
        for k, label in (("mpjpe_mm", "MPJPE mm"), ("pa_mpjpe_mm", "PA-MPJPE mm")):
            if k in m and k in q:
                rows.append([f"{ds} {label}", f"{m[k]:.2f}", f"{q[k]:.2f}", f"{q[k] - m[k]:+.2f}"])
    return rows
