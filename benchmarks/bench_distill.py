"""Distillation against none: fine-tune one pruned run for N epochs per seed, with and without the teacher, and
print MPJPE per dataset and seed, the means, and the pooled share of the pruning's loss each recovered.

    python benchmarks/bench_distill.py --run runs/demo/default/mbv2_p1 --epochs 8 --seeds 0 1 2 \\
        --kd-set finetune.distill.rotmat=100 --kd-set finetune.distill.joints=50

The run needs its pruned.pt evaluated (`compress prune --eval`, or the demo) and a baseline with metrics (default:
the pruned model's parent). Each fine-tuning goes to --out/<kd|none>_s<seed> (kept; re-running skips finished
ones). The fine-tuning seed alone moves MPJPE by tens of mm on 150-sample sets: compare means over seeds.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from compress.errors import UserError
from compress.report import checkpoint_metrics
from compress.report.recovery import TITLES, Recovery
from compress.runs import FINETUNED, PRUNED, read_meta
from compress.train import run_finetune

METRIC = "mpjpe_mm"


def _metrics_3d(metrics: dict, metric: str = METRIC) -> dict[str, float]:
    return {TITLES[k]: v[metric] for k, v in metrics.items() if k in TITLES and metric in v}


def finetune_all(run: Path, out: Path, *, epochs: int, seeds: list[int], kd_set: list[str]) -> dict:
    """{(variant, seed): metrics} for variant kd (the recipe's teacher, plus kd_set) and none."""
    results = {}
    for seed in seeds:
        for variant, extra in (("kd", kd_set), ("none", ["finetune.distill=null"])):
            dest = out / f"{variant}_s{seed}"
            if not (dest / FINETUNED).is_file():
                run_finetune(run, epochs=epochs, overrides=[f"finetune.seed={seed}", *extra], out_dir=dest)
            results[(variant, seed)] = checkpoint_metrics(dest / FINETUNED)
    return results


def noise_band(results: dict, variant: str, seeds: list[int], stage: str) -> dict:
    """The spread over seeds of every metric of one variant (sample sd, n - 1), and both variants' means: what
    `compress report` marks deltas against (a baseline card's `noise`)."""
    import statistics

    runs = {v: [results[(v, s)] for s in seeds] for v in ("kd", "none")}
    first = runs[variant][0]
    sd = {ds: {k: statistics.stdev([r[ds][k] for r in runs[variant]]) for k, x in m.items()
               if isinstance(x, float) and not k.startswith("n")} for ds, m in first.items()}
    mean = {v: {ds: {k: statistics.fmean([r[ds][k] for r in rs]) for k in sd[ds]} for ds in sd} for v, rs in runs.items()}
    return {"stage": stage, "n": len(seeds), "seeds": seeds, "sd": sd, "mean": mean}


def write_band(card: Path, band: dict) -> None:
    from compress.io import atomic_write_json

    data = json.loads(card.read_text()) if card.is_file() else {}
    atomic_write_json(card, {**data, "noise": band})


def report(full: dict, base: dict[str, float], pruned: dict[str, float], seeds: list[int],
           metric: str = METRIC) -> None:
    results = {k: _metrics_3d(v, metric) for k, v in full.items()}
    titles = [t for t in base if t in pruned]
    print(f"{metric} | " + " | ".join(titles) + " | pooled recovery")
    print("baseline   | " + " | ".join(f"{base[t]:.1f}" for t in titles) + " |")
    print("pruned     | " + " | ".join(f"{pruned[t]:.1f}" for t in titles) + " |")
    for variant in ("kd", "none"):
        runs = [results[(variant, s)] for s in seeds]
        for seed, m in zip(seeds, runs):
            print(f"{variant:<4} s{seed:<4} | " + " | ".join(f"{m[t]:.1f}" for t in titles) + " | "
                  + _share(m, base, pruned, titles))
        mean = {t: sum(m[t] for m in runs) / len(runs) for t in titles}
        print(f"{variant:<4} mean  | " + " | ".join(f"{mean[t]:.1f}" for t in titles) + " | "
              + _share(mean, base, pruned, titles))
    diffs = [results[("kd", s)][t] - results[("none", s)][t] for s in seeds for t in titles]
    wins = sum(d < 0 for d in diffs)
    print(f"kd - none: {wins} of {len(diffs)} comparisons lower with the teacher; "
          f"mean {sum(diffs) / len(diffs):+.1f} mm")


def _share(m: dict, base: dict, pruned: dict, titles: list[str]) -> str:
    share = Recovery("", "", {t: (base[t], pruned[t], m[t]) for t in titles}).pooled()
    return "n/a" if share is None else f"{100 * share:.0f}%"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run", required=True, help="a pruned run directory (with pruned.pt and its metrics)")
    p.add_argument("--baseline", default=None, help="the unpruned checkpoint (default: pruned.pt's parent)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--kd-set", action="append", default=[], help="extra --set for the distilled runs")
    p.add_argument("--out", default="runs/bench_distill")
    p.add_argument("--card", default=None, help="write the spread over seeds into this JSON card's `noise` "
                                                "(e.g. checkpoints/mbv2_reference.json)")
    p.add_argument("--band", choices=("kd", "none"), default="kd", help="the variant whose spread is the band")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    run = Path(args.run)
    baseline = Path(args.baseline or read_meta(run / PRUNED).get("parent") or "")
    if not baseline.is_file():
        raise UserError(f"baseline checkpoint not found ({baseline}): pass --baseline")
    results = finetune_all(run, Path(args.out), epochs=args.epochs, seeds=args.seeds, kd_set=args.kd_set)
    for metric in (METRIC, "pa_mpjpe_mm"):
        base, pruned = (_metrics_3d(checkpoint_metrics(c), metric) for c in (baseline, run / PRUNED))
        if not base or not pruned:
            raise UserError("the baseline and pruned.pt need recorded metrics (run `compress prune --eval`)")
        report(results, base, pruned, args.seeds, metric)
    stage = f"{run.name}: FT({args.epochs})" + ("+KD" if args.band == "kd" else "")
    band = noise_band(results, args.band, args.seeds, stage)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "noise.json").write_text(json.dumps(band, indent=2))
    if args.card:
        write_band(Path(args.card), band)
        print(f"noise band ({stage}, {len(args.seeds)} seeds) written into {args.card}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
