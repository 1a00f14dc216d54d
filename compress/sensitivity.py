"""Per-unit pruning sensitivity: prune one layer group at a time, evaluate on a fixed subset, rank, suggest ratios.

A *unit* is a stage of the encoder (a top-level block such as MobileNetV2's `encoder.features.N`, ResNet's `layerN`,
DenseNet's `denseblockN`) or a hidden layer of the regressor (`fc1`, `fc2`). For every unit and ratio the unit is
pruned alone on a fresh copy of the model, every other unit in `prune.ignore`, so only output channels whose
producers all sit inside the unit are removed. Channels shared with a neighbour (a residual stream running through
several units) stay; a unit whose channels are all shared removes nothing on its own and is reported as `coupled`.

The metric is PA-MPJPE (and MPJPE) averaged over the chosen 3D datasets, from the one `evaluate()` on the first
`subset` samples of each. Units are ranked by the accuracy lost per percent of parameters (or MACs) removed: the
least-squares slope through the origin of delta-PA-MPJPE against the removed share over the tested ratios (a
negative slope counts as zero loss; ties go to the unit that removes more).
`suggest_ratios` turns that ranking into `prune.ratio_by_module` for a recipe.
"""
from __future__ import annotations

import contextlib
import logging
import math
from pathlib import Path
from typing import Callable, Iterable, Mapping, Optional, Sequence

import torch
import yaml
from torch import nn

from compress.checkpoint import load_checkpoint, model_name
from compress.constants import EVAL_DATASETS
from compress.devices import resolve_device
from compress.errors import UserError
from compress.eval.protocols import evaluate
from compress.io import atomic_write_json
from compress.prune import IMPORTANCES, PruneResult, cost, prune_model
from compress.prune.cost import is_depthwise
from compress.recipe import PruneSpec
from compress.runs import resolve_checkpoint

log = logging.getLogger(__name__)

Progress = Callable[[int, int, Optional[dict]], None]  # (done, total, info), as train's progress callback
RANK_BY = ("params", "macs")
UNIT_SHARE = 0.5  # a module holding more than this share of the encoder's layers is split into its children
NOISE_MM_PER_PCT = 0.01  # slopes (mm of PA-MPJPE per 1% removed) below this are treated as equal by suggest_ratios
JSON_NAME = "sensitivity.json"
QUIET_LOGGERS = ("compress.prune", "compress.eval.protocols")
PLOT_NAME = "sensitivity.png"


# ----------------------------------------------------------------------------------------------- units


def _layers(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def prunable_units(model: nn.Module) -> list[str]:
    """Module names of the units sensitivity analysis prunes one at a time, in forward order.

    Encoder: its top-level modules are split into their children while one holds more than half of the encoder's
    Conv/Linear layers, so wrappers (`encoder`, `encoder.features`) give way to stages. Regressor: every
    non-head module with a Linear layer (fc1, fc2). Heads and parameter-free modules are never units.
    """
    heads = set(getattr(model, "head_names", []))
    regressor = set(getattr(model, "regressor_names", []))
    encoder = [(n, m) for n, m in model.named_children() if n not in regressor and n not in heads]
    total = sum(len(_layers(m)) for _, m in encoder)
    units: list[str] = []

    def walk(name: str, module: nn.Module) -> None:
        count = len(_layers(module))
        if count == 0 or name in heads:
            return
        children = list(module.named_children())
        if count > UNIT_SHARE * total and children:
            for child, sub in children:
                walk(f"{name}.{child}", sub)
        else:
            units.append(name)

    for name, module in encoder:
        walk(name, module)
    for name in getattr(model, "regressor_names", []):
        if name not in heads and hasattr(model, name) and _layers(getattr(model, name)):
            units.append(name)
    return units


# ----------------------------------------------------------------------------------------------- run


def _check_ratios(ratios: Iterable[float]) -> list[float]:
    """Sorted unique ratios in (0, 1); zeros are dropped (a zero ratio is the baseline), the rest refused."""
    out = []
    for r in ratios:
        r = float(r)
        if r == 0:
            log.info("sensitivity: ratio 0 dropped (the unpruned baseline is always evaluated)")
            continue
        if not 0 < r < 1 or not math.isfinite(r):
            raise UserError(f"sensitivity: ratio {r:g} is outside (0, 1); give channel ratios such as 0.1,0.2,0.4")
        out.append(round(r, 6))
    out = sorted(set(out))
    if not out:
        raise UserError("sensitivity: no ratio above 0 to test; give channel ratios such as 0.1,0.2,0.4")
    return out


def _check_datasets(datasets: Sequence[str]) -> list[str]:
    keys = list(dict.fromkeys(datasets))
    valid = [k for k in EVAL_DATASETS if k != "lsp"]
    bad = [k for k in keys if k not in valid]
    if bad or not keys:
        raise UserError(f"sensitivity: datasets must be 3D benchmarks with PA-MPJPE ({', '.join(valid)}), "
                        f"got {', '.join(bad) or 'none'}")
    return keys


def _mean_metric(results: Mapping[str, Mapping[str, float]], key: str) -> float:
    values = [float(r[key]) for r in results.values() if key in r]
    return sum(values) / len(values) if values else float("nan")


def _unit_channels(unit: str, widths: Mapping[str, Mapping[str, list[int]]], depthwise: set[str]) -> tuple[int, int]:
    """(output channels the unit removed, output channels of the layers it pruned) from a prune summary.

    Depthwise convs are not counted: their channels are those of the layer that feeds them.
    """
    removed = total = 0
    for name, w in widths.items():
        if name in depthwise or (name != unit and not name.startswith(unit + ".")):
            continue
        before, after = w["before"][1], w["after"][1]
        if before != after:
            removed += before - after
            total += before
    return removed, total


def _prune_unit(model: nn.Module, unit: str, others: list[str], ratio: float, importance: str,
                example: torch.Tensor) -> tuple[nn.Module, PruneResult]:
    # the per-layer cap (default 0.8) would silently turn a larger tested ratio into 0.8
    cap = max(PruneSpec().max_layer_ratio, ratio)
    spec = PruneSpec(importance=importance, ratio=ratio, ignore=others, scope="all", max_layer_ratio=cap)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # `random` importance is reproducible
        return prune_model(model, spec, example)


def run_sensitivity(
    checkpoint: str | Path,
    *,
    root: str | Path,
    ratios: Sequence[float] = (0.1, 0.2, 0.4),
    subset: int = 32,
    datasets: Sequence[str] = ("3dpw", "h36m-p2"),
    importance: str = "l2",
    img_res: Optional[int] = None,
    out_dir: str | Path | None = None,
    progress: Optional[Progress] = None,
    units: Optional[Sequence[str]] = None,
    rank_by: str = "params",
    budget_ratio: Optional[float] = None,
    batch_size: int = 32,
    name: Optional[str] = None,
    device: str | torch.device | None = None,
) -> dict:
    """Prune each unit alone at each ratio, evaluate on the first `subset` samples, rank; write JSON and PNG.
    The model runs on `device` (default: CUDA when available).

    checkpoint: our checkpoint, a run directory, or a SPIN/bare file with `name=`. out_dir defaults to
    `<checkpoint folder>/sensitivity`. units: module names (default: `prunable_units`). budget_ratio: also store
    `suggest_ratios(results, budget_ratio=...)` under "suggested". progress(done, total, info) after every
    evaluation. Ratios of 0 are dropped (the baseline is always evaluated). Returns what sensitivity.json holds.
    """
    ratios = _check_ratios(ratios)
    datasets = _check_datasets(datasets)
    _check_options(importance=importance, rank_by=rank_by, subset=subset, budget_ratio=budget_ratio, ratios=ratios)
    path = resolve_checkpoint(checkpoint)
    model, _ = load_checkpoint(path, name=name, **({"img_res": int(img_res)} if img_res else {}))
    model = model.to(resolve_device(device))
    res = int(getattr(model, "img_res", img_res or 224))
    all_units = prunable_units(model)
    chosen = list(dict.fromkeys(units)) if units else all_units
    unknown = [u for u in chosen if u not in all_units]
    if unknown:
        raise UserError(f"sensitivity: not a unit of this model: {', '.join(unknown)}; valid: {', '.join(all_units)}")
    out = Path(out_dir) if out_dir else path.parent / "sensitivity"
    out.mkdir(parents=True, exist_ok=True)  # before the sweep: an unwritable folder fails now, not in an hour
    depthwise = {n for n, m in model.named_modules() if is_depthwise(m)}
    example = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))
    example = example.to(next(model.parameters()).device)
    total = 1 + len(chosen) * len(ratios)

    def run_eval(m: nn.Module) -> dict:
        with _quiet(QUIET_LOGGERS):
            return evaluate(m, root, datasets=datasets, img_res=res, subset=subset, batch_size=batch_size,
                            strict=True)

    base_metrics = run_eval(model)
    base = {"pa_mpjpe_mm": _mean_metric(base_metrics, "pa_mpjpe_mm"),
            "mpjpe_mm": _mean_metric(base_metrics, "mpjpe_mm")}
    if progress:
        progress(1, total, {"PA-MPJPE mm": base["pa_mpjpe_mm"]})
    rows: list[dict] = []
    for unit in chosen:
        others = [u for u in all_units if u != unit]
        for ratio in ratios:
            row = {"unit": unit, "ratio": ratio}
            try:
                with _quiet(QUIET_LOGGERS):
                    pruned, summary = _prune_unit(model, unit, others, ratio, importance, example)
            except UserError as exc:  # e.g. the ratio would empty a thin layer of this unit
                log.warning("sensitivity: %s at ratio %g skipped: %s", unit, ratio, exc)
                row["error"] = str(exc)
            else:
                row.update(_measure(unit, summary, run_eval(pruned), base, depthwise))
            rows.append(row)
            if progress:
                progress(1 + len(rows), total, {"ΔPA-MPJPE mm": row.get("delta_pa_mpjpe_mm", float("nan"))})

    base_cost = cost(model, example)
    results = {
        "checkpoint": str(path),
        "model": model_name(model),
        "img_res": res, "datasets": datasets, "subset": subset, "importance": importance, "ratios": ratios,
        "rank_by": rank_by,
        "baseline": {**base, "params_total": base_cost.params_total, "macs": base_cost.macs,
                     "metrics": base_metrics},
        "units": _rank_units(chosen, rows, rank_by=rank_by),
        "rows": rows,
    }
    results["rows"] = _sorted_rows(results)
    if budget_ratio is not None:
        results["suggested"] = {"budget_ratio": budget_ratio,
                                "ratio_by_module": suggest_ratios(results, budget_ratio=budget_ratio)}
    results["plot"] = str(plot_sensitivity(results, out / PLOT_NAME))
    results["json"] = str(out / JSON_NAME)
    atomic_write_json(out / JSON_NAME, results)  # strict JSON: NaN -> null
    log.info("sensitivity: wrote %s and %s", results["json"], results["plot"])
    return results


def _check_options(*, importance: str, rank_by: str, subset: int, budget_ratio: Optional[float],
                   ratios: list[float]) -> None:
    if importance not in IMPORTANCES:
        raise UserError(f"sensitivity: unknown importance {importance!r}; valid: {', '.join(IMPORTANCES)}")
    if importance == "taylor":
        raise UserError("sensitivity: importance taylor needs calibration batches; use l1, l2, lamp, fpgm or bn_scale")
    if rank_by not in RANK_BY:
        raise UserError(f"sensitivity: rank_by must be one of {', '.join(RANK_BY)}, got {rank_by!r}")
    if subset < 1:
        raise UserError(f"sensitivity: subset must be >= 1, got {subset}")
    if budget_ratio is not None and not 0 < budget_ratio <= max(ratios):
        raise UserError(f"sensitivity: budget ratio {budget_ratio} must be in (0, {max(ratios)}] (the largest tested "
                        "ratio; suggestions do not extrapolate)")


def _measure(unit: str, summary: PruneResult, metrics: dict, base: dict, depthwise: set[str]) -> dict:
    """One row of the table from a prune result and the pruned model's evaluation."""
    before, after = summary.before, summary.after
    params, macs = before.params_total - after.params_total, before.macs - after.macs
    removed, channels = _unit_channels(unit, summary.widths, depthwise)
    pa, mp = _mean_metric(metrics, "pa_mpjpe_mm"), _mean_metric(metrics, "mpjpe_mm")
    return {
        "params_removed": params, "macs_removed": macs,
        "params_removed_pct": 100.0 * params / before.params_total,
        "macs_removed_pct": 100.0 * macs / before.macs if before.macs else 0.0,
        "channels_removed": removed, "channels": channels,
        "pa_mpjpe_mm": pa, "mpjpe_mm": mp,
        "delta_pa_mpjpe_mm": pa - base["pa_mpjpe_mm"], "delta_mpjpe_mm": mp - base["mpjpe_mm"],
        "metrics": metrics,
    }


@contextlib.contextmanager
def _quiet(names: Iterable[str]):
    """Per-run INFO lines of prune and evaluate would bury the sweep's progress: show them only when debugging."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        if not lg.isEnabledFor(logging.DEBUG):
            lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# ----------------------------------------------------------------------------------------------- ranking


def _slope(deltas: list[float], removed_pct: list[float]) -> float:
    """Least-squares slope through the origin: mm of error per percent removed."""
    den = sum(x * x for x in removed_pct)
    return sum(d * x for d, x in zip(deltas, removed_pct)) / den if den > 0 else 0.0


def _rank_units(units: list[str], rows: list[dict], *, rank_by: str) -> list[dict]:
    """One entry per unit with its sensitivity slopes, ranked: 1 = least accuracy lost per share removed."""
    entries = []
    for unit in units:
        ok = [r for r in rows if r["unit"] == unit and "error" not in r]
        removes = [r for r in ok if r["params_removed"] > 0]
        deltas = [r["delta_pa_mpjpe_mm"] for r in removes]
        entry = {
            "unit": unit,
            "mm_per_pct_params": _slope(deltas, [r["params_removed_pct"] for r in removes]),
            "mm_per_pct_macs": _slope(deltas, [r["macs_removed_pct"] for r in removes]),
            "channels": max((r["channels"] for r in ok), default=0),
            "params_removed_max": max((r["params_removed"] for r in ok), default=0),
            "params_removed_pct_max": max((r["params_removed_pct"] for r in ok), default=0.0),
            "macs_removed_pct_max": max((r["macs_removed_pct"] for r in ok), default=0.0),
            "coupled": bool(ok) and not removes,
            "refused": [r["ratio"] for r in rows if r["unit"] == unit and "error" in r],
        }
        entries.append(entry)
    order = {u: i for i, u in enumerate(units)}

    def key(e: dict) -> tuple:
        # A negative slope (pruning "helped" on this subset) is noise, not a gain: it ranks as zero loss, and
        # among equal losses the unit that removes the larger share comes first, then the forward order.
        # A NaN slope (the pruned model's error was not finite) ranks last, never first.
        slope = e[f"mm_per_pct_{rank_by}"]
        slope = math.inf if math.isnan(slope) else max(slope, 0.0)
        return slope, -e[f"{rank_by}_removed_pct_max"], order[e["unit"]]

    measured = sorted((e for e in entries if e["params_removed_max"] > 0), key=key)
    for i, e in enumerate(measured, 1):
        e["rank"] = i
    for e in entries:
        e.setdefault("rank", None)
    return measured + [e for e in entries if e["rank"] is None]


def _sorted_rows(results: dict) -> list[dict]:
    order = {e["unit"]: i for i, e in enumerate(results["units"])}
    return sorted(results["rows"], key=lambda r: (order[r["unit"]], r["ratio"]))


# ----------------------------------------------------------------------------------------------- suggestion


def suggest_ratios(results: Mapping, *, budget_ratio: float, max_ratio: Optional[float] = None,
                   noise_mm_per_pct: float = NOISE_MM_PER_PCT) -> dict[str, float]:
    """Per-unit ratios for a recipe's `prune.ratio_by_module`: least sensitive units pruned most.

    Each measured unit u gets r_u = min(c / (s_u + s0), max_ratio), with s_u = max(its ranking slope,
    noise_mm_per_pct) (slopes below the noise level count as equal) and s0 = the mean s_u (so near-zero slopes
    do not take everything); c is found by bisection so that the average ratio weighted by each unit's prunable
    channels equals `budget_ratio` (to rounding). max_ratio defaults to the largest tested ratio (no
    extrapolation). Coupled units (nothing removable alone) are left out: they take the recipe's `prune.ratio`.
    Ratios are rounded to 3 decimals.
    """
    if not 0 < budget_ratio < 1:
        raise UserError(f"sensitivity: budget ratio must be in (0, 1), got {budget_ratio}")
    cap = float(max_ratio if max_ratio is not None else max(results["ratios"]))
    if budget_ratio > cap + 1e-12:
        raise UserError(f"sensitivity: budget ratio {budget_ratio} is above the largest ratio {cap} that was "
                        "measured; test larger ratios (--ratios) first")
    key = "mm_per_pct_params" if results.get("rank_by", "params") == "params" else "mm_per_pct_macs"
    units = [u for u in results["units"] if u.get("rank") is not None and u["channels"] > 0]
    if not units:
        raise UserError("sensitivity: no unit removed anything on its own; nothing to suggest")
    slopes = [max(float(u[key]), noise_mm_per_pct, 1e-12) for u in units]
    s0 = sum(slopes) / len(slopes)
    weights = [float(u["channels"]) for u in units]

    def ratios_for(c: float) -> list[float]:
        return [min(c / (s + s0), cap) for s in slopes]

    def mean(rs: list[float]) -> float:
        return sum(w * r for w, r in zip(weights, rs)) / sum(weights)

    lo, hi = 0.0, cap * (max(slopes) + s0)  # mean(ratios_for(hi)) == cap >= budget
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean(ratios_for(mid)) < budget_ratio else (lo, mid)
    chosen = ratios_for((lo + hi) / 2)
    return {u["unit"]: round(r, 3) for u, r in zip(units, chosen)}


def weighted_mean_ratio(results: Mapping, ratios: Mapping[str, float]) -> float:
    """The channel-weighted average of per-unit ratios (what `suggest_ratios` matches to the budget)."""
    channels = {u["unit"]: u["channels"] for u in results["units"]}
    total = sum(channels[u] for u in ratios)
    return sum(channels[u] * r for u, r in ratios.items()) / total if total else 0.0


def recipe_snippet(ratios: Mapping[str, float], *, budget_ratio: float, importance: str = "l2") -> str:
    """A YAML `prune:` section taking the suggested per-module ratios (unlisted modules get `ratio`)."""
    section = {"importance": importance, "ratio": budget_ratio, "ratio_by_module": dict(ratios)}
    top = max([budget_ratio, *ratios.values()])
    if top > PruneSpec().max_layer_ratio:  # the default per-layer cap would clamp the largest ratios
        section["max_layer_ratio"] = top
    section = {"prune": section}
    return yaml.safe_dump(section, sort_keys=False, default_flow_style=False)


# ----------------------------------------------------------------------------------------------- plot


def plot_sensitivity(results: Mapping, path: str | Path) -> Path:
    """Two panels sharing the ranked unit axis: delta-PA-MPJPE per ratio (bars), and the ranking slope."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - used as matplotlib.ticker

    path = Path(path)
    units = [u["unit"] for u in results["units"]]
    ratios = list(results["ratios"])
    key = "mm_per_pct_params" if results.get("rank_by", "params") == "params" else "mm_per_pct_macs"
    by = {(r["unit"], r["ratio"]): r for r in results["rows"]}
    labels = [f"{u['rank']}. {u['unit']}" if u["rank"] is not None
              else f"-  {u['unit']} ({'refused' if u['refused'] else 'coupled'})" for u in results["units"]]
    height = max(3.4, 1.8 + len(units) * (0.16 + 0.1 * len(ratios)))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, height), sharey=True, gridspec_kw={"width_ratios": [3, 2]})
    y = list(range(len(units)))
    bar = 0.8 / len(ratios)
    colors = plt.get_cmap("viridis")([0.15 + 0.7 * i / max(1, len(ratios) - 1) for i in range(len(ratios))])
    for i, ratio in enumerate(ratios):
        vals = [by.get((u, ratio), {}).get("delta_pa_mpjpe_mm", float("nan")) for u in units]
        offs = [yy - 0.4 + bar * (i + 0.5) for yy in y]
        ax1.barh(offs, [0 if math.isnan(v) else v for v in vals], height=bar, color=colors[i],
                 label=f"ratio {ratio:g}")
    ax1.axvline(0, color="black", lw=0.8)
    ax1.set_yticks(y, labels, fontsize=9)
    ax1.invert_yaxis()
    ax1.set_xlabel("ΔPA-MPJPE (mm, vs unpruned; higher = worse)")
    ax1.set_title(f"unit pruned alone, {len(results['datasets'])}-dataset mean, first {results['subset']} samples")
    ax1.legend(fontsize=8, loc="best")
    ax1.grid(axis="x", alpha=0.3)
    slopes = [u[key] for u in results["units"]]
    ax2.barh(y, slopes, height=0.6, color=["tab:red" if s > 0 else "tab:green" for s in slopes])
    ax2.axvline(0, color="black", lw=0.8)
    top, what = max(ratios), key.rsplit("_", 1)[1]  # params | macs
    for yy, u in zip(y, results["units"]):
        row = by.get((u["unit"], top), {})
        if u["rank"] is None:
            note = "removes nothing alone (channels shared)" if not u["refused"] else "refused"
        else:
            pct = row.get(f"{what}_removed_pct", float("nan"))
            share = f"{pct:.{1 if pct >= 1 else 2}f}% {'params' if what == 'params' else 'MACs'}"
            note = f"{u[key]:+.3g}  ({share} at {top:g})"
        ax2.annotate(note, xy=(1.02, yy), xycoords=("axes fraction", "data"), va="center", fontsize=8,
                     color="dimgray", annotation_clip=False)
    ax2.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=4))
    ax1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(nbins=6))
    ax2.set_xlabel(f"mm of PA-MPJPE lost per 1% of {'parameters' if what == 'params' else 'MACs'} removed")
    ax2.set_title("sensitivity (rank 1 = prune first)")
    ax2.grid(axis="x", alpha=0.3)
    base = results["baseline"]
    fig.suptitle(f"{results['model']} @ {results['img_res']} px: pruning sensitivity "
                 f"(baseline PA-MPJPE {base['pa_mpjpe_mm']:.1f} mm, importance {results['importance']})", fontsize=11)
    fig.tight_layout()  # also makes room for the suptitle
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")  # "tight" keeps the notes right of the slope panel
    plt.close(fig)
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------------------------- table


def format_sensitivity_table(results: Mapping) -> list[list[str]]:
    """Rows for a terminal table: a header, then one row per unit and ratio in rank order ('-': coupled)."""
    head = ["#", "unit", "ratio", "params -", "MACs -", "ΔPA-MPJPE", "ΔMPJPE", "mm/1%"]
    ranks = {u["unit"]: u for u in results["units"]}
    rows = [head]
    for r in results["rows"]:
        unit = ranks[r["unit"]]
        rank = str(unit["rank"]) if unit["rank"] is not None else "-"
        if "error" in r:
            rows.append([rank, r["unit"], f"{r['ratio']:g}", "refused", "", "", "", ""])
            continue
        pct = r["params_removed_pct"] if results.get("rank_by", "params") == "params" else r["macs_removed_pct"]
        rows.append([
            rank, r["unit"], f"{r['ratio']:g}", f"{r['params_removed_pct']:.1f}%", f"{r['macs_removed_pct']:.1f}%",
            f"{r['delta_pa_mpjpe_mm']:+.2f}", f"{r['delta_mpjpe_mm']:+.2f}",
            f"{r['delta_pa_mpjpe_mm'] / pct:+.3f}" if pct > 0 else "",
        ])
    return rows
