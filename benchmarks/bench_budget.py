"""Pruning to a measured latency budget on this CPU: does it meet the target, and is it faster than plain ratio
pruning at the same MACs?

(a) HMR-MobileNetV2 pruned to half of its own latency at batch 1 (`prune.target.latency_ratio: 0.5`, the
    mbv2_half_latency recipe), then timed against the unpruned model in an interleaved A/B run.
(b) A uniformly ratio-pruned MobileNetV2 (local L2) with at most the same MACs (`prune.target.macs` = the MACs of
    (a)), timed interleaved against (a) and the unpruned model.

Single thread (`torch.set_num_threads(1)`): the machine is shared and loaded; medians and p10-p90 are printed.

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
from compress.profile import interleaved_latency  # noqa: E402
from compress.prune import prune_model  # noqa: E402
from compress.recipe import PruneSpec, PruneTarget  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="128 px instead of 224")
    ap.add_argument("--img-res", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=41, help="interleaved timing rounds of the final comparison")
    ap.add_argument("--lut-dir", default="runs/.latency_lut", help="latency LUT cache (reused across runs)")
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
    target = s_fast["target"]
    macs = s_fast["after"]["macs"]
    uniform, s_uni = prune_model(model, PruneSpec(target=PruneTarget(macs=macs)), example)

    timing = interleaved_latency({"unpruned": model, "latency": fast.eval(), "uniform": uniform.eval()},
                                 img_res=res, batch_size=1, warmup=5, repeats=args.repeats)
    base = timing["unpruned"]["median_ms"]
    print(f"HMR-MobileNetV2, {res} px, batch 1, 1 thread, cpu; final timing: {args.repeats} interleaved rounds")
    print(f"(a) latency target 0.5x: search {search_s:.0f} s, {len(target['rounds'])} round(s), LUT "
          f"{target['lut_entries']} shapes ({target['lut_loaded']} cached)")
    for r in target["rounds"]:
        print(f"    round {r['round']}: predicted {r['predicted_ms']:.2f} ms, measured {r['measured_ms']:.2f} ms "
              f"(p10-p90 {r['p10_ms']:.2f}-{r['p90_ms']:.2f}) vs baseline {r['baseline_ms']:.2f} ms, goal "
              f"{r['goal_ms']:.2f} ms -> {'met' if r['met'] else 'missed'}")
    rows = []
    for key, s in (("unpruned", None), ("latency", s_fast), ("uniform", s_uni)):
        t = timing[key]
        params = s["after"]["params_total"] if s else s_fast["before"]["params_total"]
        m = s["after"]["macs"] if s else s_fast["before"]["macs"]
        rows.append({"model": key, "params": params, "macs": m, **{k: round(v, 3) for k, v in t.items()
                                                                    if isinstance(v, float)}})
        print(f"  {key:9s} params {params:>10,}  MACs {m:>12,}  median {t['median_ms']:7.2f} ms  "
              f"p10-p90 {t['p10_ms']:.2f}-{t['p90_ms']:.2f}  = {t['median_ms'] / base:.3f}x unpruned")
    ratio = timing["latency"]["median_ms"] / base
    print(f"(a) latency-targeted / unpruned = {ratio:.3f} (target 0.5) -> {'MET' if ratio <= 0.5 else 'MISSED'} "
          f"in this timing")
    speed = timing["uniform"]["median_ms"] / timing["latency"]["median_ms"]
    print(f"(b) at <= equal MACs ({macs:,} vs {s_uni['after']['macs']:,}, uniform ratio {s_uni['ratio']}): "
          f"uniform / latency-targeted = {speed:.3f} -> latency-targeted is "
          f"{'faster' if speed > 1 else 'NOT faster'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"img_res": res, "rows": rows, "rounds": target["rounds"],
                                               "ratio_to_unpruned": ratio, "uniform_over_latency": speed}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
