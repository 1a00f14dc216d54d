"""The reference model's study: learning curves of training runs, and shipping the chosen run as
checkpoints/mbv2_reference.pt with its card.

    # 1. train a candidate, keeping the model every 10 epochs (the shipped model's settings: TRAIN_SETTINGS;
    #    about 2 h on this 2-core CPU, 6 min on an H200 with benchmarks/gpu_reference.py, see gpu_session.sh)
    compress train recipes/mbv2_baseline.yaml --out runs/reference_gpu $(python benchmarks/bench_reference.py \\
        settings) --set train.snapshot_every=10
    # 2. its learning curve: every snapshot scored on the 3D sets -> benchmarks/reference/<label>.json and .png
    python benchmarks/bench_reference.py curve runs/reference_gpu --label gpu_b32_cosine_8600
    #    (a run that started from a trained model's weights: --start-step = that model's steps)
    # 3. ship the run's final model: fp16 weights, re-scored as shipped, card (.json, .md) with its sha256
    python benchmarks/bench_reference.py ship runs/reference_gpu --label gpu_b32_cosine_8600
    #    or keep it in the repository for a later session, which has no runs/: checkpoints/candidates/<label>.pt
    #    and a card whose `stages` are its parent's (the run's model.checkpoint) and then the run's own; a warm
    #    restart then starts from it with --set model.checkpoint=..., and `ship` takes a kept model as it is
    python benchmarks/bench_reference.py keep runs/reference_long --label cpu_warm_from_shipped_28000 \
        --command "compress train ..."
    python benchmarks/bench_reference.py ship checkpoints/candidates/cpu_warm_from_shipped_28000.pt

Snapshots are `snapshots/epoch_*.pt` (train.snapshot_every) or copies of the run's `last.pt` epoch state.
Curves compare PA-MPJPE with the constant mean pose's (`compress eval --reference mean`) and MPJPE with the
untrained model's, the goals of issue 15 (at most 0.75x and 0.6x).
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import torch
import yaml

from compress.checkpoint import load_checkpoint
from compress.eval.protocols import evaluate
from compress.eval.reference import reference_model
from compress.models import create_model
from compress.recipe import load_recipe, overrides_between
from compress.shipped import REFERENCE, card_path, read_card, save_half, sha256, training_stages, write_card

OUT = Path(__file__).resolve().parent / "reference"
SETS = ["3dpw", "h36m-p1", "mpi-inf-3dhp"]
ROOT = "data/synthetic"
IMG_RES = 64
BASE_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mbv2_baseline.yaml"
# The shipped model's training settings (with `compress train recipes/mbv2_baseline.yaml --data data/synthetic`;
# it was trained on a lent GPU by benchmarks/gpu_reference.py, which also set data.workers=14 and
# train.snapshot_every=10: neither changes the model).
TRAIN_SETTINGS = ["model.img_res=64", "train.batch_size=32", "train.lr=0.0005", "train.encoder_lr=0.0005",
                  "train.warmup_steps=100", "train.lr_schedule=cosine", "train.pose=10", "train.betas=0.1",
                  "train.grad_clip=1.0", "train.amp=false", "data.epoch_length=6400", "train.epochs=43"]
# What a run starting from the shipped model takes (shipped.load_prune_recipe; the demo too): its resolution,
# the loss weights it was trained with, fine-tuning rates and batch, and distillation weights matched to them.
# From `bench_ftlen.py` on the stage-1 (H200) model, P1+FT(20)+KD, mean PA-MPJPE vs the reference: rates 3e-5 / 3e-4
# +4.2%, 1e-4 / 1e-3 +7.4%, 1e-5 / 1e-4 +4.1%; at 3e-5 / 3e-4 distillation weights (rotmat / joints) 10 / 5 +4.2%,
# 30 / 15 +3.7%, 100 / 50 +2.9%, 300 / 150 +3.4%. Re-swept on the stage-3 model (rates, batch, warm-up, distillation
# weights, data mix, criterion, length; ftlen_kd_s3_*.json): nothing beat these by more than the seed noise.
SETTINGS = ["model.img_res=64", "finetune.batch_size=32", "finetune.lr=3e-5", "finetune.encoder_lr=3e-4",
            "finetune.warmup_steps=100", "finetune.pose=10", "finetune.betas=0.1", "finetune.grad_clip=1.0",
            "finetune.distill.rotmat=100", "finetune.distill.joints=50"]


def snapshot_model(path: Path) -> tuple[torch.nn.Module, int]:
    """(model, step) of a snapshot checkpoint or a copy of a run's last.pt epoch state."""
    raw = torch.load(path, map_location="cpu", weights_only=True)
    if "format_version" in raw:
        model, meta = load_checkpoint(path)
        return model, int(meta.get("steps") or 0)
    model = create_model("hmr_mobilenet_v2", img_res=IMG_RES)
    model.load_state_dict(raw["state_dict"])
    return model.eval(), int(raw["step"])


def score(model: torch.nn.Module, sets: list[str] = SETS) -> dict:
    return evaluate(model.eval(), ROOT, datasets=sets, img_res=IMG_RES, workers=0)


def references() -> dict:
    """Mean pose and untrained model on the same sets (cached in OUT/references.json)."""
    path = OUT / "references.json"
    if path.is_file():
        return json.loads(path.read_text())
    torch.manual_seed(0)
    untrained = create_model("hmr_mobilenet_v2", img_res=IMG_RES, mean_params=f"{ROOT}/smpl_mean_params.npz")
    refs = {"mean_pose": score(reference_model("mean", ROOT, img_res=IMG_RES)), "untrained": score(untrained)}
    OUT.mkdir(exist_ok=True)
    path.write_text(json.dumps(refs, indent=2))
    return refs


def ratios(metrics: dict, refs: dict) -> dict:
    return {ds: {"pa_vs_mean_pose": metrics[ds]["pa_mpjpe_mm"] / refs["mean_pose"][ds]["pa_mpjpe_mm"],
                 "mpjpe_vs_untrained": metrics[ds]["mpjpe_mm"] / refs["untrained"][ds]["mpjpe_mm"]} for ds in SETS}


def cmd_curve(args) -> None:
    run = Path(args.run)
    refs = references()
    path = OUT / f"{args.label}.json"
    done = {p["file"]: p for p in json.loads(path.read_text())["points"]} if path.is_file() else {}
    points = []
    for snap in sorted((run / "snapshots").glob("epoch_*.pt"), key=lambda p: int(p.stem.split("_")[1])):
        if snap.name in done:  # scored by an earlier call
            points.append(done[snap.name])
            continue
        model, step = snapshot_model(snap)
        m = score(model)
        points.append({"step": step, "file": snap.name, "metrics": m, "ratios": ratios(m, refs)})
        print(f"step {step:>6}: PA-MPJPE " + " / ".join(f"{m[d]['pa_mpjpe_mm']:.1f}" for d in SETS) +
              "  (x mean pose " + " / ".join(f"{points[-1]['ratios'][d]['pa_vs_mean_pose']:.2f}" for d in SETS) + ")",
              flush=True)
    curve = {"label": args.label, "run": str(run), "command": args.command or _command(run), "sets": SETS,
             "references": refs, "start_step": args.start_step, "points": points,
             "wall_s": sum(r.get("time_s", 0) for r in epoch_records(run))}
    OUT.mkdir(exist_ok=True)
    path.write_text(json.dumps(curve, indent=2))
    plot_curves(sorted(OUT.glob("*.json")))


def epoch_records(run: Path) -> list[dict]:
    """The run's per-epoch records of log.jsonl (step, epoch, time_s, ...)."""
    lines = (run / "log.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "epoch"]


def _command(run: Path) -> str:
    recipe = run / "recipe.yaml"
    return f"compress train recipes/mbv2_baseline.yaml (stored: {recipe})" if recipe.is_file() else ""


def plot_curves(files: list[Path]) -> Path:
    """PA-MPJPE / mean pose against steps, one line per curve and set."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.lines import Line2D

    fig, ax = plt.subplots(figsize=(9, 4.5))
    styles = dict(zip(SETS, ("-", "--", ":")))
    runs = []
    for f in files:
        curve = json.loads(f.read_text())
        if "points" not in curve:
            continue
        color = f"C{len(runs) % 10}"  # one colour per run, one line style per set
        runs.append(Line2D([], [], color=color, marker=".", label=curve["label"]))
        start = curve.get("start_step", 0)  # a run that continued from a trained model: its steps come after
        for ds, style in styles.items():
            ax.plot([start + p["step"] for p in curve["points"]],
                    [p["ratios"][ds]["pa_vs_mean_pose"] for p in curve["points"]], style, color=color, marker=".")
    ax.axhline(0.75, color="grey", lw=0.8)
    ax.set_xlabel("optimizer steps (batch 32)")
    ax.set_ylabel("PA-MPJPE / mean pose's")
    sets = [Line2D([], [], color="black", ls=style, label=ds) for ds, style in styles.items()]
    ax.legend(handles=runs + sets, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    out = OUT / "curves.png"
    fig.savefig(out, dpi=110)
    return out


def cmd_ship(args) -> None:
    if args.run.endswith(".pt"):
        return ship_candidate(Path(args.run), args.history)
    if not args.label:
        raise SystemExit("ship RUN needs --label (the run's curve)")
    run = Path(args.run)
    if _parent_card(run):  # its card must chain the stages: keep records them
        raise SystemExit(f"{run} continued a model with a card: `keep` it first, then ship the kept file")
    src = run / "trained.pt"
    meta = json.loads((run / "metrics" / "trained.json").read_text())
    t0 = time.time()
    save_half(src, REFERENCE)
    model, _ = load_checkpoint(REFERENCE)
    metrics = evaluate(model, ROOT, img_res=IMG_RES, workers=0)  # the whole suite, as shipped (fp16 -> fp32)
    save_half(src, REFERENCE, metrics=metrics, stage="trained")
    refs = references()
    epochs = epoch_records(run)
    command, machine = _provenance(run)
    card = {
        "model": "hmr_mobilenet_v2", "img_res": IMG_RES, "weights": "fp16 (loaded as fp32)",
        "command": command, "train_settings": TRAIN_SETTINGS, "settings": SETTINGS, "seed": 0,
        "history": args.history, "steps": epochs[-1]["step"], "epochs": epochs[-1]["epoch"],
        "wall_s": round(sum(r.get("time_s", 0) for r in epochs)), "machine": machine,
        "data_root": root_info(ROOT),
        "metrics": metrics, "metrics_fp32": meta["metrics"], "references": refs, "ratios": ratios(metrics, refs),
        "curve": args.label, "noise": None,  # a new model: bench_distill.py --card measures its band again
    }
    write_model_card(write_card(REFERENCE, card))
    print(f"shipped {REFERENCE} ({REFERENCE.stat().st_size / 1e6:.1f} MB) in {time.time() - t0:.0f} s")


def ship_candidate(path: Path, history: str) -> None:
    """A kept candidate (`keep`) becomes the shipped model: the same bytes, its card with the settings runs from
    the shipped model take and no noise band yet (bench_distill.py --card measures it for the new model)."""
    kept = read_card(path)
    if not kept or sha256(path) != kept.get("sha256"):
        raise SystemExit(f"{path}: no card, or the file does not match its card's sha256")
    shutil.copyfile(path, REFERENCE)
    card = {k: v for k, v in kept.items() if k != "shipped"}
    card.update(train_settings=training_stages(kept)[0]["settings"], settings=SETTINGS, history=history, noise=None)
    write_model_card(write_card(REFERENCE, card))
    print(f"shipped {path} as {REFERENCE} ({REFERENCE.stat().st_size / 1e6:.1f} MB); measure its noise band next")


CANDIDATES = REFERENCE.parent / "candidates"


def cmd_keep(args) -> None:
    """A run worth shipping later, kept in the repository (runs/ is not): fp16 weights in checkpoints/candidates/
    with a card in the shipped card's format whose `stages` are the stages of the model it continued from (the run's
    model.checkpoint) and then this run's, so that `ship FILE` or a further warm restart can start from it."""
    run = Path(args.run)
    out = CANDIDATES / f"{args.label}.pt"
    CANDIDATES.mkdir(parents=True, exist_ok=True)
    save_half(run / "trained.pt", out)
    model, _ = load_checkpoint(out)
    metrics = evaluate(model, ROOT, img_res=IMG_RES, workers=0)  # as kept (fp16 -> fp32)
    save_half(run / "trained.pt", out, metrics=metrics, stage="trained")
    parent, refs = _parent_card(run), references()
    stage = run_stage(run, args.command)
    if parent:  # the file it started from, as it was then (a later `ship` may replace it)
        stage["start"] = {"file": _start(run), "sha256": parent["sha256"]}
    stages = (training_stages(parent) if parent else []) + [stage]
    card = {
        "model": "hmr_mobilenet_v2", "img_res": IMG_RES, "weights": "fp16 (loaded as fp32)", "shipped": False,
        "command": args.command, "seed": 0, "stages": stages, "steps": sum(st["steps"] for st in stages),
        "epochs": stages[-1]["epochs"], "wall_s": sum(st["wall_s"] for st in stages),
        "machine": stages[-1]["machine"], "data_root": stages[-1]["data"], "metrics": metrics, "references": refs,
        "ratios": ratios(metrics, refs), "curve": args.label,
    }
    card = write_card(out, card)
    print(f"kept {out} ({card['bytes'] / 1e6:.1f} MB, sha256 {card['sha256'][:16]}): PA-MPJPE / mean pose " +
          " / ".join(f"{card['ratios'][d]['pa_vs_mean_pose']:.2f}" for d in SETS))


# a run's recipe keys that do not change the model it trains, or that a stage gets elsewhere (its start, its root)
NOT_SETTINGS = ["model.checkpoint", "data.root", "data.workers", "train.snapshot_every", "train.log_every",
                "train.checkpoint_every_epoch"]


def run_stage(run: Path, command: str) -> dict:
    """One training stage of a card: the run's `--set` overrides of recipes/mbv2_baseline.yaml (from its stored
    recipe), its data root, steps, epochs, wall time, this machine and the exact command."""
    ran = load_recipe(run / "recipe.yaml", env=False)
    base = load_recipe(BASE_RECIPE, [f"data.root={ran.data.root}"], env=False)
    settings = [s for s in overrides_between(base, ran, skip=NOT_SETTINGS) if not s.startswith(("eval.", "name="))]
    epochs = epoch_records(run)
    return {"command": command, "settings": settings, "data": root_info(ran.data.root),
            "steps": epochs[-1]["step"], "epochs": epochs[-1]["epoch"],
            "wall_s": round(sum(r.get("time_s", 0) for r in epochs)),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}"}


def root_info(root: str) -> dict:
    """A synthetic root as cards record it: path, size, seed and training images."""
    synth = json.loads((Path(root) / "synthetic.json").read_text())
    return {"path": str(root), "size": synth["size"], "seed": synth["seed"],
            "train_images": sum(v for k, v in synth["files"].items() if k.endswith("_train"))}


def _start(run: Path) -> str | None:
    """The run's starting weights (its stored recipe's model.checkpoint)."""
    return (yaml.safe_load((run / "recipe.yaml").read_text()).get("model") or {}).get("checkpoint")


def _parent_card(run: Path) -> dict | None:
    """The card of the model a run started from, if that model has one."""
    start = _start(run)
    return read_card(start) if start and Path(start).is_file() else None


def cmd_restate(args) -> None:
    """The card's `settings` (what runs from the shipped model take) set to SETTINGS, and its .md rewritten; the
    noise band, measured at the old settings, is dropped until bench_distill.py --card measures it again."""
    card = read_card(REFERENCE)
    if card["settings"] == SETTINGS:
        print("the card already has these settings")
        return
    old = card["settings"]
    card = {**card, "settings": SETTINGS, "noise": None if args.drop_noise else card.get("noise")}
    write_model_card(write_card(REFERENCE, card))
    print("settings: " + ", ".join(f"{a} -> {b}" for a, b in zip(old, SETTINGS) if a != b))


def _provenance(run: Path) -> tuple[str, str]:
    """(exact training command, machine) of a run: from gpu_reference.py's summary (gpu_summary.json, the run
    trained on a lent GPU) or, for a run trained here, TRAIN_SETTINGS and this machine."""
    summary = run / "gpu_summary.json"
    if summary.is_file():
        s = json.loads(summary.read_text())
        m = s["machine"]
        return s["command"], (f"{m['gpu']} (data loading on {m['cpus']} CPU cores), torch {m['torch']}, "
                              f"trained by benchmarks/gpu_reference.py")
    return ("compress train recipes/mbv2_baseline.yaml --data data/synthetic " +
            " ".join(f"--set {s}" for s in TRAIN_SETTINGS),
            f"{platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")


def write_model_card(card: dict) -> Path:
    """checkpoints/mbv2_reference.md from the JSON card."""
    rows = "\n".join(
        f"| {ds} | {m.get('mpjpe_mm', float('nan')):.1f} | {m.get('pa_mpjpe_mm', float('nan')):.1f} | "
        f"{card['references']['mean_pose'][ds]['pa_mpjpe_mm']:.1f} | {card['ratios'][ds]['pa_vs_mean_pose']:.2f} | "
        f"{card['references']['untrained'][ds]['mpjpe_mm']:.1f} | {card['ratios'][ds]['mpjpe_vs_untrained']:.2f} |"
        for ds, m in card["metrics"].items() if ds in SETS)
    lsp = card["metrics"].get("lsp", {})
    text = f"""# mbv2_reference: HMR-MobileNetV2 trained on the synthetic benchmark

The model every pruning run here starts from unless it has its own baseline (`prune.fallback` of the MobileNetV2
recipes, `compress demo`). Written by `python benchmarks/bench_reference.py ship`; the JSON card beside it is the
machine-readable version (a test checks the file's sha256 against it).

- file: `{card['file']}`, {card['bytes'] / 1e6:.1f} MB, sha256 `{card['sha256']}`
- weights: {card['weights']}; model `{card['model']}`, input {card['img_res']} px
{_made_by(card)}
- runs starting from it take: `{' '.join(card['settings'])}`

| set | MPJPE mm | PA-MPJPE mm | mean pose PA | PA / mean pose | untrained MPJPE | MPJPE / untrained |
|---|---:|---:|---:|---:|---:|---:|
{rows}

LSP: FG/BG accuracy {lsp.get('fb_acc', float('nan')):.2f}%, F1 {lsp.get('fb_f1', float('nan')):.3f}; parts
accuracy {lsp.get('parts_acc', float('nan')):.2f}%, F1 {lsp.get('parts_f1', float('nan')):.3f}. Metrics of the
file as shipped (fp16 weights restored to fp32), all samples of each evaluation set.
"""
    out = card_path(REFERENCE).with_suffix(".md")
    out.write_text(text)
    return out


def _made_by(card: dict) -> str:
    """The card's lines on how the model was made: one stage, or each stage in order (a warm restart of the one
    before it)."""
    history = f"; {card['history']}" if card.get("history") else ""
    stages = training_stages(card)
    lines = [f"- made by: `{card['command']}` (seed {card['seed']}){history}"] if len(stages) == 1 else [
        f"- made in {len(stages)} stages (seed {card['seed']}), each starting from the one before{history}:"]
    for i, st in enumerate(stages, 1):
        data = st["data"]
        where = (f"{st['steps']:,} optimizer steps, {st['wall_s'] / 60:.0f} min on {st['machine']}; data "
                 f"`{data['path']}` ({data['size']} synthetic root, seed {data['seed']}, "
                 f"{data['train_images']:,} training images)")
        start = f" (it started from `{st['start']['file']}` as it was then, sha256 {st['start']['sha256'][:16]}…)" \
            if st.get("start") else ""
        lines.append(f"- {where}" if len(stages) == 1 else f"  {i}. `{st['command']}`{start}: {where}")
    lines.append(f"- learning curve: `benchmarks/reference/{card['curve']}.json`")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("curve", help="score a run's snapshots")
    c.add_argument("run")
    c.add_argument("--label", required=True)
    c.add_argument("--start-step", type=int, default=0,
                   help="steps the run's starting weights had trained (model.checkpoint), so the plot continues them")
    c.add_argument("--command", default="", help="the exact command that trained the run (else the recipe's path)")
    c.set_defaults(func=cmd_curve)
    s = sub.add_parser("ship", help="write checkpoints/mbv2_reference.pt and its card")
    s.add_argument("run", help="a run directory, or a model kept with `keep` (checkpoints/candidates/<label>.pt)")
    s.add_argument("--label", help="the run's curve (benchmarks/reference/<label>.json); a kept model's card has it")
    s.add_argument("--history", default="", help="how the run deviated from its command, if it did")
    s.set_defaults(func=cmd_ship)
    k = sub.add_parser("keep", help="keep a run's model as checkpoints/candidates/<label>.pt with a card")
    k.add_argument("run")
    k.add_argument("--label", required=True, help="the run's curve (benchmarks/reference/<label>.json)")
    k.add_argument("--command", required=True, help="the exact command that trained the run")
    k.set_defaults(func=cmd_keep)
    r = sub.add_parser("restate", help="write SETTINGS into the card (what runs from the shipped model take)")
    r.add_argument("--drop-noise", action="store_true", help="drop the card's noise band (measured at old settings)")
    r.set_defaults(func=cmd_restate)
    sub.add_parser("settings", help="print the shipped model's training command as --set flags").set_defaults(
        func=lambda a: print(" ".join(f"--set {x}" for x in TRAIN_SETTINGS)))
    args = p.parse_args(argv)
    args.func(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
