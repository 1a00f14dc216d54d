"""PNG plots of report rows: parameters vs PA-MPJPE with the Pareto front, latency bars, training curves.

matplotlib is imported inside the functions that draw: it is heavy, and only `--plots` needs it.
"""
from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path

from compress.constants import EVAL_DATASETS
from compress.io import atomic_write_bytes
from compress.report.columns import DATASET_TITLES, get_path, is_number
from compress.runs import LOG_FILE

log = logging.getLogger(__name__)

TOTAL_KEYS = ("total", "loss", "loss_total", "total_loss", "train/loss")
STEP_KEYS = ("step", "global_step", "iter", "iteration")
NOT_LOSSES = frozenset({"epoch", "step", "global_step", "iter", "iteration", "lr", "images_per_s", "time_s", "steps",
                        "peak_train_mem_mb", "world", "rank"})


def make_plots(rows: list[dict], out_dir: str | Path) -> list[Path]:
    """PNG plots: params vs PA-MPJPE with the Pareto front, latency bars, training curves; returns the files."""
    import matplotlib  # optional and heavy: only plots need it

    matplotlib.use("Agg")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for fn in (plot_pareto, plot_latency):
        path = fn(rows, out_dir)
        if path:
            written.append(path)
    run_dirs = {Path(r["checkpoint"]).parent for r in rows if r.get("checkpoint")}
    for run_dir in sorted(run_dirs):
        path = plot_training_curve(run_dir, out_dir)
        if path:
            written.append(path)
    return written


def _save(fig, path: Path) -> Path:
    """The figure as a PNG, written atomically, and closed."""
    import matplotlib.pyplot as plt  # optional and heavy: only plots need it

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _point_labels(rows: list[dict]) -> list[str]:
    stages = [r["stage"] for r in rows]
    return [s if stages.count(s) == 1 else f"{s} ({r['run']})" for s, r in zip(stages, rows)]


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of points no other point beats on both axes (lower is better on both), by increasing x."""
    front = []
    for i, (x, y) in enumerate(points):
        dominated = any((x2 <= x and y2 <= y) and (x2 < x or y2 < y) for j, (x2, y2) in enumerate(points) if j != i)
        if not dominated:
            front.append(i)
    return sorted(front, key=lambda i: points[i])


def _has_pa_and_params(row: dict, ds: str) -> bool:
    return is_number(get_path(row, ("metrics", ds, "pa_mpjpe_mm"))) and is_number(row.get("params_total"))


def plot_pareto(rows: list[dict], out_dir: Path) -> Path | None:
    import matplotlib.pyplot as plt  # optional and heavy: only plots need it

    datasets = [ds for ds in EVAL_DATASETS if ds != "lsp" and any(_has_pa_and_params(r, ds) for r in rows)]
    if not datasets:
        log.info("no PA-MPJPE with a parameter count: params-vs-error plot skipped")
        return None
    labels = _point_labels(rows)
    big = max(r["params_total"] for r in rows if is_number(r.get("params_total"))) >= 1e5
    unit, div = ("M", 1e6) if big else ("K", 1e3)
    ncol = min(2, len(datasets))
    nrow = math.ceil(len(datasets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.2 * ncol, 4.6 * nrow), squeeze=False)
    for ax, ds in zip(axes.flat, datasets):
        idx = [i for i, r in enumerate(rows) if _has_pa_and_params(r, ds)]
        pts = [(rows[i]["params_total"] / div, rows[i]["metrics"][ds]["pa_mpjpe_mm"]) for i in idx]
        front = pareto_front(pts)
        if len(front) > 1:
            fx, fy = zip(*[pts[k] for k in front])
            ax.step(fx, fy, where="post", color="tab:orange", lw=1.5, zorder=1, label="Pareto front")
        for k, (i, (x, y)) in enumerate(zip(idx, pts)):
            on_front = k in front
            ax.scatter([x], [y], s=70 if on_front else 45, zorder=2,
                       color="tab:orange" if on_front else "white", edgecolors="tab:blue" if not on_front else "black",
                       linewidths=1.2)
            ax.annotate(labels[i], (x, y), textcoords="offset points", xytext=(6, 6), fontsize=9)
        ax.set_title(f"{DATASET_TITLES.get(ds, ds)}: parameters vs PA-MPJPE")
        ax.set_xlabel(f"parameters ({unit})")
        ax.set_ylabel("PA-MPJPE (mm, lower is better)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.15)
        ax.scatter([], [], s=70, color="tab:orange", edgecolors="black", label="on the front")
        if len(front) < len(pts):
            ax.scatter([], [], s=45, color="white", edgecolors="tab:blue", label="dominated")
        ax.legend(loc="best", fontsize=8)
    for ax in list(axes.flat)[len(datasets):]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out_dir / "params_vs_pa_mpjpe.png")


def plot_latency(rows: list[dict], out_dir: Path) -> Path | None:
    """Horizontal bars of the median latency with p10-p90 whiskers, the speed-up over each row's baseline, and a
    diamond where the latency would be if time scaled with MACs (baseline latency x MACs ratio)."""
    import matplotlib.pyplot as plt  # optional and heavy: only plots need it

    idx = [i for i, r in enumerate(rows) if is_number(r.get("latency_ms"))]
    if not idx:
        log.info("no latency in any row: latency plot skipped")
        return None
    labels = _point_labels(rows)
    bases = {r["checkpoint"]: r for r in rows if r["checkpoint"] == r.get("baseline")}
    panels = [("b1", "batch 1")] + ([("b32", "batch 32")] if any(get_path(rows[i], ("latency", "b32")) for i in idx)
                                    else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 0.55 * len(idx) + 2.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        bars = []  # (label, median, p10, p90, speed-up or None, MACs-predicted latency or None)
        for i in idx:
            r = rows[i]
            stats = get_path(r, ("latency", key)) or ({"median_ms": r["latency_ms"]} if key == "b1" else None)
            if not stats:
                continue
            m = stats["median_ms"]
            base = bases.get(r.get("baseline")) or {}
            ref = get_path(base, ("latency", key, "median_ms"))
            macs, macs0 = r.get("macs"), base.get("macs")
            expected = ref * macs / macs0 if is_number(ref) and is_number(macs) and is_number(macs0) and macs0 \
                else None
            bars.append((labels[i], m, stats.get("p10_ms", m), stats.get("p90_ms", m),
                         ref / m if is_number(ref) and m and base is not r else None,
                         expected if base is not r else None))
        y = list(range(len(bars)))[::-1]
        med = [b[1] for b in bars]
        ax.barh(y, med, xerr=[[b[1] - b[2] for b in bars], [b[3] - b[1] for b in bars]], color="tab:blue",
                alpha=0.8, capsize=3, label="median (p10-p90)")
        exp = [(yy, b[5]) for yy, b in zip(y, bars) if b[5] is not None]
        if exp:
            ax.scatter([e[1] for e in exp], [e[0] for e in exp], marker="D", s=28, color="tab:orange",
                       edgecolors="black", zorder=3, label="if time scaled with MACs")
        for yy, b in zip(y, bars):
            text = (f"{b[1]:,.0f}" if b[1] >= 100 else f"{b[1]:.3g}") + " ms" + (f"  {b[4]:.2f}x" if b[4] else "")
            ax.text(max(b[3], b[5] or 0), yy, "  " + text, va="center", fontsize=8)
        ax.set_yticks(y, [b[0] for b in bars])
        ax.set_xlabel("latency (ms); text: median and speed-up over the baseline")
        lat = next((rows[i]["latency"] for i in idx if rows[i].get("latency")), {})
        how = "rows timed in alternation" if lat.get("method") == "interleaved" else "each timed alone"
        ax.set_title(f"{title} on {lat.get('device', 'cpu')}, {lat.get('threads', '?')} thread(s), {how}", fontsize=10)
        ax.set_xlim(0, max(max(b[3], b[5] or 0) for b in bars) * 1.45)
        ax.grid(axis="x", alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir / "latency.png")


def read_log(path: str | Path) -> list[dict]:
    """Records of a log.jsonl; unreadable lines (e.g. a half-written last line) are skipped."""
    out = []
    for line in Path(path).read_text().splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def training_curve(records: list[dict]) -> dict[str, tuple[list[float], list[float]]]:
    """{"loss": (steps, totals), term: (steps, values), ...} from the per-step records of a log.jsonl.

    The total is `total` (our training loop) or `loss`; every other numeric field except bookkeeping (epoch, lr,
    images/s, ...) is a loss term. Steps logged twice (an epoch redone after a resume) keep the last value.
    """
    # per-step records; a run shorter than log_every has only per-epoch means
    steps_only = ([r for r in records if r.get("kind") == "step"] or [r for r in records if r.get("kind") == "epoch"]
                  or records)
    by_name: dict[str, dict[float, float]] = {}
    for n, rec in enumerate(steps_only):
        step = next((rec[k] for k in STEP_KEYS if is_number(rec.get(k))), n)
        flat = dict(rec)
        for key in ("losses", "loss_terms"):
            if isinstance(rec.get(key), dict):
                flat.update(rec[key])
        for key, value in flat.items():
            if key in NOT_LOSSES or not is_number(value):
                continue
            by_name.setdefault("loss" if key in TOTAL_KEYS else key, {})[step] = value
    return {name: (sorted(v), [v[k] for k in sorted(v)]) for name, v in by_name.items()}


def _epoch_starts(records: list[dict], *, most: int = 30) -> list[tuple[float, int]]:
    """(first step, epoch) where the step records' epoch changes; none when there would be too many to read."""
    out, last = [], None
    for rec in records:
        if rec.get("kind", "step") == "step" and is_number(rec.get("epoch")) and is_number(rec.get("step")):
            if last is not None and rec["epoch"] != last:
                out.append((rec["step"], int(rec["epoch"])))
            last = rec["epoch"]
    return out if len(out) <= most else []


def plot_training_curve(run_dir: Path, out_dir: Path) -> Path | None:
    import matplotlib.pyplot as plt  # optional and heavy: only plots need it

    log_file = Path(run_dir) / LOG_FILE
    if not log_file.is_file():
        return None
    records = read_log(log_file)
    series = training_curve(records)
    if "loss" not in series:
        log.info("%s has no loss records: training-curve plot skipped", log_file)
        return None
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    steps, values = series["loss"]
    marker = "o" if len(steps) <= 20 else None  # a handful of steps: show the points, a line alone may vanish
    ax.plot(steps, values, color="black", lw=1.8, marker=marker, label="total (weighted)")
    for name, (s, v) in sorted(series.items()):
        if name != "loss" and any(v):  # terms switched off by their weight stay flat at 0: not worth a line
            ax.plot(s, v, lw=0.9, alpha=0.7, marker=marker, ms=4, label=name.replace("loss_", "").replace("loss/", ""))
    for step, epoch in _epoch_starts(records):
        ax.axvline(step, color="grey", lw=0.6, ls=":", zorder=0)
        ax.annotate(f"ep {epoch}", (step, 1.0), xycoords=("data", "axes fraction"), xytext=(2, -10),
                    textcoords="offset points", fontsize=7, color="grey")
    positive = [v for _, vs in series.values() for v in vs if v > 0]
    if positive and max(positive) / min(positive) > 50:
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    phases = sorted({str(r.get("phase")) for r in records if r.get("phase")})
    means = not any(r.get("kind") == "step" for r in records) and any(r.get("kind") == "epoch" for r in records)
    ax.set_title(f"training curve: {Path(run_dir).name}" + (f" ({', '.join(phases)})" if phases else "")
                 + (", per-epoch means" if means else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="loss", title_fontsize=8)
    fig.tight_layout()
    return _save(fig, out_dir / f"curve_{Path(run_dir).name}.png")
