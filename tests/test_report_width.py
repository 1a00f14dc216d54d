"""`compress report` in a narrow terminal: the columns are split over several tables (each repeating stage and run)
so that every figure stays whole; no cell is cut to "3D…" or "n…", no line is wider than the terminal."""
from __future__ import annotations

import re
from collections import Counter

import pytest

from compress import report
from test_report import no_retiming, save_chain

# a pruned model that was evaluated before fine-tuning: the recovery table appears too
P1_METRICS = {
    "3dpw": {"n": 40, "mpjpe_mm": 130.0, "pa_mpjpe_mm": 75.0, "pve_mm": 150.0},
    "mpi-inf-3dhp": {"n": 30, "mpjpe_mm": 140.0, "pa_mpjpe_mm": 95.0},
    "h36m-p1": {"n": 20, "mpjpe_mm": 150.0, "pa_mpjpe_mm": 85.0},
    "h36m-p2": {"n": 20, "mpjpe_mm": 160.0, "pa_mpjpe_mm": 90.0},
    "lsp": {"n": 10, "fb_acc": 70.0, "fb_f1": 0.70, "parts_acc": 75.0, "parts_f1": 0.40},
}
# a decimal figure as the report writes it: 1,234.5  −0.0002  +10.0%  1.25x
FIGURE = re.compile(r"[+−-]?\d[\d,]*\.\d+%?x?")


@pytest.fixture
def rows(tmp_path, monkeypatch):
    """baseline -> P1 (evaluated) -> P1+FT(20) -> P2 -> P2+FT(8), in three run directories."""
    no_retiming(monkeypatch)
    chain = save_chain(tmp_path / "runs", names=("mbv2_base", "mbv2_p1", "mbv2_p2"),
                       params=(3_131_853, 1_800_000, 1_200_000), p1_metrics=P1_METRICS)
    return report.collect_rows(runs_dir=chain["dir"])


def _figures(text: str) -> Counter:
    return Counter(FIGURE.findall(text))


@pytest.mark.parametrize("width", [80, 200])
def test_every_line_fits_and_no_cell_is_cut(rows, width):
    text = report.render_table(rows, width=width, color=False)
    long = [line for line in text.splitlines() if len(line) > width]
    assert not long, "\n".join(long)
    assert "…" not in text, text


def test_every_figure_of_the_wide_report_is_in_the_narrow_one(rows):
    wide = report.render_table(rows, width=400, color=False)
    narrow = report.render_table(rows, width=80, color=False)
    assert "…" not in wide
    missing = _figures(wide) - _figures(narrow)
    assert not missing, f"figures lost at width 80: {dict(missing)}\n{narrow}"
    for figure in ("3.132", "100.0", "130.0", "0.800", "0.550", "88.00", "−10.0 (−10.0%)", "+0.05 (+10.0%)",
                   "1.25x", "1.74x", "2.00x"):
        assert figure in narrow, figure


def test_every_value_of_the_rows_is_shown_at_width_80(rows):
    """Straight from the rows: each metric and cost figure, in the column's unit and digits."""
    narrow = report.render_table(rows, width=80, color=False)
    shown = _figures(narrow)
    for col in report.visible_columns(rows):
        for row in rows:
            value = report.columns.get_path(row, col.path)
            if report.columns.is_number(value):
                x = value * col.scale
                figure = f"{x:.3g}" if x != 0 and abs(x) < 0.1 and col.digits <= 3 else f"{x:,.{col.digits}f}"
                assert shown[figure] > 0, (col.key, row["stage"], figure)


def test_split_tables_repeat_the_row_labels(rows):
    narrow = report.render_table(rows, width=80, color=False)
    titles = [line.strip() for line in narrow.splitlines() if line.strip().startswith("compress report")]
    assert len(titles) > 1
    # every table lists every row by stage and run
    for label in ("baseline", "P1+FT(20)", "P2+FT(8)", "mbv2_p1"):
        assert narrow.count(label) >= len(titles), label
    assert "LSP segmentation" in narrow and "recovery" in narrow.lower()
