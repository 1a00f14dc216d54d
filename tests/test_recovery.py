"""The recovery table: shares of the pruning's loss won back, on hand-made report rows with known values."""
import pytest
from rich.console import Console

from compress.report import print_recovery
from compress.report.recovery import recovery_rows, recovery_table, render_recovery_markdown


def _row(stage, ckpt, parent, mpjpe, pa, run="p1"):
    return {"stage": stage, "run": run, "checkpoint": ckpt, "parent": parent, "baseline": "base.pt",
            "metrics": {"3dpw": {"n": 10, "mpjpe_mm": mpjpe, "pa_mpjpe_mm": pa}, "lsp": {"fb_acc": 90.0}}}


ROWS = [
    _row("baseline", "base.pt", None, 100.0, 60.0, run="base"),
    _row("P1", "p1.pt", "base.pt", 140.0, 59.8),
    _row("P1+FT(4)+KD", "ft_kd.pt", "p1.pt", 110.0, 61.0),
    _row("P1+FT(4)", "ft.pt", "p1.pt", 130.0, 58.0, run="p1_nokd"),
    _row("P1+FT(4)+FT(2)", "ft2.pt", "ft_kd.pt", 105.0, 60.0),  # parent not a pruned row: no recovery
]


def test_a_loss_within_the_noise_has_no_share():
    rows = [_row("baseline", "base.pt", None, 100.0, 60.0, run="base"), _row("P1", "p1.pt", "base.pt", 104.0, 62.9),
            _row("P1+FT(4)", "ft.pt", "p1.pt", 101.0, 61.0)]
    (rec,) = recovery_rows(rows)
    assert rec.share("3DPW MPJPE") is None  # 4 mm of 100: under 5%
    assert rec.share("3DPW PA") is None  # 2.9 mm of 60: under 5%
    assert rec.pooled() is None
    rows[1]["metrics"]["3dpw"]["mpjpe_mm"] = 106.0
    assert recovery_rows(rows)[0].share("3DPW MPJPE") == pytest.approx(5 / 6)


def test_shares_are_the_lost_error_won_back():
    recs = recovery_rows(ROWS)
    assert [(r.stage, r.run) for r in recs] == [("P1+FT(4)+KD", "p1"), ("P1+FT(4)", "p1_nokd")]
    kd, plain = recs
    assert kd.share("3DPW MPJPE") == pytest.approx(30 / 40)
    assert plain.share("3DPW MPJPE") == pytest.approx(10 / 40)
    assert kd.share("3DPW PA") is None  # pruning made PA 0.2 mm better: nothing to recover
    assert kd.pooled() == pytest.approx(30 / 40)  # pooled over the metrics with a share (here MPJPE only)
    head, body = recovery_table(recs)
    assert head == ["fine-tuned", "run", "3DPW MPJPE", "3DPW PA", "all"]
    assert body[0] == ["P1+FT(4)+KD", "p1", "75% of +40.0", "n/a (lost −0.2)", "75%"]
    assert body[1][2] == "25% of +40.0"


def test_rendered_only_when_a_pruned_row_was_fine_tuned():
    assert "| P1+FT(4) | p1_nokd | 25% of +40.0 |" in render_recovery_markdown(ROWS)
    assert render_recovery_markdown(ROWS[:2]) == ""
    console = Console(record=True, width=200)
    print_recovery(ROWS, console)
    assert "75% of +40.0" in console.export_text()
