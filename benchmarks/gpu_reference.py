"""Train a reference-model candidate within a wall-clock budget (a lent GPU's minutes), and bring back what the
CPU side needs: the final model and a few snapshots as fp16 checkpoints, the run's log and the exact command.

    python benchmarks/gpu_reference.py --data data/synthetic --out OUT --deadline-s 480   # batch 32, 200-step epochs

1. A calibration run (`--calib-steps` steps of the same recipe, its own end-of-run evaluation included) measures
   seconds per step and the fixed cost around training (start-up, data loader, evaluation).
2. The number of epochs that fits the time left (times `--safety`) becomes `train.epochs`, so the cosine schedule
   ends where the run ends; `train.snapshot_every` keeps `--snapshots` points of the learning curve.
3. The real run is `compress train recipes/mbv2_baseline.yaml ...` (printed, and stored in OUT/summary.json),
   stopped at the deadline if it overruns (its snapshots and last epoch are still exported, marked as such).
4. OUT gets trained.pt and epoch_*.pt as fp16 (`shipped.save_half`), run.tar.gz (log.jsonl, recipe, metrics,
   train.log) and summary.json; `bench_reference.py curve/ship` score and ship them on the CPU side.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

RECIPE = "recipes/mbv2_baseline.yaml"


def recipe_settings(args) -> list[str]:
    """The candidate's training settings (all but the length, which the budget decides)."""
    return [f"model.img_res={args.img_res}", f"train.batch_size={args.batch}", f"train.lr={args.lr}",
            f"train.encoder_lr={args.lr}", "train.warmup_steps=100", "train.lr_schedule=cosine", "train.pose=10",
            "train.betas=0.1", "train.grad_clip=1.0", f"train.amp={str(args.amp).lower()}",
            f"data.workers={args.workers}", f"data.epoch_length={args.epoch_length}", *args.set]


def train_command(args, run: Path, settings: list[str]) -> list[str]:
    cmd = [sys.executable, "-m", "compress", "train", RECIPE, "--data", str(args.data), "--out", str(run)]
    for s in settings:
        cmd += ["--set", s]
    return cmd


def epoch_records(run: Path) -> list[dict]:
    from compress.report.plots import read_log

    path = run / "log.jsonl"
    return [r for r in read_log(path) if r.get("kind") == "epoch"] if path.is_file() else []


def plan_epochs(time_left_s: float, overhead_s: float, step_s: float, steps_per_epoch: int,
                safety: float) -> int:
    """Epochs whose steps fit in (time_left - overhead) * safety; at least 1."""
    usable = max(0.0, time_left_s - overhead_s) * safety
    return max(1, math.floor(usable / (step_s * steps_per_epoch)))


def calibrate(args, settings: list[str]) -> dict:
    """Seconds per step and fixed cost of one short run of the same recipe."""
    run = Path(args.run).with_name(Path(args.run).name + "_calib")
    shutil.rmtree(run, ignore_errors=True)
    cmd = train_command(args, run, [*settings, "train.epochs=1", f"train.steps_per_epoch={args.calib_steps}"])
    start = time.perf_counter()
    done = subprocess.run(cmd, check=False, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"calibration run failed (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    epoch = epoch_records(run)[-1]
    step_s = epoch["time_s"] / epoch["steps"]
    shutil.rmtree(run, ignore_errors=True)
    return {"wall_s": wall, "steps": epoch["steps"], "step_s": step_s, "overhead_s": wall - epoch["time_s"],
            "images_per_s": epoch.get("images_per_s")}


def export(run: Path, out: Path, keep: int) -> dict:
    """fp16 copies of trained.pt (or the last snapshot) and of up to `keep` snapshots, and the run's text files."""
    from compress.shipped import save_half

    out.mkdir(parents=True, exist_ok=True)
    snaps = sorted((run / "snapshots").glob("epoch_*.pt"))
    final = run / "trained.pt"
    chosen = snaps[:-1][-keep:] if final.is_file() else snaps[-keep - 1:]
    for snap in chosen:
        save_half(snap, out / snap.name)
    if final.is_file():  # with its step count, so `bench_reference.py curve` can plot it as a snapshot too
        last = epoch_records(run)[-1]
        save_half(final, out / "trained.pt", steps=last["step"], epochs=last["epoch"])
    with tarfile.open(out / "run.tar.gz", "w:gz") as tar:
        for name in ("log.jsonl", "recipe.yaml", "metrics", "train.log"):
            if (run / name).exists():
                tar.add(run / name, arcname=name)
    return {"trained": final.is_file(), "snapshots": [s.name for s in chosen]}


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"python": platform.python_version(), "torch": torch.__version__, "gpu": gpu,
            "cpus": os.cpu_count(), "platform": platform.platform()}


def parse_args(argv: list[str] | None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="synthetic (or real) data root")
    p.add_argument("--out", required=True, help="folder for what comes back")
    p.add_argument("--run", default="runs/reference_gpu", help="the training run's folder")
    p.add_argument("--deadline-s", type=float, default=480, help="wall seconds for all of this script")
    p.add_argument("--img-res", type=int, default=64)
    p.add_argument("--batch", type=int, default=32, help="64 at lr 5e-4 diverged on the H200 (step 1,039)")
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=False, help="bf16 autocast on CUDA")
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 3))
    p.add_argument("--epoch-length", type=int, default=6400, help="samples per epoch (data.epoch_length)")
    p.add_argument("--calib-steps", type=int, default=150)
    p.add_argument("--snapshots", type=int, default=4, help="learning-curve points kept (the last is the end)")
    p.add_argument("--safety", type=float, default=0.88, help="fraction of the time left that training may plan on")
    p.add_argument("--set", action="append", default=[], help="more recipe overrides")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    out, run = Path(args.out), Path(args.run)
    settings = recipe_settings(args)
    cal = calibrate(args, settings)
    steps_per_epoch = args.epoch_length // args.batch
    left = args.deadline_s - (time.perf_counter() - start) - 30  # 30 s for the export
    epochs = plan_epochs(left, cal["overhead_s"], cal["step_s"], steps_per_epoch, args.safety)
    every = max(1, epochs // args.snapshots)
    final = [*settings, f"train.epochs={epochs}", f"train.snapshot_every={every}"]
    cmd = train_command(args, run, final)
    print(f"calibration: {cal['step_s'] * 1000:.1f} ms/step, {cal['overhead_s']:.0f} s fixed; plan: {epochs} epochs x "
          f"{steps_per_epoch} steps = {epochs * steps_per_epoch} steps", flush=True)
    print("command:", " ".join(cmd[2:]), flush=True)
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    t0 = time.perf_counter()
    with open(run / "train.log", "w") as log:
        try:
            code = subprocess.run(cmd, check=False, stdout=log, stderr=subprocess.STDOUT,
                                  timeout=max(10.0, left)).returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    train_s = time.perf_counter() - t0
    print(f"training: exit {code} after {train_s:.0f} s", flush=True)
    exported = export(run, out, keep=args.snapshots - 1)
    epochs_done = epoch_records(run)
    summary = {"command": "compress " + " ".join(cmd[3:]), "settings": final, "exit": code, "train_wall_s": train_s,
               "calibration": cal, "planned_steps": epochs * steps_per_epoch,
               "steps": epochs_done[-1]["step"] if epochs_done else 0, "machine": machine(), **exported}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps({k: summary[k] for k in ("exit", "steps", "planned_steps", "train_wall_s", "snapshots")}))
    return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
