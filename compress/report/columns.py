"""What a report shows: its numeric columns (where each value lives in a row, its CSV key with the unit, its title),
the ratio columns, and the two helpers every part of the report reads rows with."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from compress.constants import EVAL_DATASETS

DATASET_TITLES = {"3dpw": "3DPW", "mpi-inf-3dhp": "MPI-INF-3DHP", "h36m-p1": "H36M-P1", "h36m-p2": "H36M-P2",
                  "lsp": "LSP"}


@dataclass(frozen=True)
class Column:
    """One numeric column: where it lives in a row, its CSV key (with unit), how to show it."""

    key: str  # CSV header, units included (macs_g, 3dpw_mpjpe_mm, ...)
    title: str  # table header
    path: tuple[str, ...]  # location in the row dict (and in row["delta"])
    group: str  # cost | 3d | lsp
    scale: float = 1.0  # row value * scale = table value
    digits: int = 1
    csv_scale: float | None = None  # row value * csv_scale = CSV value (default: scale)


def _metric_columns() -> list[Column]:
    cols = []
    for ds in EVAL_DATASETS:
        slug = ds.replace("-", "_")
        title = DATASET_TITLES.get(ds, ds)
        if ds == "lsp":
            cols += [
                Column("lsp_fb_acc_pct", "LSP acc %", ("metrics", ds, "fb_acc"), "lsp", digits=2),
                Column("lsp_fb_f1", "LSP F1", ("metrics", ds, "fb_f1"), "lsp", digits=3),
                Column("lsp_parts_acc_pct", "LSP parts acc %", ("metrics", ds, "parts_acc"), "lsp", digits=2),
                Column("lsp_parts_f1", "LSP parts F1", ("metrics", ds, "parts_f1"), "lsp", digits=3),
            ]
            continue
        cols += [
            Column(f"{slug}_mpjpe_mm", f"{title} MPJPE", ("metrics", ds, "mpjpe_mm"), "3d"),
            Column(f"{slug}_pa_mpjpe_mm", f"{title} PA", ("metrics", ds, "pa_mpjpe_mm"), "3d"),
            Column(f"{slug}_pve_mm", f"{title} PVE", ("metrics", ds, "pve_mm"), "3d"),
        ]
    return cols


COST_COLUMNS = [
    Column("params", "params (M)", ("params_total",), "cost", scale=1e-6, digits=3, csv_scale=1.0),
    Column("macs_g", "MACs (G)", ("macs",), "cost", scale=1e-9, digits=3),
    Column("latency_ms", "CPU ms b1", ("latency_ms",), "cost", digits=2),
    Column("latency_b32_ms", "CPU ms b32", ("latency_b32_ms",), "cost", digits=1),
    Column("gpu_latency_ms", "GPU ms b1", ("gpu_latency_ms",), "cost", digits=2),
    Column("onnx_latency_ms", "ORT ms b1", ("onnx_latency_ms",), "cost", digits=2),
    Column("onnx_latency_b32_ms", "ORT ms b32", ("onnx_latency_b32_ms",), "cost", digits=1),
    Column("onnx_cuda_latency_ms", "ORT CUDA ms b1", ("onnx_cuda_latency_ms",), "cost", digits=2),
    Column("infer_mem_mb", "mem infer MB", ("peak_mem_mb", "infer"), "cost", digits=1),
    Column("train_mem_mb", "mem train MB", ("peak_mem_mb", "train"), "cost", digits=1),
]
COLUMNS = COST_COLUMNS + _metric_columns()
# CSV-only extras: the split of parameters and both memory figures.
EXTRA_CSV_COLUMNS = [
    Column("params_encoder", "", ("params_encoder",), "cost"),
    Column("params_regressor", "", ("params_regressor",), "cost"),
    Column("infer_mem_measured_mb", "", ("peak_mem_mb", "infer_measured"), "cost"),
    Column("infer_mem_estimate_mb", "", ("peak_mem_mb", "infer_estimate"), "cost"),
    Column("train_mem_measured_mb", "", ("peak_mem_mb", "train_measured"), "cost"),
    Column("train_mem_estimate_mb", "", ("peak_mem_mb", "train_estimate"), "cost"),
]

RATIOS = {  # name -> (path in the row, title, column key): baseline / row, so above 1 means smaller or faster
    "params": (("params_total",), "params ÷", "params"),
    "macs": (("macs",), "MACs ÷", "macs_g"),
    "latency_b1": (("latency_ms",), "speed-up b1", "latency_ms"),
    "latency_b32": (("latency_b32_ms",), "speed-up b32", "latency_b32_ms"),
    "onnx_latency_b1": (("onnx_latency_ms",), "ORT speed-up b1", "onnx_latency_ms"),
    "onnx_latency_b32": (("onnx_latency_b32_ms",), "ORT speed-up b32", "onnx_latency_b32_ms"),
    "onnx_cuda_latency_b1": (("onnx_cuda_latency_ms",), "ORT CUDA speed-up b1", "onnx_cuda_latency_ms"),
    "infer_mem": (("peak_mem_mb", "infer"), "infer mem ÷", "infer_mem_mb"),
    "train_mem": (("peak_mem_mb", "train"), "train mem ÷", "train_mem_mb"),
}


def get_path(d: Any, path: Iterable[str]) -> Any:
    """d[path[0]][path[1]]...; None where a level is missing or not a dict."""
    for key in path:
        if not isinstance(d, dict):
            return None
        d = d.get(key)
    return d


def is_number(v: Any) -> bool:
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
