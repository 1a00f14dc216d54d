"""Terminal output of the command line: rich consoles, progress bars and summary tables (rank 0 only under
torchrun). Part of the CLI layer: library code logs; only these helpers, cli.py and the report's renderer print."""
from __future__ import annotations

import os

from compress.io import json_text


def rank() -> int:
    """This process's rank under torchrun (0 otherwise): only rank 0 talks to the terminal."""
    return int(os.environ.get("RANK", "0"))


def make_console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, quiet=rank() != 0)


def print_json(obj) -> None:
    if rank() == 0:
        print(json_text(obj, indent=2))  # strict JSON: NaN -> null


def progress_bar():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
        console=make_console(stderr=True), transient=False,
    )


def eval_progress(bar):
    tasks: dict[str, int] = {}

    def progress(key, done, total):
        if key not in tasks:
            tasks[key] = bar.add_task(f"eval {key}", total=total)
        bar.update(tasks[key], completed=done)

    return progress


def print_rows(rows: list[list[str]], *, title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for head in rows[0]:
        table.add_column(head, justify="right")
    for row in rows[1:]:
        table.add_row(*row)
    make_console().print(table)


def train_progress(bar, label: str):
    task = {}

    def progress(done: int, total: int, info: dict | None = None):
        if "id" not in task:
            task["id"] = bar.add_task(label, total=total)
        desc = label
        if info:
            desc += "  " + "  ".join(f"{k} {v:.3g}" for k, v in info.items() if isinstance(v, (int, float)))
        bar.update(task["id"], completed=done, total=total, description=desc)

    return progress


def print_summary(title: str, result: dict) -> None:
    from rich.table import Table

    table = Table(title=title, show_header=False)
    metrics = result.get("metrics")
    for key, value in result.items():
        if key == "metrics":
            continue
        if isinstance(value, dict):
            value = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in value.items())
        elif isinstance(value, float):
            value = f"{value:.4g}"
        table.add_row(str(key), str(value))
    make_console().print(table)
    if metrics:
        from compress.eval.protocols import format_results_table

        print_rows(format_results_table(metrics), title=f"{title}: evaluation")


def print_prune_summary(run) -> None:
    """Params/MACs before and after, the settings and the notes of a compress.prune.PruneRun."""
    from rich.table import Table

    result = run.result
    table = Table(title=f"pruned -> {run.checkpoint}")
    for head in ("", "before", "after", "change"):
        table.add_column(head, justify="right")
    for key in ("params_total", "params_encoder", "params_regressor", "macs"):
        b, a = getattr(result.before, key), getattr(result.after, key)
        table.add_row(key, f"{b:,}", f"{a:,}", f"{(a - b) / b * 100:+.1f}%" if b else "–")
    make_console().print(table)
    shown = {"importance": result.importance, "ratio": result.ratio, "scope": result.scope, "global": result.global_,
             "min_keep_fraction": result.min_keep_fraction, "min_keep_layer": result.min_keep_layer}
    for key, value in shown.items():
        if value is not None:  # no ratio under a latency target
            make_console().print(f"{key}: {value}")
    for note in result.notes:
        make_console().print(f"[yellow]note:[/] {note}")
