"""How long to fine-tune: P1 of the shipped reference model (recipes/mbv2_p1.yaml) fine-tuned for N epochs (each N
its own run) at the card's settings, with distillation (default) or without, scored on the 3D sets of the default
synthetic root.

Prints, per N, PA-MPJPE and MPJPE per set, their mean over the four 3D sets as a ratio to the reference model's,
the fine-tuning's wall time, and writes benchmarks/reference/ftlen_<variant>.json.

    python benchmarks/bench_ftlen.py --epochs 5 10 20 40            # about 30 min on 2 CPU cores
    python benchmarks/bench_ftlen.py --epochs 5 10 20 40 --variant none
    python benchmarks/bench_ftlen.py --epochs 20 --set finetune.lr=3e-4 --set finetune.encoder_lr=3e-3 --label lr3e-4
    python benchmarks/bench_ftlen.py --epochs 20 --prune-set prune.importance=taylor --out runs/bench_ftlen_taylor \
        --label taylor

Runs go to --out (kept; re-running skips finished ones): --out/mbv2_reference (the shipped model scored on the
root), --out/mbv2_p1 (pruned, scored), --out/<variant>_ft<N>[_<label>]; the results file records the seed and
every --set and --prune-set. The fine-tuning seed alone moves mean PA-MPJPE by about 1 mm here (the card's noise
band), and which channels a criterion keeps by up to 2.6 mm (Taylor with other calibration sets): read differences
smaller than that as ties.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress import demo  # noqa: E402
from compress.eval.protocols import evaluate_into_run  # noqa: E402
from compress.prune.run import run_prune  # noqa: E402
from compress.recipe import load_recipe  # noqa: E402
from compress.report import checkpoint_metrics  # noqa: E402
from compress.report.recovery import TITLES  # noqa: E402
from compress.runs import FINETUNED, PRUNED  # noqa: E402
from compress.train import run_finetune  # noqa: E402

HERE = Path(__file__).resolve().parent / "reference"
SETS = ("3dpw", "h36m-p1", "h36m-p2", "mpi-inf-3dhp")


def mean_3d(metrics: dict, key: str) -> float:
    """Mean of `key` over the four 3D sets (all must be present)."""
    return statistics.fmean(metrics[ds][key] for ds in SETS)


def prune_p1(out: Path, base: Path, common: list[str], sets: list[str]) -> Path:
    run = out / "mbv2_p1"
    if not (run / PRUNED).exists():
        recipe = load_recipe(demo.RECIPES / "mbv2_p1.yaml",
                             common + [f"prune.from={base}", f"finetune.distill.teacher={base}", *sets], env=False)
        evaluate_into_run(run_prune(recipe, out_dir=run).checkpoint, recipe)
    return run


def finetune(run: Path, dest: Path, epochs: int, variant: str, seed: int, sets: list[str]) -> float | None:
    """Fine-tune `run` for `epochs` into `dest` (`sets`: more --set overrides); its wall time in s (None when it
    was already there)."""
    if (dest / FINETUNED).exists():
        return None
    extra = [f"finetune.seed={seed}", *sets] + (["finetune.distill=null"] if variant == "none" else [])
    start = time.perf_counter()
    run_finetune(run, epochs=epochs, overrides=extra, out_dir=dest, resume=True)
    return time.perf_counter() - start


def row(name: str, metrics: dict, ref: dict, wall: float | None) -> dict:
    pa, mp = mean_3d(metrics, "pa_mpjpe_mm"), mean_3d(metrics, "mpjpe_mm")
    return {"stage": name, "pa_mpjpe_mm": {TITLES[d]: metrics[d]["pa_mpjpe_mm"] for d in SETS},
            "mean_pa_mpjpe_mm": pa, "mean_mpjpe_mm": mp, "pa_vs_reference": pa / mean_3d(ref, "pa_mpjpe_mm"),
            "mpjpe_vs_reference": mp / mean_3d(ref, "mpjpe_mm"), "finetune_s": wall}


def print_rows(rows: list[dict]) -> None:
    titles = list(rows[0]["pa_mpjpe_mm"])
    print(f"{'stage':<16}" + "".join(f"{t:>10}" for t in titles) + f"{'mean PA':>9}{'x ref':>7}{'MPJPE':>8}"
          f"{'x ref':>7}{'FT s':>7}")
    for r in rows:
        wall = "" if r["finetune_s"] is None else f"{r['finetune_s']:.0f}"
        print(f"{r['stage']:<16}" + "".join(f"{v:>10.1f}" for v in r["pa_mpjpe_mm"].values())
              + f"{r['mean_pa_mpjpe_mm']:>9.1f}{r['pa_vs_reference']:>7.3f}{r['mean_mpjpe_mm']:>8.1f}"
              f"{r['mpjpe_vs_reference']:>7.3f}{wall:>7}")
    print("PA-MPJPE in mm per set; mean over the four 3D sets; x ref = ratio to the reference model's mean")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, nargs="+", default=[5, 10, 20, 40])
    p.add_argument("--variant", choices=("kd", "none"), default="kd")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], dest="sets", help="extra override for every fine-tuning")
    p.add_argument("--prune-set", action="append", default=[], dest="prune_sets",
                   help="override for the pruning (use another --out: the pruned run is kept there)")
    p.add_argument("--label", default="", help="suffix of the runs and the results file (for --set variants)")
    p.add_argument("--out", default="runs/bench_ftlen")
    p.add_argument("--json", default=None, help="results file (default: benchmarks/reference/ftlen_<variant>.json)")
    args = p.parse_args(argv)
    out, size = Path(args.out), demo.DEFAULT
    root = Path(size.data_root)
    demo.generate_root(root, size=size.synth, seed=0)
    common = demo.common_settings(size, root, demo.reference_card())
    base = demo.shipped_baseline(out, common)
    pruned = prune_p1(out, base, common, args.prune_sets)
    ref = checkpoint_metrics(base)
    rows = [row("reference", ref, ref, None), row("P1" + (f" {args.label}" if args.prune_sets else ""),
                                                   checkpoint_metrics(pruned / PRUNED), ref, None)]
    for n in args.epochs:
        dest = out / f"{args.variant}_ft{n}{'_' + args.label if args.label else ''}"
        wall = finetune(pruned, dest, n, args.variant, args.seed, args.sets)
        name = f"P1+FT({n})" + ("+KD" if args.variant == "kd" else "") + (f" {args.label}" if args.label else "")
        rows.append(row(name, checkpoint_metrics(dest / FINETUNED), ref, wall))
        print(f"done FT({n})", flush=True)
    print_rows(rows)
    print("FT s: wall time of the fine-tuning and its evaluation")
    label = f"_{args.label}" if args.label else ""
    dest = Path(args.json) if args.json else HERE / f"ftlen_{args.variant}{label}.json"
    dest.write_text(json.dumps({"seed": args.seed, "variant": args.variant, "sets": args.sets,
                                "prune_sets": args.prune_sets, "rows": rows},
                               indent=1) + "\n")
    print(f"wrote {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
