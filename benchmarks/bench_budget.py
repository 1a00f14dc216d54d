"""Pruning to a measured latency budget on this CPU: does it meet the target, and is it faster than plain ratio
pruning at the same MACs?

(a) HMR-MobileNetV2 pruned to half of its own latency at batch 1 (`prune.target.latency_ratio: 0.5`, the
    mbv2_half_latency recipe), then timed against the unpruned model in an interleaved A/B run.
(b) A uniformly ratio-pruned MobileNetV2 (local L2, one `prune.ratio` for every layer) with at most the same MACs:
    the smallest ratio whose MACs do not exceed those of (a), found by bisection (no fill-up, so every layer
    keeps the same fraction), timed interleaved against (a) and the unpruned model.

Single thread (`torch.set_num_threads(1)`): the machine is shared and loaded. Printed: medians and p10-p90 of each
model, and the per-round paired ratios (model_i / other_i within one interleaved round), which are robust to the
load drifting during the run. `--trials N` repeats the final timing N times.

    python benchmarks/bench_budget.py --quick        # 128 px
    python benchmarks/bench_budget.py                # 224 px
    python benchmarks/bench_budget.py --json out.json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.models import create_model  # noqa: E402
from compress.latency import ab_latency, paired_ratio  # noqa: E402
from compress.prune import prune_model  # noqa: E402
from compress.recipe import PruneSpec, PruneTarget  # noqa: E402


def _uniform_at_most(model, example, *, macs: int):
    """The ratio-pruned model (one local ratio) with the most MACs that are still <= macs -> (model, result, ratio)."""
    lo, hi, best = 0.0, 0.95, None
    for _ in range(12):
        mid = (lo + hi) / 2
        pruned, summary = prune_model(model, {"ratio": mid}, example)
        if summary.after.macs <= macs:
            hi, best = mid, (pruned, summary)
        else:
            lo = mid
    if best is None:
        raise SystemExit("no uniform ratio reaches the MACs of the latency-targeted model")
    return (*best, round(hi, 4))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 px instead of 224")
    ap.add_argument("--img-res", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=41, help="interleaved timing rounds of the final comparison")
    ap.add_argument("--lut-dir", default="runs/.latency_lut", help="latency LUT cache (reused across runs)")
    ap.add_argument("--trials", type=int, default=1, help="repeat the final interleaved timing this many times")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    res = args.img_res or (128 if args.quick else 224)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = create_model("hmr_mobilenet_v2", img_res=res).eval()
    example = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0))

    t0 = time.perf_counter()
    fast, s_fast = prune_model(model, PruneSpec(target=PruneTarget(latency_ratio=0.5, threads=1)), example,
                               lut_dir=args.lut_dir)
    search_s = time.perf_counter() - t0
    target = s_fast.target
    macs = s_fast.after.macs
    uniform, s_uni, uni_ratio = _uniform_at_most(model, example, macs=macs)

    print(f"HMR-MobileNetV2, {res} px, batch 1, 1 thread, cpu; final timing: {args.repeats} interleaved rounds")
    print(f"(a) latency target 0.5x: search {search_s:.0f} s, {len(target.rounds)} round(s), LUT "
          f"{target.lut_entries} shapes ({target.lut_loaded} cached)")
    for r in target.rounds:
        print(f"    round {r['round']}: predicted {r['predicted_ms']:.2f} ms, measured {r['measured_ms']:.2f} ms "
              f"(p10-p90 {r['p10_ms']:.2f}-{r['p90_ms']:.2f}) vs baseline {r['baseline_ms']:.2f} ms, per-round ratio "
              f"{r['paired_ratio']:.3f} -> {'met' if r['met'] else 'missed'}")
    models = {"unpruned": model, "latency": fast.eval(), "uniform": uniform.eval()}
    summaries = {"unpruned": None, "latency": s_fast, "uniform": s_uni}
    trials = []
    for trial in range(args.trials):
        timing = ab_latency(models, img_res=res, warmup=5, repeats=args.repeats)  # A B C A B C ..., paired
        base = timing["unpruned"]["median_ms"]
        print(f"trial {trial + 1}/{args.trials}:")
        rows = []
        for key, s in summaries.items():
            t = timing[key]
            params = (s.after if s else s_fast.before).params_total
            m = (s.after if s else s_fast.before).macs
            rows.append({"model": key, "params": params, "macs": m, "median_ms": round(t["median_ms"], 3),
                         "p10_ms": round(t["p10_ms"], 3), "p90_ms": round(t["p90_ms"], 3)})
            print(f"  {key:9s} params {params:>10,}  MACs {m:>12,}  median {t['median_ms']:7.2f} ms  "
                  f"p10-p90 {t['p10_ms']:.2f}-{t['p90_ms']:.2f}  = {t['median_ms'] / base:.3f}x unpruned")
        a = paired_ratio(timing["latency"]["samples_ms"], timing["unpruned"]["samples_ms"])
        b = paired_ratio(timing["uniform"]["samples_ms"], timing["latency"]["samples_ms"])
        print(f"  (a) latency-targeted / unpruned, per round: median {a['median']:.3f} (p10-p90 {a['p10']:.3f}-"
              f"{a['p90']:.3f}), target 0.5 -> {'MET' if a['median'] <= 0.5 else 'MISSED'}")
        print(f"  (b) uniform / latency-targeted at <= equal MACs ({macs:,} vs {s_uni.after.macs:,}, uniform "
              f"ratio {uni_ratio}), per round: median {b['median']:.3f} (p10-p90 {b['p10']:.3f}-{b['p90']:.3f})"
              f" -> latency-targeted is {'faster' if b['median'] > 1 else 'NOT faster'}")
        trials.append({"rows": rows, "latency_over_unpruned": a, "uniform_over_latency": b})
    if args.json:
        Path(args.json).write_text(json.dumps({"img_res": res, "rounds": target.rounds, "trials": trials,
                                               "groups": target.groups}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
