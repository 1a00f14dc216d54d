"""Report rows as text: the terminal table (rich), Markdown, CSV and JSON, with footnotes for every gap.

The only part of the report that talks to the terminal: print_table and print_recovery draw on a rich console.
Terminal tables never cut a cell ("3D…"): columns that do not fit the console's width go into further tables,
each repeating the row labels (stage, run), packed by the tables' measured natural width.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from compress.constants import EVAL_DATASETS
from compress.io import json_text
from compress.report.columns import COLUMNS, EXTRA_CSV_COLUMNS, RATIOS, Column, get_path, is_number
from compress.report.noise import KD_CAPTION, kd_table, noise_reason, render_kd_markdown
from compress.report.recovery import CAPTION as RECOVERY_CAPTION
from compress.report.recovery import recovery_rows, recovery_table, render_recovery_markdown

DASH = "–"
SUPERSCRIPTS = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------- cells


def _num(x: float, digits: int, sign: str = "") -> str:
    """Fixed decimals, but three significant digits below 0.1 so tiny models do not print as 0.000."""
    if x != 0 and abs(x) < 0.1 and digits <= 3:
        return f"{x:{sign}.3g}"
    return f"{x:{sign},.{digits}f}"


def _fmt(value: float, col: Column) -> str:
    return _num(value * col.scale, col.digits)


def _fmt_delta(d: dict, col: Column) -> str:
    a = d["abs"] * col.scale
    s = _num(a, col.digits, "+").replace("-", "−")
    if d["pct"] is not None:
        s += f" ({d['pct']:+.1f}%)".replace("-", "−")
    return s


class _Footnotes:
    """Numbers reasons in order of first use."""

    def __init__(self):
        self.reasons: list[str] = []

    def mark(self, reason: str) -> str:
        if reason not in self.reasons:
            self.reasons.append(reason)
        return str(self.reasons.index(reason) + 1).translate(SUPERSCRIPTS)


@dataclass(frozen=True)
class _Cell:
    value: str
    delta: str = ""
    better: bool | None = None


def _column_marks(rows: list[dict], cols: list[Column], notes: _Footnotes) -> dict[str, str]:
    """A note every row of a column shares goes on the header once, not on each cell."""
    marks = {}
    for c in cols:
        reasons = {r.get("notes", {}).get(c.key) for r in rows}
        if len(reasons) == 1 and None not in reasons and any(is_number(get_path(r, c.path)) for r in rows):
            marks[c.key] = notes.mark(reasons.pop())
    return marks


def _cell(row: dict, col: Column, notes: _Footnotes, *, on_header: frozenset = frozenset()) -> _Cell:
    value = get_path(row, col.path)
    reason = None if col.key in on_header else row.get("notes", {}).get(col.key)
    mark = notes.mark(reason) if reason else ""
    if not is_number(value):
        return _Cell(DASH + mark)
    d = get_path(row.get("delta", {}), col.path)
    if not isinstance(d, dict) or "abs" not in d:
        return _Cell(_fmt(value, col) + mark)
    delta = _fmt_delta(d, col)
    if d.get("compares") == "estimates":
        delta += notes.mark("delta of the two estimates: one side has no measured peak")
    if d.get("within_noise"):
        delta += notes.mark(noise_reason(row["noise"]))
    return _Cell(_fmt(value, col) + mark, delta, d["better"])


def _ratio_table(rows: list[dict], notes: _Footnotes) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the speed-up table: measured speed-ups next to the reduction MACs predict.
    A ratio inherits the footnote of a noisy timing in its row or in the baseline's."""
    others = [r for r in rows if r["checkpoint"] != r.get("baseline") and r.get("ratio")]
    names = [n for n in RATIOS if any(n in r["ratio"] for r in others)]
    base = {r["checkpoint"]: r for r in rows if r["checkpoint"] == r.get("baseline")}

    def cell(r: dict, n: str) -> str:
        if n not in r["ratio"]:
            return DASH
        key = RATIOS[n][2]
        reasons = [x.get("notes", {}).get(key, "") for x in (r, base.get(r.get("baseline"), {}))]
        noisy = next((why for why in reasons if why.startswith("noisy")), "")
        return f"{r['ratio'][n]:.2f}x" + (notes.mark(noisy) if noisy else "")

    body = [[r["stage"], r["run"]] + [cell(r, n) for n in names] for r in others]
    return ["stage", "run"] + [RATIOS[n][1] for n in names], body


def visible_columns(rows: list[dict]) -> list[Column]:
    """Columns with a value in at least one row; the rest go into the table's footer."""
    return [c for c in COLUMNS if any(is_number(get_path(r, c.path)) for r in rows)]


def _hidden_reasons(rows: list[dict]) -> list[str]:
    shown = {c.key for c in visible_columns(rows)}
    by_reason: dict[str, list[str]] = {}
    for col in COLUMNS:
        if col.key in shown:
            continue
        reasons = {r["notes"][col.key] for r in rows if r.get("notes", {}).get(col.key)}
        if not reasons:  # e.g. the ONNX column when it was not asked for
            continue
        by_reason.setdefault("; ".join(sorted(reasons)), []).append(col.title)
    return [f"not shown ({why}): {', '.join(titles)}" for why, titles in by_reason.items()]


def _memory_source(mem: dict, phase: str) -> str:
    if mem.get(f"{phase}_source") == "measured":
        return f"measured ({mem.get('method', 'method not recorded')})"
    if phase == "train":
        return "estimated (parameters, gradients, Adam state, tensors saved for backward)"
    return "estimated (parameters, buffers, largest layer input+output)"


def _context_lines(rows: list[dict]) -> list[str]:
    """How the cost columns were measured, from the first profiled row."""
    lines = []
    prof = next((r for r in rows if r.get("latency")), None)
    if prof:
        lat = prof["latency"]
        b1 = lat.get("b1", {})
        how = "all rows timed in alternation" if lat.get("method") == "interleaved" else "each checkpoint timed alone"
        lines.append(f"latency: median of {b1.get('repeats', '?')} runs after warm-up on {lat.get('device', '?')}, "
                     f"{lat.get('threads', '?')} thread(s), input {prof.get('img_res', '?')} px ({how})")
    mem = next((r["peak_mem_mb"] for r in rows if r.get("peak_mem_mb")), None)
    if mem:
        lines.append(f"memory: inference at batch 1 {_memory_source(mem, 'infer')}; training step at batch "
                     f"{mem.get('train_batch', '?')} {_memory_source(mem, 'train')}")
    counter = next((r["macs_counter"] for r in rows if r.get("macs_counter")), None)
    if counter:
        lines.append(f"MACs: {counter}")
    lines.append("deltas to the baseline: absolute (percent); green better, red worse "
                 "(errors, cost and memory: lower is better; LSP accuracy and F1: higher is better)")
    return lines


def _footer(rows: list[dict], notes: _Footnotes) -> list[str]:
    lines = [f"{str(i + 1).translate(SUPERSCRIPTS)} {why}" for i, why in enumerate(notes.reasons)]
    lines += _hidden_reasons(rows)
    lines += _context_lines(rows)
    for base in (r for r in rows if r.get("checkpoint") and r["checkpoint"] == r.get("baseline")):
        lines.append(f"baseline: {base['checkpoint']}" + (f" ({base['model']})" if base.get("model") else ""))
    return lines


# ----------------------------------------------------------------------------------------------- terminal


def render_table(rows: list[dict], *, width: int | None = None, color: bool = True) -> str:
    """Rich table(s) as text (ANSI colours when `color`); to print on a console use print_table."""
    buf = io.StringIO()
    console = Console(file=buf, width=width or 200, force_terminal=color, color_system="standard" if color else None,
                      highlight=False)
    print_table(rows, console=console)
    return buf.getvalue()


def print_table(rows: list[dict], *, console: Console | None = None) -> None:
    """Rich table(s), a value and its delta per cell; columns are split over several tables to fit the console,
    each table repeating stage and run, so that no cell is cut."""
    console = console or Console(highlight=False)
    cols = visible_columns(rows)
    notes = _Footnotes()
    col_marks = _column_marks(rows, cols, notes)
    cells = {c.key: [_cell(r, c, notes, on_header=frozenset(col_marks)) for r in rows] for c in cols}
    row_marks = [notes.mark(r["notes"]["row"]) if r.get("notes", {}).get("row") else "" for r in rows]
    titles = {"cost": "cost", "3d": "3D pose (mm)", "lsp": "LSP segmentation"}

    def build(chunk: list[Column], title: str = "") -> Table:
        table = Table(title=title or None, show_lines=True)
        table.add_column("stage", no_wrap=True, overflow="fold")
        table.add_column("run", no_wrap=True, overflow="fold")
        for c in chunk:
            table.add_column(_header(c, col_marks), justify="right", no_wrap=True, overflow="fold")
        for i, r in enumerate(rows):
            out = []
            for c in chunk:
                cell = cells[c.key][i]
                text = Text(cell.value)
                if cell.delta:
                    style = "" if cell.better is None else ("green" if cell.better else "red")
                    text.append("\n" + cell.delta, style=style)
                out.append(text)
            table.add_row(Text(r["stage"] + row_marks[i]), Text(r["run"]), *out)  # Text: no markup in names
        return table

    chunks = _pack(cols, lambda chunk: _fits(console, build(chunk)))
    for chunk in chunks:
        groups = list(dict.fromkeys(titles[c.group] for c in chunk))
        console.print(build(chunk, "compress report" + ("" if len(chunks) == 1 else ": " + ", ".join(groups))))
    head, body = _ratio_table(rows, notes)
    if body:
        _print_text_table(console, "speed-up and size vs the baseline (baseline / row; above 1 is smaller or faster)",
                          head, body, wrap_figures=False)
    print_recovery(rows, console)
    for line in _footer(rows, notes):
        console.print(Text(line))


def print_recovery(rows: list[dict], console: Console) -> None:
    """The recovery table (compress.report.recovery) on a rich console, when a fine-tuned row follows a pruned one."""
    head, body = recovery_table(recovery_rows(rows))
    if body:
        _print_text_table(console, RECOVERY_CAPTION, head, body, wrap_figures=True)
    head, body = kd_table(rows)
    if body:
        _print_text_table(console, KD_CAPTION + " (PA-MPJPE)", head, body, wrap_figures=True)


def _print_text_table(console: Console, title: str, head: list[str], body: list[list[str]], *,
                      wrap_figures: bool) -> None:
    """A plain table: the first two columns (stage, run) left-aligned and never wrapped, the figures right-aligned
    under two-line headers. Figures that do not fit the console go into further tables (the title on the first),
    which repeat the first two columns."""

    def build(figures: list[int], title: str = "") -> Table:
        table = Table(title=title or None)
        for i in (0, 1, *figures):
            head_text = head[i] if i < 2 else _two_lines(head[i])
            table.add_column(head_text, justify="left" if i < 2 else "right", no_wrap=i < 2 or not wrap_figures,
                             overflow="fold")
        for line in body:
            table.add_row(*(Text(line[i]) for i in (0, 1, *figures)))
        return table

    chunks = _pack_units([[i] for i in range(2, len(head))], lambda figures: _fits(console, build(figures)))
    for n, figures in enumerate(chunks or [[]]):
        console.print(build(figures, title if n == 0 else ""))


def _two_lines(title: str) -> str:
    """"speed-up b32" -> "speed-up" over "b32": narrower columns, fewer tables."""
    head, _, tail = title.rpartition(" ")
    return f"{head}\n{tail}" if head else tail


def _fits(console: Console, table: Table) -> bool:
    """Whether `table` shows every cell whole (its natural width) on `console`."""
    unbounded = console.options.update_width(1_000_000)  # Measurement.get clamps to the options' width
    return Measurement.get(console, unbounded, table).maximum <= console.width


def _header(col: Column, marks: dict[str, str]) -> str:
    """Two-line headers keep the columns narrow: "3DPW MPJPE" -> "3DPW" over "MPJPE"."""
    head, _, tail = col.title.rpartition(" ")
    tail += marks.get(col.key, "")
    return f"{head}\n{tail}" if head else tail


def _pack(cols: list[Column], fits: Callable[[list[Column]], bool]) -> list[list[Column]]:
    """All columns in one table if it fits, else one table per group; a group too wide alone is split between
    datasets (MPJPE, PA and PVE of a dataset side by side), and a dataset too wide alone between its columns."""
    if fits(cols):
        return [cols]
    chunks: list[list[Column]] = []
    for group in dict.fromkeys(c.group for c in cols):
        clusters: dict[tuple, list[Column]] = {}
        for c in (c for c in cols if c.group == group):
            clusters.setdefault(c.path[:2] if c.path[0] == "metrics" else (c.key,), []).append(c)
        chunks += _pack_units(list(clusters.values()), fits)
    return chunks


def _pack_units(units: Sequence[list[T]], fits: Callable[[list[T]], bool]) -> list[list[T]]:
    """Consecutive units greedily into chunks that fit; a unit that does not fit alone is split into its items,
    and an item that does not fit alone gets a chunk of its own (its cells fold rather than being cut)."""
    chunks: list[list[T]] = []
    cur: list[T] = []
    for unit in units:
        if fits(cur + unit):
            cur += unit
            continue
        if cur:
            chunks.append(cur)
            cur = []
        if fits(unit):
            cur = list(unit)
            continue
        for item in unit:
            if cur and not fits(cur + [item]):
                chunks.append(cur)
                cur = []
            cur.append(item)
    if cur:
        chunks.append(cur)
    return chunks


# ----------------------------------------------------------------------------------------------- files


def render_markdown(rows: list[dict]) -> str:
    """One Markdown table in the study's Table V layout; deltas under the values."""
    cols = visible_columns(rows)
    notes = _Footnotes()
    col_marks = _column_marks(rows, cols, notes)
    lines = ["# compress report", "",
             "| stage | run | " + " | ".join(c.title + col_marks.get(c.key, "") for c in cols) + " |",
             "|---|---|" + "---:|" * len(cols)]
    for r in rows:
        mark = notes.mark(r["notes"]["row"]) if r.get("notes", {}).get("row") else ""
        parts = []
        for c in cols:
            cell = _cell(r, c, notes, on_header=frozenset(col_marks))
            text = cell.value
            if cell.delta:
                arrow = "" if cell.better is None else (" ▲" if cell.better else " ▼")
                text += f"<br>{cell.delta}{arrow}"
            parts.append(text)
        lines.append(f"| {r['stage']}{mark} | {r['run']} | " + " | ".join(parts) + " |")
    head, body = _ratio_table(rows, notes)
    if body:
        lines += ["", "Speed-up and size against the baseline (baseline / row; above 1 is smaller or faster; "
                  "MACs ÷ is the speed-up the MACs predict):", "",
                  "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
        lines += ["| " + " | ".join(line) + " |" for line in body]
    for section in (render_recovery_markdown(rows), render_kd_markdown(rows)):
        if section:
            lines += ["", section.rstrip("\n")]
    lines.append("")
    lines += [f"- {line}" for line in _footer(rows, notes)]
    lines.append("- ▲ better than the baseline, ▼ worse")
    return "\n".join(lines) + "\n"


def render_csv(rows: list[dict]) -> str:
    """One line per row; units in the header keys; deltas as <key>_delta and <key>_delta_pct."""
    cols = COLUMNS + EXTRA_CSV_COLUMNS
    header = ["run", "stage", "model", "checkpoint", "parent"]
    for c in cols:
        header += [c.key, f"{c.key}_delta", f"{c.key}_delta_pct"]
    header += [f"{ds.replace('-', '_')}_n" for ds in EVAL_DATASETS]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for r in rows:
        line = [r["run"], r["stage"], r.get("model") or "", r["checkpoint"], r.get("parent") or ""]
        for c in cols:
            value, d = get_path(r, c.path), get_path(r.get("delta", {}), c.path)
            d = d if isinstance(d, dict) and "abs" in d else {}
            scale = c.scale if c.csv_scale is None else c.csv_scale
            line += [_csv_num(value, scale), _csv_num(d.get("abs"), scale), _csv_num(d.get("pct"), 1.0)]
        line += [_csv_num(get_path(r, ("metrics", ds, "n")), 1.0) for ds in EVAL_DATASETS]
        writer.writerow(line)
    return buf.getvalue()


def _csv_num(v: Any, scale: float) -> str:
    if not is_number(v):
        return ""
    if isinstance(v, int) and scale == 1.0:
        return str(v)
    return f"{float(v) * scale:.10g}"  # 10 significant digits: no 1.5000000000000002 from the unit scale


def render_json(rows: list[dict]) -> str:
    """The rows as strict JSON: non-finite numbers (a NaN metric) become null."""
    return json_text(rows, default=str)


RENDERERS = {"md": render_markdown, "csv": render_csv, "json": render_json}
