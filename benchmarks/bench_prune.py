"""Pruned vs unpruned HMR per encoder: parameters, MACs and measured CPU latency.

For each encoder and channel ratio (local L2 pruning, `compress.prune.prune_model`) it prints params and MACs
before/after, the MACs ratio, and the median latency at batch 1 and batch 32 of the unpruned and the pruned
model, timed interleaved (A B A B ...) after warm-up runs so machine noise hits both alike
(`compress.profile.interleaved_latency`), and the speedup next to the MACs ratio.

    python benchmarks/bench_prune.py --quick              # 2 encoders, 2 ratios, 128 px: about a minute
    python benchmarks/bench_prune.py --img-res 224 --models hmr_mobilenet_v2,hmr_resnet50 --ratios 0.2,0.5
    python benchmarks/bench_prune.py --json out.json      # also write the rows as JSON
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from compress.models import create_model  # noqa: E402
from compress.profile import interleaved_latency  # noqa: E402
from compress.prune import prune_model  # noqa: E402

ALL = ["hmr_resnet50", "hmr_densenet121", "hmr_mobilenet_v2", "hmr_mobilenet_v3_large", "hmr_mobilenet_v3_small",
       "hmr_shufflenet_v2_x1_0", "hmr_efficientnet_b0", "hmr_regnet_y_400mf", "hmr_seed_mobilenet_v2"]
QUICK = ["hmr_mobilenet_v2", "hmr_shufflenet_v2_x1_0"]


def bench_one(name: str, ratio: float, *, img_res: int, batches: list[int], warmup: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = create_model(name, img_res=img_res).eval()
    example = torch.randn(1, 3, img_res, img_res)
    pruned, summary = prune_model(model, {"ratio": ratio}, example)
    row = {"model": name, "ratio": ratio, "img_res": img_res,
           "params_before": summary.before.params_total, "params_after": summary.after.params_total,
           "macs_before": summary.before.macs, "macs_after": summary.after.macs}
    row["macs_ratio"] = row["macs_after"] / row["macs_before"]
    for batch in batches:
        lat = interleaved_latency({"unpruned": model, "pruned": pruned.eval()}, img_res=img_res, batch_size=batch,
                                  warmup=warmup, repeats=repeats)
        before, after = lat["unpruned"]["median_ms"], lat["pruned"]["median_ms"]
        row[f"latency_b{batch}_ms"] = [round(before, 2), round(after, 2)]
        row[f"speedup_b{batch}"] = round(before / after, 3)
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="2 encoders, ratios 0.3 and 0.5, 128 px, few repeats")
    p.add_argument("--models", default=None, help=f"comma-separated zoo names (default: {','.join(ALL)})")
    p.add_argument("--ratios", default="0.2,0.3,0.5", help="comma-separated channel ratios")
    p.add_argument("--img-res", type=int, default=224)
    p.add_argument("--batches", default="1,32", help="batch sizes to time")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=11)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: the machine is shared)")
    p.add_argument("--json", default=None, help="also write the rows to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    models = args.models.split(",") if args.models else (QUICK if args.quick else ALL)
    ratios = [0.3, 0.5] if args.quick and args.ratios == "0.2,0.3,0.5" else [float(r) for r in args.ratios.split(",")]
    img_res = 128 if args.quick and args.img_res == 224 else args.img_res
    repeats = 5 if args.quick and args.repeats == 11 else args.repeats
    batches = [int(b) for b in args.batches.split(",")]

    rows = []
    head = (f"{'model':<24} {'ratio':>5} {'params':>21} {'MACs (M)':>17} {'MACs x':>6}"
            + "".join(f" {'b' + str(b) + ' ms (unpr/pruned)':>22} {'speedup':>7}" for b in batches))
    print(f"CPU, {torch.get_num_threads()} thread(s), {img_res} px, median of {repeats} interleaved runs "
          f"after {args.warmup} warm-up runs")
    print(head)
    for name in models:
        for ratio in ratios:
            row = bench_one(name, ratio, img_res=img_res, batches=batches, warmup=args.warmup, repeats=repeats)
            rows.append(row)
            line = (f"{name:<24} {ratio:>5.2f} {row['params_before']:>10,}>{row['params_after']:>10,} "
                    f"{row['macs_before'] / 1e6:>8.1f}>{row['macs_after'] / 1e6:>8.1f} {row['macs_ratio']:>6.2f}")
            for b in batches:
                before, after = row[f"latency_b{b}_ms"]
                line += f" {before:>10.1f} / {after:>9.1f} {row[f'speedup_b{b}']:>7.2f}"
            print(line, flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
