"""The before/after report: one row per checkpoint of a pruning chain, deltas to the baseline, tables and plots.

    columns.py   what the columns are (keys with units, titles, where a value lives in a row)
    costs.py     params, MACs, latency, memory of a row, from the profile cache (compress.profile)
    rows.py      rows from run directories and parent chains (compress.runs), deltas and ratios
    recovery.py  how much of the pruning's loss the fine-tuning won back
    render.py    terminal (rich), Markdown, CSV and JSON
    plots.py     PNG plots (matplotlib)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

from compress.errors import UserError
from compress.io import atomic_write_text
from compress.report.columns import COLUMNS, Column
from compress.report.plots import make_plots, pareto_front, read_log, training_curve
from compress.report.recovery import recovery_rows, recovery_table, render_recovery_markdown
from compress.report.render import (RENDERERS, print_recovery, print_table, render_csv, render_json, render_markdown,
                                    render_table, visible_columns)
from compress.report.rows import checkpoint_metrics, collect_rows, compute_delta, compute_ratios, stage_labels
from compress.runs import REPORT_FILE, RUNS_DIR

__all__ = [
    "COLUMNS", "Column", "RENDERERS", "checkpoint_metrics", "collect_rows", "compute_delta", "compute_ratios",
    "make_plots", "pareto_front", "print_recovery", "print_table", "read_log", "recovery_rows", "recovery_table",
    "render_csv", "render_json", "render_markdown", "render_recovery_markdown", "render_table", "run_report",
    "stage_labels", "training_curve", "visible_columns",
]

log = logging.getLogger(__name__)


def run_report(
    runs: Iterable[str | Path] | None = None, *, baseline: str | Path | None = None, fmt: str = "table",
    plots: str | Path | None = None, retime: bool = False, runs_dir: str | Path = RUNS_DIR, device: str = "cpu",
    onnx: bool = False, interleave: bool = False, width: int | None = None, color: bool = True,
) -> tuple[list[dict], str]:
    """Collect the rows and render them: table/csv/json give the text; md writes runs_dir/report.md, gives its path."""
    if fmt not in ("table", *RENDERERS):
        raise UserError(f"unknown report format {fmt!r}: choose table, md, csv or json")
    rows = collect_rows(runs, baseline=baseline, retime=retime, device=device, runs_dir=runs_dir, onnx=onnx,
                        interleave=interleave)
    if plots:
        for path in make_plots(rows, plots):
            log.info("wrote %s", path)
    if fmt == "table":
        return rows, render_table(rows, width=width, color=color)
    text = RENDERERS[fmt](rows)
    if fmt == "md":
        return rows, str(atomic_write_text(Path(runs_dir) / REPORT_FILE, text))
    return rows, text
