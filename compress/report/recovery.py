"""How much of the accuracy a pruning step lost did its fine-tuning win back?

For every fine-tuned row of a report whose parent is a pruned row, and every 3D error metric both have:
lost = pruned - baseline and recovered = (pruned - fine-tuned) / lost, in mm and percent (errors: lower is
better). A metric the pruning hardly changed (lost below MIN_LOSS_MM or below MIN_LOSS_SHARE of the baseline's
value: the evaluation sets' noise) has no recovery share; the "all" column pools the metrics that have one:
(sum pruned - sum fine-tuned) / (sum pruned - sum baseline).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from compress.constants import EVAL_DATASETS

MIN_LOSS_MM = 1.0
MIN_LOSS_SHARE = 0.05
METRICS = (("mpjpe_mm", "MPJPE"), ("pa_mpjpe_mm", "PA"))
TITLES = {"3dpw": "3DPW", "mpi-inf-3dhp": "MPI-INF", "h36m-p1": "H36M-P1", "h36m-p2": "H36M-P2"}


@dataclass(frozen=True)
class Recovery:
    stage: str
    run: str
    cells: dict[str, tuple[float, float, float]]  # column title -> (baseline, pruned, fine-tuned) in mm

    def share(self, title: str) -> Optional[float]:
        base, pruned, tuned = self.cells[title]
        lost = pruned - base
        return (pruned - tuned) / lost if _meaningful(lost, base) else None

    def pooled(self) -> Optional[float]:
        kept = [v for t, v in self.cells.items() if self.share(t) is not None]
        if not kept:
            return None
        base, pruned, tuned = (sum(v[i] for v in kept) for i in range(3))
        return (pruned - tuned) / (pruned - base)


def _meaningful(lost: float, base: float) -> bool:
    return lost >= max(MIN_LOSS_MM, MIN_LOSS_SHARE * abs(base))


def _value(row: dict, key: str, metric: str) -> Optional[float]:
    v = (row.get("metrics") or {}).get(key, {}).get(metric)
    return float(v) if isinstance(v, (int, float)) else None


def recovery_rows(rows: list[dict]) -> list[Recovery]:
    """A Recovery per fine-tuned row whose parent row was pruned (report rows of `compress.report.collect_rows`)."""
    by_ckpt = {r.get("checkpoint"): r for r in rows if r.get("checkpoint")}
    out = []
    for row in rows:
        parent = by_ckpt.get(row.get("parent"))
        base = by_ckpt.get(row.get("baseline"))
        if "+FT" not in row["stage"] or parent is None or base is None or "+FT" in parent["stage"]:
            continue
        cells = {}
        for key in (k for k in EVAL_DATASETS if k in TITLES):
            for metric, name in METRICS:
                values = [_value(r, key, metric) for r in (base, parent, row)]
                if None not in values:
                    cells[f"{TITLES[key]} {name}"] = tuple(values)
        if cells:
            out.append(Recovery(row["stage"], row["run"], cells))
    return out


def _cell(rec: Recovery, title: str) -> str:
    base, pruned, tuned = rec.cells[title]
    share = rec.share(title)
    lost = f"{pruned - base:+.1f}".replace("-", "−")
    return f"n/a (lost {lost})" if share is None else f"{_pct(share)} of {lost}"


def _pct(share: float) -> str:
    return f"{100 * share + 0.0:.0f}%".replace("-0%", "0%").replace("-", "−")


def recovery_table(recs: list[Recovery]) -> tuple[list[str], list[list[str]]]:
    """Header and body: stage, run, one "<share>% of <lost mm>" cell per metric, then the pooled share."""
    titles = list(dict.fromkeys(t for r in recs for t in r.cells))
    body = []
    for rec in recs:
        pooled = rec.pooled()
        cells = [_cell(rec, t) if t in rec.cells else "-" for t in titles]
        body.append([rec.stage, rec.run, *cells, "n/a" if pooled is None else _pct(pooled)])
    return ["fine-tuned", "run", *titles, "all"], body


CAPTION = ("Recovery by fine-tuning: share of the error the pruning added (lost = pruned − baseline, mm) that "
           "the fine-tuning removed; 100% is back at the baseline, above 100% better than it; n/a: the pruning "
           "changed it by less than 5% (noise); \"all\" pools the others")


def render_recovery_markdown(rows: list[dict]) -> str:
    """A Markdown section, or "" when no fine-tuned row follows a pruned one."""
    head, body = recovery_table(recovery_rows(rows))
    if not body:
        return ""
    lines = [CAPTION + ":", "", "| " + " | ".join(head) + " |", "|---|---|" + "---:|" * (len(head) - 2)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body]) + "\n"

