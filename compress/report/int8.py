"""INT8 rows: a run's `quantized.onnx` (compress quantize) shown right after the checkpoint it was made from, as
stage `<stage>+INT8`. Its parameters and MACs are the source model's (the same layers, 8-bit weights); it runs in
ONNX Runtime only, so its latency is the ORT columns (measured like every other row's, cached beside the file) and
its metrics are those `compress quantize` evaluated."""
from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from compress.report.columns import COLUMNS, get_path, is_number
from compress.report.costs import onnx_cuda_latency, onnx_file_latency
from compress.quantize import INT8_FILE, SUMMARY_FILE

log = logging.getLogger(__name__)

COPIED = ("run", "model", "params_total", "params_encoder", "params_regressor", "macs", "macs_counter", "img_res")


def with_int8_rows(rows: list[dict], *, retime: bool, onnx: bool) -> list[dict]:
    """`rows` with an INT8 row after each row whose run directory holds a quantized model of that checkpoint."""
    out: list[dict] = []
    for row in rows:
        out.append(row)
        summary = _summary_for(row.get("checkpoint"))
        if summary is not None:
            out.append(int8_row(row, summary, retime=retime, onnx=onnx))
    return out


def _summary_for(checkpoint: str | None) -> dict | None:
    if not checkpoint:
        return None
    file = Path(checkpoint).parent / SUMMARY_FILE
    try:
        summary = json.loads(file.read_text()) if file.is_file() else None
    except ValueError:
        log.warning("ignoring unreadable %s", file)
        return None
    if not isinstance(summary, dict) or Path(str(summary.get("checkpoint"))).resolve() != Path(checkpoint).resolve():
        return None
    return summary if Path(str(summary.get("int8", ""))).is_file() else None


def int8_row(source: dict, summary: dict, *, retime: bool, onnx: bool) -> dict[str, Any]:
    """The row of `summary["int8"]`, the INT8 model of the checkpoint of `source`."""
    path = Path(summary["int8"])
    row: dict[str, Any] = {k: source.get(k) for k in COPIED}
    row.update(stage=f"{source['stage']}+INT8", checkpoint=str(path), parent=source.get("checkpoint"),
               created=None, foreign=None, latency=None, latency_ms=None, latency_b32_ms=None, gpu_latency_ms=None,
               onnx_latency_ms=None, onnx_latency_b32_ms=None, onnx_cuda_latency_ms=None, peak_mem_mb=None,
               size_mb=get_path(summary, ("size_mb", "int8")), quantization={k: summary.get(k) for k in (
                   "format", "weights", "activations", "method", "calibration_images", "kept_fp32")})
    notes = {key: "INT8 runs in ONNX Runtime only" for key in
             ("latency_ms", "latency_b32_ms", "gpu_latency_ms", "infer_mem_mb", "train_mem_mb")}
    if onnx:
        stats, why = onnx_file_latency(path, img_res=int(summary["img_res"]), retime=retime)
        row["onnx_latency_ms"] = get_path(stats, ("b1", "median_ms"))
        row["onnx_latency_b32_ms"] = get_path(stats, ("b32", "median_ms"))
        if why:
            notes["onnx_latency_ms"] = notes["onnx_latency_b32_ms"] = why
        img_res = int(summary["img_res"])
        row["onnx_cuda_latency_ms"], why = onnx_cuda_latency(
            path, lambda: contextlib.nullcontext((path, img_res)), retime=retime)
        if why:
            notes["onnx_cuda_latency_ms"] = why
    row["metrics"] = dict(get_path(summary, ("metrics", "int8")) or {})
    row["metrics_source"] = {ds: str(path.with_name(SUMMARY_FILE)) for ds in row["metrics"]}
    for col in COLUMNS:
        if col.path[0] == "metrics" and not is_number(get_path(row, col.path)):
            notes.setdefault(col.key, "not evaluated (compress quantize --datasets ...)")
    row["notes"] = notes
    return row


__all__ = ["INT8_FILE", "int8_row", "with_int8_rows"]
