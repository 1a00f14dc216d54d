"""Command line: `compress <command>`. Each command parses, makes one library call, and prints.

Heavy modules (torch, torchvision, torch_pruning) are imported inside the handlers so `--help` is instant.
Errors the user can fix exit with code 2 and one line; `--debug` shows the traceback.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import Callable

from compress.devices import AUTO, DEVICE_HELP, resolve_device
from compress.errors import UserError
from compress.cli_output import (eval_progress, make_console, print_json, print_prune_summary, print_rows,
                                 print_summary, progress_bar, rank, train_progress)
from compress.recipe import DATA_ROOT_ENV, DEFAULT_DATA_ROOT, data_root

log = logging.getLogger("compress")

EVAL_KEYS = "3dpw,mpi-inf-3dhp,h36m-p1,h36m-p2,lsp"


# ----------------------------------------------------------------------------------------------- helpers


def _parse_set(pairs: list[str]) -> dict:
    """`--set key=value` model overrides for `info` (values parsed as YAML scalars)."""
    import yaml

    out = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got {pair!r} (e.g. --set encoder_head=logits)")
        key, value = pair.split("=", 1)
        out[key.strip()] = yaml.safe_load(value)
    return out


def _strip_prefix(overrides: dict, prefix: str) -> dict:
    return {k[len(prefix):] if k.startswith(prefix) else k: v for k, v in overrides.items()}


# ----------------------------------------------------------------------------------------------- info


def cmd_info(args) -> int:
    if args.target == "list":
        from compress.models import list_models

        print("\n".join(list_models()))
        return 0
    from compress.profile import model_info

    overrides = _strip_prefix(_parse_set(args.set), "model.overrides.")
    if args.img_res:
        overrides["img_res"] = args.img_res
    info = model_info(args.target, **overrides)
    from compress.shipped import card_summary

    card = card_summary(args.target)
    if args.json:
        print_json({k: v for k, v in info.items() if k != "widths"} | {"widths": info["widths"]} |
                    ({"card": card} if card else {}))
        return 0
    from rich.table import Table

    table = Table(title=f"{info['model']} @ {info['img_res']} px", show_header=False)
    for key, label in [("params_total", "parameters"), ("params_encoder", "  encoder"),
                       ("params_regressor", "  regressor")]:
        table.add_row(label, f"{info[key]:,}")
    table.add_row("MACs", f"{info['macs'] / 1e9:.3f} G  ({info['macs_counter']})")
    table.add_row("widths", " ".join(str(v) for v in info["widths"].values()))
    for key, value in card.items():
        table.add_row(key, value)
    make_console().print(table)
    return 0


# ----------------------------------------------------------------------------------------------- data


def cmd_data_synth(args) -> int:
    from compress.data.synthetic import generate_root

    out = generate_root(Path(args.out), size=args.size, seed=args.seed, force=args.force)
    make_console().print(f"synthetic data root ready: [bold]{out}[/]")
    return 0


def cmd_data_cache(args) -> int:
    from compress.data.cache import build_cache

    root = data_root(args.data)
    path = build_cache(root, args.datasets.split(","), img_res=args.img_res)
    make_console().print(f"HDF5 cache ready: [bold]{path}[/]")
    return 0


# ----------------------------------------------------------------------------------------------- eval


def _default_eval_dir(checkpoint: str) -> Path:
    """Per-sample results go beside the checkpoint: <dir>/eval_<stem>/ (a run dir: its resolved checkpoint)."""
    from compress.runs import eval_dir, resolve_checkpoint

    return eval_dir(checkpoint if Path(checkpoint).suffix == ".onnx" else resolve_checkpoint(checkpoint))


def cmd_eval(args) -> int:
    from compress.eval.protocols import evaluate, evaluate_checkpoint, format_results_table

    if bool(args.checkpoint) == bool(args.reference):
        raise UserError("compress eval needs a checkpoint or --reference rest|mean (not both)")
    device = resolve_device(args.device)
    root = data_root(args.data)
    _ensure_root(root, args)
    common = dict(datasets=args.datasets.split(","), strict=args.datasets != EVAL_KEYS, subset=args.subset,
                  batch_size=args.batch_size)
    with progress_bar() as bar:
        progress = eval_progress(bar)
        if args.reference:
            from compress.eval.reference import reference_model

            model = reference_model(args.reference, root, img_res=args.img_res or 64).to(device)
            results = evaluate(model, root, save_dir=args.save_dir, progress=progress, **common)
        else:
            save_dir = args.save_dir or _default_eval_dir(args.checkpoint)
            results = evaluate_checkpoint(args.checkpoint, root=root, img_res=args.img_res, name=args.name,
                                          device=device, save_dir=save_dir, progress=progress,
                                          **common)
    if args.json:
        print_json(results)
    else:
        what = args.checkpoint or f"the constant {args.reference} pose"
        print_rows(format_results_table(results), title=f"eval {what}")
    return 0


# ----------------------------------------------------------------------------------------------- recipes


def load_recipe_args(args):
    """Load a recipe with `--set` overrides; data.root by compress.recipe.data_root (--data first)."""
    from compress.recipe import load_recipe

    recipe = load_recipe(args.recipe, overrides=list(args.set), root=args.data)
    _ensure_root(recipe.data.root, args)
    return recipe


def _ensure_root(root: str, args) -> None:
    """The default synthetic root is generated on first use (with a progress bar); a root named explicitly (--data,
    --set data.root=, $COMPRESS_DATA_ROOT) that is missing stays an error of the command that reads it."""
    from compress.data.synthetic import default_root_missing, generate_root

    explicit = getattr(args, "data", None) or os.environ.get(DATA_ROOT_ENV) or any(
        o.startswith("data.root=") for o in getattr(args, "set", []) or [])
    if explicit or not default_root_missing(root):
        return
    make_console(stderr=True).print(f"{root} is missing: generating the default synthetic data root (about 2 minutes)")
    with progress_bar() as bar:
        task = bar.add_task(f"synthesize {root}", total=None)
        generate_root(root, size="default", seed=0,
                      progress=lambda _stem, done, total: bar.update(task, completed=done, total=total))


def cmd_train(args) -> int:
    resolve_device(args.device)  # a bad --device fails before any work
    recipe = load_recipe_args(args)
    from compress.train import run_train

    with progress_bar() as bar:
        result = run_train(recipe, out_dir=args.out, resume=args.resume, progress=train_progress(bar, "train"),
                           device=args.device)
    print_summary("train", result)
    return 0


def cmd_prune(args) -> int:
    from compress.prune.run import run_prune
    from compress.shipped import load_prune_recipe

    recipe, start = load_prune_recipe(args.recipe, list(args.set), root=args.data)
    _ensure_root(recipe.data.root, args)
    run = run_prune(recipe, out_dir=args.out)
    metrics = None
    if args.eval:
        from compress.eval.protocols import evaluate_into_run

        with progress_bar() as bar:
            metrics = evaluate_into_run(run.checkpoint, recipe, progress=eval_progress(bar))
    if args.json:
        print_json({**run.to_json(), **({"metrics": metrics} if args.eval else {}),
                     **({"start": start.note()} if start else {})})
    else:
        print_prune_summary(run)
        if start is not None:
            make_console().print(f"[yellow]note:[/] {start.note()}")
        if metrics:
            from compress.eval.protocols import format_results_table

            print_rows(format_results_table(metrics), title="pruned, before fine-tuning")
    return 0


def cmd_finetune(args) -> int:
    from compress.runs import resolve_run
    from compress.train import run_finetune

    resolve_device(args.device)
    run = resolve_run(args.run)  # --run DIR or NAME, else runs/latest
    # the run's recipe keeps the data root it was made with; only --data (or --set data.root=) changes it
    overrides = list(args.set) + ([f"data.root={args.data}"] if args.data else [])
    with progress_bar() as bar:
        result = run_finetune(run, epochs=args.epochs, overrides=overrides, resume=args.resume, out_dir=args.out,
                              progress=train_progress(bar, f"finetune {run.name}"), device=args.device)
    print_summary("finetune", result)
    return 0


def cmd_sensitivity(args) -> int:
    from compress.sensitivity import format_sensitivity_table, recipe_snippet, run_sensitivity

    device = resolve_device(args.device)
    ratios = _parse_floats(args.ratios, "--ratios")
    budget = args.budget if args.budget is not None else min(0.2, max(ratios, default=0.2))
    with progress_bar() as bar:
        result = run_sensitivity(
            args.checkpoint, root=data_root(args.data), ratios=ratios, subset=args.subset,
            datasets=args.datasets.split(","), importance=args.importance, img_res=args.img_res, out_dir=args.out,
            progress=train_progress(bar, "sensitivity"), units=args.units.split(",") if args.units else None,
            rank_by=args.rank_by, budget_ratio=budget, batch_size=args.batch_size, name=args.name,
            device=device,
        )
    if args.json:
        print_json(result)
        return 0
    from rich import box
    from rich.table import Table

    rows = format_sensitivity_table(result)
    table = Table(title=f"sensitivity of {result['checkpoint']}", box=box.SIMPLE_HEAD,
                  caption=f"baseline PA-MPJPE {result['baseline']['pa_mpjpe_mm']:.2f} mm; # 1 loses the least per "
                          f"1% of {result['rank_by']} removed (prune it first); - removes nothing alone")
    for i, head in enumerate(rows[0]):
        table.add_column(head, justify="left" if i == 1 else "right", no_wrap=i == 1)
    for row in rows[1:]:
        table.add_row(*row)
    make_console().print(table)
    make_console().print(f"suggested prune section (channel-weighted average ratio {budget:g}):")
    print(recipe_snippet(result["suggested"]["ratio_by_module"], budget_ratio=budget,
                         importance=result["importance"]), end="")
    make_console().print(f"written: [bold]{result['json']}[/], [bold]{result['plot']}[/]")
    return 0


def _parse_floats(text: str, flag: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated numbers, e.g. 0.1,0.2,0.4; got {text!r}") from None


# ----------------------------------------------------------------------------------------------- report, export


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None


def cmd_report(args) -> int:
    from compress.report import run_report

    fmt = "json" if args.json else args.format
    rows, out = run_report(args.runs or None, baseline=args.baseline, fmt=fmt, plots=args.plots, retime=args.retime,
                           runs_dir=args.runs_dir, device=str(resolve_device(args.device)),
                           onnx=_has_onnxruntime() if args.onnx_latency is None else args.onnx_latency,
                           interleave=args.interleave,
                           width=make_console().width, color=sys.stdout.isatty())
    if fmt == "md":
        make_console().print(f"report written: [bold]{out}[/] ({len(rows)} rows)")
    else:
        sys.stdout.write(out if out.endswith("\n") else out + "\n")
    if args.plots:
        make_console(stderr=True).print(f"plots in [bold]{args.plots}[/]")
    return 0


def cmd_export(args) -> int:
    from compress.export import export_onnx

    info = export_onnx(args.checkpoint, args.onnx, img_res=args.img_res, opset=args.opset,
                       device=resolve_device(args.device))
    if args.json:
        print_json(info)
        return 0
    diff = ", ".join(f"{k} {v:.1e}" for k, v in info["max_abs_diff"].items())
    make_console().print(f"ONNX (opset {info['opset']}, dynamic batch, {info['img_res']} px): [bold]{info['path']}[/]"
                     f" {info['size_mb']:.1f} MB; onnxruntime vs PyTorch max abs diff: {diff}")
    return 0


def cmd_quantize(args) -> int:
    from compress.devices import describe_cpu
    from compress.quantize import QuantSpec, run_quantize, summary_rows

    keep = tuple(k for k in args.keep_fp32.split(",") if k.strip())
    spec = QuantSpec(calib=args.calib, method=args.method, keep_fp32=keep, per_channel=not args.per_tensor,
                     reduce_range=args.reduce_range)
    datasets = [] if args.no_eval else args.datasets.split(",")
    summary = run_quantize(args.target or "runs/latest", spec=spec, data=args.data, out=args.out,
                           datasets=datasets, subset=args.subset, threads=args.threads)
    if args.json:
        print_json(summary)
        return 0
    print_rows(summary_rows(summary), title=f"INT8 (QDQ, {summary['weights']} weights, {summary['activations']} "
                f"activations, {summary['method']} calibration on {summary['calibration_images']} crops)")
    console = make_console()
    console.print(f"CPU: {describe_cpu(summary['cpu'])}: INT8 speed-ups depend on it (largest with VNNI)")
    console.print(f"written: [bold]{summary['int8']}[/] (fp32: {summary['fp32']})")
    return 0


# ----------------------------------------------------------------------------------------------- demo


def cmd_demo(args) -> int:
    from compress.demo import run_demo

    with progress_bar() as bar:
        result = run_demo(quick=args.quick, force=args.force, out=args.out, data=args.data,
                          from_scratch=args.from_scratch, progress=lambda label: train_progress(bar, label))
    from compress.report import print_table

    print_table(result["rows"], console=make_console())
    make_console().print(f"\nruns, report and plots: [bold]{result['out']}[/]  (data root: {result['data_root']})")
    return 0


# ----------------------------------------------------------------------------------------------- parser


def _add_common(p: argparse.ArgumentParser, *, data: bool = False, recipe_set: bool = False) -> None:
    if data:
        p.add_argument("--data", metavar="ROOT", help="data root (default: $COMPRESS_DATA_ROOT or data/synthetic)")
    if recipe_set:
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a recipe field, e.g. --set finetune.lr=1e-4 (repeatable)")


def _recipe_command(sub, name: str, help_: str, *, example: str) -> argparse.ArgumentParser:
    """A subcommand that reads a recipe and writes a run directory (train, prune)."""
    p = sub.add_parser(name, help=help_)
    p.add_argument("recipe", metavar="RECIPE", help=f"recipe YAML, e.g. {example}")
    _add_common(p, data=True, recipe_set=True)
    p.add_argument("--out", default=None, help="run directory (default: runs/<recipe name>)")
    return p


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compress", description="Prune, fine-tune and evaluate HMR-style 3D human mesh recovery models.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="parameters (encoder/regressor), MACs and widths of a model or checkpoint")
    p.add_argument("target", metavar="MODEL|CKPT", help="a zoo model name (see `compress info list`) or a .pt file")
    p.add_argument("--img-res", type=int, default=None, help="input resolution for MACs (default: the model's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="model override, e.g. --set encoder_head=logits (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("data", help="generate the synthetic data root or build the HDF5 crop cache")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    q = dsub.add_parser("synth", help="write a complete SPIN-layout synthetic data root")
    q.add_argument("--out", default=DEFAULT_DATA_ROOT, help="output folder (default: %(default)s)")
    q.add_argument("--size", choices=["small", "default", "large"], default="default",
                   help="small: seconds, for tests; large: default's evaluation sets and 10x its training images")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--force", action="store_true", help="regenerate even if the root is complete")
    q.set_defaults(func=cmd_data_synth)
    q = dsub.add_parser("cache", help="pre-crop images into an HDF5 cache the datasets read instead")
    _add_common(q, data=True)
    q.add_argument("--datasets", default=EVAL_KEYS, help="comma-separated dataset keys (default: %(default)s)")
    q.add_argument("--img-res", type=int, default=224)
    q.set_defaults(func=cmd_data_cache)

    p = sub.add_parser("eval", help="the full HMR evaluation suite on a checkpoint")
    p.add_argument("checkpoint", metavar="CKPT", nargs="?",
                   help="our checkpoint, a run dir, SPIN's model_checkpoint.pt, or an .onnx file (ONNX Runtime)")
    p.add_argument("--reference", choices=("rest", "mean"), default=None,
                   help="score a constant predictor instead: the rest pose, or the root's smpl_mean_params.npz "
                        "(where an untrained model starts); a model not below `mean` on PA-MPJPE learned no "
                        "articulation")
    _add_common(p, data=True)
    p.add_argument("--datasets", default=EVAL_KEYS, help="comma-separated subset of %(default)s")
    p.add_argument("--subset", type=int, default=None, help="first N samples of each dataset")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--img-res", type=int, default=None, help="crop size (default: the model's)")
    p.add_argument("--name", default=None, help="zoo model name for SPIN/bare checkpoints (e.g. hmr_resnet50)")
    p.add_argument("--device", default=AUTO, help=DEVICE_HELP)
    p.add_argument("--save-dir", default=None,
                   help="per-sample results (.npz) and a JSON summary (default: <checkpoint dir>/eval_<stem>/)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_eval)

    p = _recipe_command(sub, "train", "train a baseline HMR for any zoo model (SPIN losses, no discriminator)",
                        example="recipes/mbv2_baseline.yaml")
    p.add_argument("--resume", action="store_true", help="continue from the run's last epoch checkpoint")
    p.add_argument("--device", default=AUTO, help=DEVICE_HELP + "; under torchrun each process takes its local GPU")
    p.set_defaults(func=cmd_train)

    p = _recipe_command(sub, "prune", "structured channel pruning from a recipe -> runs/<name>/pruned.pt",
                        example="recipes/mbv2_p1.yaml")
    p.add_argument("--eval", action="store_true",
                   help="also evaluate the pruned model (before fine-tuning) on the recipe's eval datasets")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("finetune", help="fine-tune a pruned run (default: runs/latest), e.g. --epochs 20 for FT(20)")
    p.add_argument("--run", "--run-dir", dest="run", default=None, metavar="DIR",
                   help="run directory (default: runs/latest); under torchrun spell it --run-dir")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's finetune.epochs)")
    _add_common(p, data=True, recipe_set=True)
    p.add_argument("--out", default=None, metavar="DIR",
                   help="write the fine-tuned model, log and metrics here instead of into the run (e.g. "
                        "--set finetune.distill=null --out runs/mbv2_p1_nokd for a comparison without distillation)")
    p.add_argument("--resume", action="store_true", help="continue from the run's last epoch checkpoint")
    p.add_argument("--device", default=AUTO, help=DEVICE_HELP + "; under torchrun each process takes its local GPU")
    p.set_defaults(func=cmd_finetune)

    p = sub.add_parser("sensitivity", help="prune one layer group at a time, evaluate on a subset, rank; PNG + JSON")
    p.add_argument("checkpoint", metavar="CKPT", help="our checkpoint, a run dir, or SPIN's file with --name")
    _add_common(p, data=True)
    p.add_argument("--ratios", default="0.1,0.2,0.4", help="channel ratios to test (default: %(default)s)")
    p.add_argument("--subset", type=int, default=32, help="first N samples of each dataset (default: %(default)s)")
    p.add_argument("--datasets", default="3dpw,h36m-p2", help="3D datasets averaged (default: %(default)s)")
    p.add_argument("--importance", default="l2", help="channel importance: l1, l2, bn_scale, lamp, fpgm, random")
    p.add_argument("--units", default=None,
                   help="comma-separated module names (default: every encoder stage, fc1, fc2)")
    p.add_argument("--rank-by", choices=["params", "macs"], default="params",
                   help="rank by mm lost per %% of params or of MACs removed (default: %(default)s)")
    p.add_argument("--budget", type=float, default=None,
                   help="average channel ratio of the suggested prune.ratio_by_module (default: 0.2, or the largest "
                        "tested ratio if smaller)")
    p.add_argument("--img-res", type=int, default=None, help="crop size (default: the model's)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--name", default=None, help="zoo model name for SPIN/bare checkpoints (e.g. hmr_resnet50)")
    p.add_argument("--device", default=AUTO, help=DEVICE_HELP)
    p.add_argument("--out", default=None, help="output folder (default: <checkpoint folder>/sensitivity)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_sensitivity)

    p = sub.add_parser("report", help="before/after tables (params, MACs, latency, memory, metrics) vs the baseline")
    p.add_argument("runs", nargs="*", metavar="RUN", help="run directories or names (default: all under runs/)")
    p.add_argument("--baseline", metavar="CKPT", default=None,
                   help="reference for the deltas (default: the root of each run's chain of parents)")
    p.add_argument("--format", choices=["table", "md", "csv", "json"], default="table",
                   help="md writes <runs-dir>/report.md (default: %(default)s)")
    p.add_argument("--plots", metavar="DIR", default=None, help="write PNG plots here")
    p.add_argument("--retime", action="store_true", help="measure latency and memory again (ignore the cache)")
    p.add_argument("--interleave", action="store_true",
                   help="time all rows again in alternation (fair comparison on a busy machine; not cached)")
    p.add_argument("--onnx-latency", action=argparse.BooleanOptionalAction, default=None,
                   help="ONNX Runtime CPU latency columns (batch 1 and 32; default: on when onnxruntime is installed)")
    p.add_argument("--device", default=AUTO, help="device for profiling: " + DEVICE_HELP)
    p.add_argument("--runs-dir", default="runs", help="where runs live (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="same as --format json")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("export", help="export a checkpoint to ONNX (dynamic batch), verified in onnxruntime")
    p.add_argument("checkpoint", metavar="CKPT", help="our checkpoint, a run dir, or a zoo model name")
    p.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx file")
    p.add_argument("--img-res", type=int, default=None, help="input resolution (default: the model's)")
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--device", default=AUTO, help="where the PyTorch reference of the check runs (onnxruntime: its "
                   "CUDA provider on cuda when installed, else the CPU): " + DEVICE_HELP)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("quantize", help="post-training static INT8 in ONNX Runtime (QDQ), timed and scored vs fp32")
    p.add_argument("target", metavar="RUN|CKPT", nargs="?", default=None, help="run dir or checkpoint (default: "
                   "runs/latest); writes <run>/quantized.onnx, <run>/model.onnx and <run>/quantized.json")
    p.add_argument("--calib", type=int, default=64, help="calibration crops from the training sets (default: 64)")
    p.add_argument("--method", default="percentile", help="calibration: percentile (default), minmax or entropy")
    p.add_argument("--keep-fp32", default="", metavar="NAMES",
                   help="comma-separated node-name parts kept in fp32, e.g. decpose,decshape,deccam (the IEF heads; "
                   "default: none, every layer in INT8)")
    p.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor (default: per channel)")
    p.add_argument("--reduce-range", default="auto", choices=("auto", "on", "off"),
                   help="7-bit weights: auto (default) where this CPU has no VNNI, on, off")
    p.add_argument("--data", metavar="ROOT", help="data root (default: the run's, else $COMPRESS_DATA_ROOT or "
                   "data/synthetic)")
    p.add_argument("--datasets", default="3dpw,mpi-inf-3dhp,h36m-p1,h36m-p2", help="evaluated for both models")
    p.add_argument("--subset", type=int, default=None, help="first N samples of each dataset")
    p.add_argument("--no-eval", action="store_true", help="size and latency only")
    p.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads while timing (default: 1)")
    p.add_argument("--out", default=None, metavar="FILE", help="INT8 file (default: <run>/quantized.onnx)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_quantize)

    p = sub.add_parser("demo", help="the whole pipeline on the synthetic benchmark (CPU-sized; resumable)")
    p.add_argument("--quick", action="store_true", help="toy size: about two minutes")
    p.add_argument("--force", action="store_true", help="start over instead of resuming")
    p.add_argument("--from-scratch", action="store_true",
                   help="train the baseline again, stage by stage as the shipped model's card says (hours on 2 CPU "
                        "cores; `compress info checkpoints/mbv2_reference.pt` lists the stages) instead of starting "
                        "from checkpoints/mbv2_reference.pt")
    p.add_argument("--out", default="runs/demo", help="where the demo's runs go (default: %(default)s)")
    p.add_argument("--data", default=None, help="synthetic root to use/create (default: data/synthetic[-small])")
    p.set_defaults(func=cmd_demo)
    return parser


def _setup_logging(debug: bool) -> None:
    from rich.logging import RichHandler

    level = logging.DEBUG if debug else (logging.INFO if rank() == 0 else logging.WARNING)
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=make_console(stderr=True), show_path=debug, show_time=False)])


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from compress import __version__

        print(__version__)
        return 0
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    _setup_logging(args.debug)
    return _run(args.func, args)


def _run(func: Callable, args) -> int:
    try:
        return int(func(args) or 0)
    except UserError as exc:
        if args.debug:
            raise
        print(f"compress: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and friends
        return 0
    except KeyboardInterrupt:
        print("compress: interrupted (completed checkpoints are kept; re-run to resume)", file=sys.stderr)
        return 130
    except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
        if args.debug:
            raise
        print(f"compress: error: {exc.strerror or exc}: {exc.filename}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - last resort: one line instead of a traceback
        if args.debug:
            raise
        print(f"compress: internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
