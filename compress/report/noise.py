"""Deltas within the benchmark's noise: the baseline's card (compress.shipped) gives the spread of every metric
over fine-tuning seeds; a metric delta smaller than NOISE_K standard deviations is marked, not coloured."""
from __future__ import annotations

NOISE_K = 2.0  # a delta counts only beyond two standard deviations of the seed-to-seed spread


def mark_noise(delta: dict, band: dict | None) -> None:
    """Set `within_noise` (and `better` None) on every metric delta below NOISE_K sd of the band."""
    sd = (band or {}).get("sd") or {}
    for ds, keys in (delta.get("metrics") or {}).items():
        for key, d in keys.items():
            spread = (sd.get(ds) or {}).get(key)
            if isinstance(d, dict) and "abs" in d and spread is not None and abs(d["abs"]) < NOISE_K * spread:
                d["within_noise"] = True
                d["better"] = None


def noise_reason(band: dict) -> str:
    return (f"within the noise: below {NOISE_K:g} sd of the metric over {band.get('n', '?')} fine-tuning seeds "
            f"({band.get('stage', '?')}, from the baseline's card)")


# ----------------------------------------------------------------------------------------------- KD vs none

KD_CAPTION = ("Distillation against none at the same N: fine-tuned with the teacher minus without, in mm "
              "(negative: the teacher helped); ≈: within the noise band (below 2 sd over seeds)")
SETS_3D = (("3dpw", "3DPW"), ("mpi-inf-3dhp", "MPI-INF"), ("h36m-p1", "H36M-P1"), ("h36m-p2", "H36M-P2"))


def kd_pairs(rows: list[dict]) -> list[tuple[dict, dict]]:
    """(with teacher, without) row pairs: the same stage at the same N, fine-tuned from the same pruned model."""
    plain = {(r.get("parent"), r["stage"]): r for r in rows}
    return [(r, plain[(r.get("parent"), r["stage"][:-3])]) for r in rows
            if r["stage"].endswith("+KD") and (r.get("parent"), r["stage"][:-3]) in plain]


def kd_table(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """Header and body: stage, then PA-MPJPE difference (KD - none) per 3D set and their mean."""
    head, body = ["stage", *(t for _, t in SETS_3D), "mean"], []
    for kd, none in kd_pairs(rows):
        sd = ((kd.get("noise") or {}).get("sd") or {})
        cells, diffs = [], []
        for key, _ in SETS_3D:
            a, b = (((r.get("metrics") or {}).get(key) or {}).get("pa_mpjpe_mm") for r in (kd, none))
            if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
                cells.append("-")
                continue
            diffs.append(a - b)
            spread = (sd.get(key) or {}).get("pa_mpjpe_mm")
            mark = " ≈" if spread is not None and abs(a - b) < NOISE_K * spread else ""
            cells.append(_signed(a - b) + mark)
        mean = _signed(sum(diffs) / len(diffs)) if diffs else "-"
        body.append([f"{kd['stage']} vs {none['stage']}", *cells, mean])
    return head, body


def _signed(x: float) -> str:
    text = f"{x:+.1f}"
    return "0.0" if text in ("+0.0", "-0.0") else text.replace("-", "−")


def render_kd_markdown(rows: list[dict]) -> str:
    head, body = kd_table(rows)
    if not body:
        return ""
    lines = [f"{KD_CAPTION} (PA-MPJPE):", "", "| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    return "\n".join(lines + ["| " + " | ".join(line) + " |" for line in body]) + "\n"
