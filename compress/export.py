"""ONNX export of any zoo model or checkpoint (pruned ones included), verified in onnxruntime.

The exported graph takes `img` (B, 3, R, R) with a dynamic batch and returns `rotmat` (B, 24, 3, 3),
`betas` (B, 10) and `cam` (B, 3). Every export is run in onnxruntime at two batch sizes and compared with
PyTorch; a difference above `atol` is an error and no file is left behind.
"""
from __future__ import annotations

import copy
import logging
import os
import statistics
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from compress.profile import load_any

log = logging.getLogger(__name__)

OUTPUT_NAMES = ("rotmat", "betas", "cam")


class ExportMismatchError(RuntimeError):
    """onnxruntime's outputs differ from PyTorch's by more than the tolerance."""


class _OutputsAsTuple(nn.Module):
    """ONNX wants positional outputs: the model's dict -> (rotmat, betas, cam)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor):
        out = self.model(img)
        return tuple(out[k] for k in OUTPUT_NAMES)


def _load(model_or_ckpt) -> nn.Module:
    if isinstance(model_or_ckpt, nn.Module):
        return model_or_ckpt
    model, _ = load_any(str(model_or_ckpt))
    return model


def export_onnx(
    model_or_ckpt: nn.Module | str | Path, out: str | Path, *, img_res: int | None = None, opset: int = 17,
    atol: float = 1e-4, check_batches: tuple[int, ...] = (1, 3), device: str | torch.device = "cpu",
) -> dict:
    """Export to ONNX (opset `opset`, dynamic batch) and check it in onnxruntime against PyTorch.

    The export runs on the CPU; the check runs PyTorch on `device` (TF32 off) and onnxruntime with its CUDA
    provider when `device` is CUDA and the installed onnxruntime has one, else its CPU provider.

    Returns {"path", "opset", "img_res", "inputs", "outputs", "max_abs_diff" (per output), "max_abs_diff_all",
    "checked_batches", "size_mb", "params"}. Raises ExportMismatchError above `atol`.
    """
    import onnx

    model = copy.deepcopy(_load(model_or_ckpt)).cpu().eval()
    img_res = int(img_res or getattr(model, "img_res", 224))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    wrapper = _OutputsAsTuple(model).eval()
    example = torch.zeros(1, 3, img_res, img_res)
    dynamic = {name: {0: "batch"} for name in ("img", *OUTPUT_NAMES)}
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of the dynamo one, which needs onnxscript (not a
        # dependency here); tracer warnings about Python ints from shapes are expected for the IEF loop.
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (example,), str(tmp), dynamo=False, input_names=["img"],
                          output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, opset_version=opset,
                          do_constant_folding=True)
    try:
        with torch.no_grad():
            ref = wrapper(example)
        _fix_output_dims(tmp, {name: tuple(r.shape) for name, r in zip(OUTPUT_NAMES, ref)})
        onnx.checker.check_model(str(tmp))
        diffs = _compare(wrapper, tmp, img_res=img_res, batches=check_batches, device=torch.device(device))
        worst = max(diffs.values())
        if not worst <= atol:  # also catches NaN
            detail = ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
            source = type(model_or_ckpt).__name__ if isinstance(model_or_ckpt, nn.Module) else model_or_ckpt
            raise ExportMismatchError(f"ONNX export of {source} differs from PyTorch by more than {atol:g}: {detail}")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    graph = onnx.load(str(out), load_external_data=False).graph
    info = {
        "path": str(out),
        "opset": opset,
        "img_res": img_res,
        "inputs": {i.name: _shape(i) for i in graph.input},
        "outputs": {o.name: _shape(o) for o in graph.output},
        "max_abs_diff": diffs,
        "max_abs_diff_all": worst,
        "checked_batches": list(check_batches),
        "size_mb": out.stat().st_size / 2**20,
        "params": sum(p.numel() for p in model.parameters()),
    }
    log.debug("exported %s (max abs diff %.2e vs PyTorch)", out, worst)
    return info


def _fix_output_dims(path: Path, shapes: dict[str, tuple[int, ...]]) -> None:
    """The tracer leaves some output dims symbolic ("Addbetas_dim_1"): write the static ones, batch stays named."""
    import onnx

    proto = onnx.load(str(path))
    for out in proto.graph.output:
        dims = out.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if i == 0:
                d.dim_param = "batch"
            else:
                d.dim_value = shapes[out.name][i]
    onnx.save(proto, str(path))


def _shape(value_info) -> list:
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


@torch.no_grad()
def _compare(wrapper: nn.Module, path: Path, *, img_res: int, batches: tuple[int, ...],
             device: torch.device = torch.device("cpu")) -> dict[str, float]:
    """Max |onnxruntime - PyTorch| per output over seeded random inputs at each batch size."""
    sess = session(path, device=device)
    reference = copy.deepcopy(wrapper).to(device)
    gen = torch.Generator().manual_seed(0)
    diffs = dict.fromkeys(OUTPUT_NAMES, 0.0)
    for b in batches:
        x = torch.randn(b, 3, img_res, img_res, generator=gen)
        with torch.no_grad(), torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
            ref = [r.cpu() for r in reference(x.to(device))]
        got = sess.run(list(OUTPUT_NAMES), {"img": x.numpy()})
        for name, r, g in zip(OUTPUT_NAMES, ref, got):
            if tuple(g.shape) != tuple(r.shape):
                raise ExportMismatchError(
                    f"ONNX output {name} has shape {g.shape} at batch {b}, PyTorch {tuple(r.shape)}")
            diffs[name] = max(diffs[name], float(abs(torch.from_numpy(g) - r).max()))
    return diffs


def session(path: str | Path, *, threads: int | None = None, device: torch.device = torch.device("cpu")):
    """An onnxruntime session: `threads` intra-op threads (default: torch's), CUDA's provider first on a CUDA device
    when the installed onnxruntime has it, else the CPU provider."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads or torch.get_num_threads()
    opts.inter_op_num_threads = 1
    providers = ["CPUExecutionProvider"]
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
    return ort.InferenceSession(str(path), sess_options=opts, providers=providers)


def onnx_latency(
    path: str | Path, *, img_res: int, batch: int = 1, repeats: int = 30, warmup: int = 5, threads: int | None = None,
    device: torch.device = torch.device("cpu"),
) -> dict:
    """onnxruntime latency: median and 10/90th percentile in ms over `repeats` runs after `warmup` runs.

    On the CPU, threads default to torch's intra-op thread count, so the figure compares with PyTorch's CPU latency.
    On a CUDA device the CUDA execution provider runs it (an error when the installed onnxruntime lacks it: a CPU
    figure must not pass for a GPU one); a run takes a host array and returns host arrays, as `session.run` does.
    """
    threads = threads or torch.get_num_threads()
    sess = session(path, threads=threads, device=device)
    provider = sess.get_providers()[0]
    if device.type == "cuda" and provider != "CUDAExecutionProvider":
        raise RuntimeError(f"onnxruntime ran {Path(path).name} on {provider}, not CUDA (install onnxruntime-gpu)")
    x = torch.randn(batch, 3, img_res, img_res).numpy()
    for _ in range(warmup):
        sess.run(None, {"img": x})
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        sess.run(None, {"img": x})
        samples.append((time.perf_counter() - start) * 1000.0)
    q = statistics.quantiles(samples, n=10) if len(samples) >= 2 else samples * 9
    return {"median_ms": statistics.median(samples), "p10_ms": q[0], "p90_ms": q[-1], "repeats": len(samples),
            "batch": batch, "threads": threads, "device": f"{device.type} (onnxruntime {provider})"}
