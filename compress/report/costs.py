"""The cost fields of a report row: parameters, MACs, latency (CPU, GPU, ONNX Runtime) and peak memory.

Figures come from the profile cache beside each checkpoint (compress.profile owns it: `<ckpt>.profile.json`,
`<ckpt>.onnx-latency.json`); a checkpoint without a valid cache entry is profiled once. Here too: timing all rows
of a group again in alternation (--interleave), one memory source per column, and the notes on noisy timings.
"""
from __future__ import annotations

import contextlib
import logging
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from compress import export
from compress import profile as profiler  # called through the module: tests stand in for the timers
from compress.report.columns import COST_COLUMNS, get_path, is_number

log = logging.getLogger(__name__)

NOISY_SPREAD = 0.25  # (p90 - p10) / median above this: the machine was busy while timing


def row_costs(path: Path, *, retime: bool, device: str, onnx: bool, foreign: dict | None = None
              ) -> tuple[dict[str, Any], dict[str, str]]:
    """A checkpoint's cost fields for its report row, and a note for each cost column it cannot fill (by key).
    `foreign`: the model config recorded for a file that does not name its model (SPIN's checkpoint)."""
    notes: dict[str, str] = {}
    profile, why = _profile(path, retime=retime, device=device, foreign=foreign)
    fields = _profile_fields(profile)
    if profile is None:
        for col in COST_COLUMNS:
            notes[col.key] = why
    else:
        if get_path(profile, ("latency", "b32", "median_ms")) is None:
            notes["latency_b32_ms"] = "batch 32 not timed"
        noise_notes(profile.get("latency") or {}, notes)
    fields["gpu_latency_ms"], gpu_why = _gpu_latency(path, profile, retime=retime, device=device, foreign=foreign)
    if gpu_why:
        notes["gpu_latency_ms"] = gpu_why
    fields["onnx_latency_ms"] = fields["onnx_latency_b32_ms"] = None
    if onnx:
        stats, onnx_why = _onnx_latency(path, profile, retime=retime, foreign=foreign)
        fields["onnx_latency_ms"] = get_path(stats, ("b1", "median_ms"))
        fields["onnx_latency_b32_ms"] = get_path(stats, ("b32", "median_ms"))
        if onnx_why:
            notes["onnx_latency_ms"] = notes["onnx_latency_b32_ms"] = onnx_why
    fields["onnx_cuda_latency_ms"], cuda_why = (
        onnx_cuda_latency(path, lambda: _export_for_timing(path, profile, foreign), retime=retime) if onnx
        else (None, ""))
    if cuda_why:
        notes["onnx_cuda_latency_ms"] = cuda_why
    return fields, notes


def _profile_fields(profile: dict | None) -> dict:
    p = profile or {}
    mem = dict(p.get("peak_mem_mb") or {})
    lat = dict(p.get("latency") or {})
    return {
        "params_total": p.get("params_total"),
        "params_encoder": p.get("params_encoder"),
        "params_regressor": p.get("params_regressor"),
        "macs": p.get("macs"),
        "macs_counter": p.get("macs_counter"),
        "img_res": p.get("img_res"),
        "latency_ms": p.get("latency_ms"),
        "latency_b32_ms": get_path(lat, ("b32", "median_ms")),
        "latency": lat or None,
        "peak_mem_mb": mem or None,
    }


def _profile(path: Path, *, retime: bool, device: str, foreign: dict | None = None) -> tuple[dict | None, str]:
    """The checkpoint's cached profile when the file is unchanged and was profiled on `device` (whatever the thread
    count or resolution then), else profile_checkpoint (which times it)."""
    cached = None if retime else profiler.read_cache(path, profiler.PROFILE_CACHE, device=device)
    if cached is not None:
        return cached, ""
    try:
        return profiler.profile_checkpoint(path, device=device, retime=retime, foreign=foreign), ""
    except Exception as exc:  # a report shows what it can; the reason goes into a footnote
        log.warning("could not profile %s: %s", path, exc)
        return None, f"not profiled ({type(exc).__name__}: {str(exc)[:80]})"


def _gpu_latency(path: Path, profile: dict | None, *, retime: bool, device: str, foreign: dict | None
                 ) -> tuple[float | None, str]:
    """CUDA latency: the row's own profile when it was profiled on CUDA, else the CUDA profile (its own cache)."""
    if device.startswith("cuda"):
        return (profile or {}).get("latency_ms"), ""
    if not torch.cuda.is_available():
        return None, "no CUDA"
    profile, why = _profile(path, retime=retime, device="cuda", foreign=foreign)
    return (profile or {}).get("latency_ms"), why


def _onnx_latency(path: Path, profile: dict | None, *, retime: bool, foreign: dict | None = None
                  ) -> tuple[dict | None, str]:
    """onnxruntime CPU latency of a checkpoint at batch 1 and 32 ({"b1": stats, "b32": stats}): exported to a
    temporary file and timed, cached beside the checkpoint while the file is unchanged."""
    def measure() -> dict:
        with _export_for_timing(path, profile, foreign) as (onnx_path, img_res):
            return _time_onnx(onnx_path, img_res=img_res)

    return _cached_onnx_latency(path, measure, retime=retime, failed="ONNX export failed")


@contextlib.contextmanager
def _export_for_timing(path: Path, profile: dict | None, foreign: dict | None):
    """The checkpoint exported to a temporary ONNX file: yields (its path, its image size)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, _ = profiler.load_any(str(path), foreign=foreign)
        info = export.export_onnx(model, Path(tmp) / "model.onnx", img_res=(profile or {}).get("img_res"))
        yield info["path"], info["img_res"]


def cuda_provider_missing() -> str:
    """Why ONNX Runtime cannot time on CUDA here ("" when it can)."""
    import onnxruntime as ort

    if not torch.cuda.is_available():
        return "no CUDA"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "onnxruntime has no CUDA provider; pip install onnxruntime-gpu"
    return ""


def onnx_cuda_latency(path: Path, exported, *, retime: bool) -> tuple[float | None, str]:
    """Batch-1 latency (ms) in ONNX Runtime's CUDA execution provider, cached beside `path`; `exported()` is a
    context giving (ONNX file, image size): the checkpoint's export, or the ONNX file itself."""
    why = cuda_provider_missing()
    if why:
        return None, why
    cached = None if retime else profiler.read_cache(path, profiler.ONNX_CUDA_LATENCY_CACHE)
    if isinstance(cached, dict) and is_number(cached.get("median_ms")):
        return cached["median_ms"], ""
    try:
        with exported() as (onnx_path, res):
            stats = export.onnx_latency(onnx_path, img_res=res, batch=1, repeats=30,
                                        device=torch.device("cuda"))
    except Exception as exc:
        log.warning("onnxruntime CUDA latency failed for %s: %s", path, exc)
        return None, f"ONNX Runtime CUDA failed ({type(exc).__name__})"
    profiler.write_cache(path, profiler.ONNX_CUDA_LATENCY_CACHE, stats)
    return stats["median_ms"], ""


def onnx_file_latency(path: Path, *, img_res: int, retime: bool) -> tuple[dict | None, str]:
    """The same figures for an ONNX file itself (an INT8 model), cached beside it."""
    return _cached_onnx_latency(path, lambda: _time_onnx(path, img_res=img_res), retime=retime,
                                failed="ONNX Runtime failed")


def _cached_onnx_latency(path: Path, measure, *, retime: bool, failed: str) -> tuple[dict | None, str]:
    """The cached {"b1", "b32"} figures of `path`, else measure() (stored; a failure becomes the column's note)."""
    cached = None if retime else profiler.read_cache(path, profiler.ONNX_LATENCY_CACHE)
    if isinstance(cached, dict) and "b1" in cached and "b32" in cached:
        return cached, ""
    try:
        stats = measure()
    except Exception as exc:
        log.warning("onnxruntime latency failed for %s: %s", path, exc)
        return None, f"{failed} ({type(exc).__name__})"
    profiler.write_cache(path, profiler.ONNX_LATENCY_CACHE, stats)
    return stats, ""


def _time_onnx(path: str | Path, *, img_res: int) -> dict:
    return {f"b{b}": export.onnx_latency(path, img_res=img_res, batch=b, repeats=30 if b == 1 else 10)
            for b in (1, 32)}


def noise_notes(lat: dict, notes: dict[str, str]) -> None:
    """Flag (or clear) a noisy timing: a p10-p90 spread above NOISY_SPREAD of the median, per batch size."""
    for key, col in (("b1", "latency_ms"), ("b32", "latency_b32_ms")):
        st = lat.get(key) or {}
        med, p10, p90 = st.get("median_ms"), st.get("p10_ms"), st.get("p90_ms")
        if all(is_number(v) for v in (med, p10, p90)) and med > 0 and (p90 - p10) / med > NOISY_SPREAD:
            notes[col] = (f"noisy timing: p10-p90 spread above {NOISY_SPREAD:.0%} of the median; "
                          "compare with --interleave (all rows timed in alternation), on a quieter machine")
        elif notes.get(col, "").startswith("noisy"):
            del notes[col]


def choose_memory(rows: list[dict]) -> None:
    """One source per memory column, the same for every row: the measured peaks when every row has a positive
    one, else the device-independent estimates (a measured peak next to an estimate would compare nothing)."""
    for phase in ("infer", "train"):
        mems = [r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb")]
        measured = [m.get(f"{phase}_measured") for m in mems]
        use_measured = bool(mems) and all(is_number(v) and v > 0 for v in measured)
        for m in mems:
            m[phase] = m.get(f"{phase}_measured" if use_measured else f"{phase}_estimate")
            m[f"{phase}_source"] = "measured" if use_measured else "estimate"
        if mems and not use_measured:
            why = ("0 MB for some" if any(is_number(v) for v in measured) else "missing for some")
            for r in rows:
                if r.get("peak_mem_mb"):
                    r["notes"][f"{phase}_mem_mb"] = (f"device-independent estimate (measured peak {why} rows; "
                                                     "see peak_mem_mb in --format json)")


def interleave_latency(rows: list[dict], *, device: str) -> None:
    """Time every row's model again, in alternation (A B C A B C ...), so machine load hits all rows alike."""
    timed = [r for r in rows if r.get("latency") and r.get("img_res")]
    for res in sorted({r["img_res"] for r in timed}):
        same = [r for r in timed if r["img_res"] == res]
        models = {r["checkpoint"]: profiler.load_any(r["checkpoint"], foreign=r.get("foreign"))[0] for r in same}
        keys = sorted({k for r in same for k in r["latency"] if re.fullmatch(r"b\d+", k)}, key=lambda k: int(k[1:]))
        for key in keys:
            stats = profiler.interleaved_latency(models, img_res=res, batch_size=int(key[1:]), device=device)
            for r in same:
                r["latency"][key] = stats[r["checkpoint"]]
        for r in same:
            r["latency"]["method"] = "interleaved"
            r["latency_ms"] = get_path(r["latency"], ("b1", "median_ms"))
            r["latency_b32_ms"] = get_path(r["latency"], ("b32", "median_ms"))
            noise_notes(r["latency"], r["notes"])
