"""`make gpu-check`: every CUDA path of compress, once, on the small synthetic root, in a few minutes.

One line per path: PASS/FAIL, the figures (GPU ms, GPU MB, images/s) and the seconds it took; then `N passed,
M failed`. Exit 1 when any path failed. Without CUDA it says so in one line and exits 0 (`--device cpu` runs the
same checks on the CPU, skipping the CUDA-only ones: a dry run of this script's plumbing).

Paths: AMP fp16 (GradScaler) and bf16 training, channels-last, torch.compile, resume of a CUDA run, DDP over NCCL
(torchrun; SyncBatchNorm when there are 2+ GPUs), synchronised GPU latency and max_memory_allocated (the report's
profile), Taylor importance with a latency target on CUDA, evaluation, the report and the ONNX export check.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Callable

import torch

REPO = Path(__file__).resolve().parent.parent
RECIPES = REPO / "recipes"
RES = 64
BATCH = {"default": 16, "small": 4}  # the small root's training mix holds 6 samples
SIZE = "default"


class Checks:
    """Runs named checks, prints one line each, counts."""

    def __init__(self) -> None:
        self.passed = self.failed = self.skipped = 0

    def run(self, name: str, check: Callable[[], str]) -> None:
        start = time.perf_counter()
        try:
            figures = check()
        except Skip as why:
            self.skipped += 1
            print(f"SKIP  {name:<34} {why}", flush=True)
            return
        except Exception as exc:  # noqa: BLE001 - every failure is reported, the other checks still run
            self.failed += 1
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            print(f"FAIL  {name:<34} {type(exc).__name__}: {first} ({time.perf_counter() - start:.1f} s)", flush=True)
            if os.environ.get("GPU_CHECK_DEBUG"):
                traceback.print_exc()
            return
        self.passed += 1
        print(f"PASS  {name:<34} {figures} ({time.perf_counter() - start:.1f} s)", flush=True)


class Skip(Exception):
    pass


def _recipe(root: Path, *overrides: str):
    from compress.recipe import load_recipe

    return load_recipe(RECIPES / "mbv2_baseline.yaml", [
        f"data.root={root}", f"model.img_res={RES}", "data.workers=2", "train.epochs=1", "train.steps_per_epoch=12",
        f"train.batch_size={BATCH[SIZE]}", "eval.subset=8", "eval.datasets=[3dpw]", *overrides])


def _train(root: Path, out: Path, device: str, *overrides: str, resume: bool = False) -> dict:
    from compress.train import run_train

    return run_train(_recipe(root, *overrides), out_dir=out, device=device, resume=resume)


def _train_figures(result: dict) -> str:
    mem = result.get("peak_train_mem_mb")
    return f"{result['images_per_s']:.0f} images/s" + (f", {mem:.0f} MB GPU peak" if mem else "")


def _need_cuda(device: str) -> None:
    if not device.startswith("cuda"):
        raise Skip("CUDA only")


def check_amp(root: Path, tmp: Path, device: str, dtype: str) -> str:
    _need_cuda(device)
    if dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise Skip("no bf16 on this GPU")
    result = _train(root, tmp / f"amp_{dtype}", device, "train.amp=true", f"train.amp_dtype={dtype}")
    return _train_figures(result)


def check_channels_last(root: Path, tmp: Path, device: str) -> str:
    return _train_figures(_train(root, tmp / "cl", device, "train.channels_last=true"))


def check_compile(root: Path, tmp: Path, device: str) -> str:
    _need_cuda(device)  # inductor on the CPU compiles for minutes: not part of the dry run
    return _train_figures(_train(root, tmp / "compiled", device, "train.compile=true", "train.amp=true"))


def check_resume(root: Path, tmp: Path, device: str) -> str:
    out = tmp / "resume"
    _train(root, out, device)
    result = _train(root, out, device, "train.epochs=2", resume=True)
    if result["epochs"] != 2 or not (out / "trained.pt").is_file():
        raise AssertionError(f"resumed run ended at epoch {result['epochs']}")
    return f"epoch 1 -> 2 resumed, {_train_figures(result)}"


def check_ddp(root: Path, tmp: Path, device: str) -> str:
    _need_cuda(device)
    n = min(torch.cuda.device_count(), 2)
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={n}", "-m", "compress", "train",
           str(RECIPES / "mbv2_baseline.yaml"), "--data", str(root), "--out", str(tmp / "ddp"),
           "--set", f"model.img_res={RES}", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=8",
           "--set", f"train.batch_size={BATCH[SIZE]}", "--set", "eval.subset=8", "--set", "eval.datasets=[3dpw]"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp)
    if done.returncode != 0:
        raise RuntimeError((done.stderr.strip().splitlines() or ["torchrun failed"])[-1])
    sync = "SyncBatchNorm" if n > 1 else "1 GPU: NCCL group and DDP wrapper only, no BatchNorm sync"
    return f"torchrun x{n} over NCCL ({sync})"


def check_profile(ckpt: Path, device: str) -> str:
    from compress.profile import profile_checkpoint

    prof = profile_checkpoint(ckpt, device=device, retime=True, batch_sizes=(1, 32), repeats=10)
    mem = prof["peak_mem_mb"]
    return (f"latency b1 {prof['latency']['b1']['median_ms']:.2f} ms, b32 {prof['latency']['b32']['median_ms']:.2f}"
            f" ms; peak memory infer {mem['infer_measured']:.0f} MB, train {mem['train_measured']:.0f} MB "
            f"({mem['method']})")


def check_taylor_latency(root: Path, tmp: Path, device: str, ckpt: Path) -> str:
    from compress.prune.run import run_prune
    from compress.recipe import load_recipe

    batch = 32 if device.startswith("cuda") else 1  # the CPU dry run keeps the lookup table's timings short
    recipe_file = tmp / "lat.yaml"
    recipe_file.write_text(
        f"name: lat\nmodel: {{name: hmr_mobilenet_v2, img_res: {RES}}}\ndata: {{root: '{root}', workers: 0}}\n"
        f"prune:\n  from: '{ckpt}'\n  importance: taylor\n  calibration: 2\n"
        f"  target: {{latency_ratio: 0.8, device: {device}, latency_batch: {batch}}}\n")
    run = run_prune(load_recipe(recipe_file), out_dir=tmp / "lat")
    t = run.result.target
    return (f"{t.baseline_ms:.2f} -> {t.measured_ms:.2f} ms at batch {batch}, {t.lut_entries} layer timings "
            f"(target {'met' if t.met else 'NOT met'})")


def check_eval(root: Path, device: str, ckpt: Path) -> str:
    from compress.eval.protocols import evaluate_checkpoint

    start = time.perf_counter()
    results = evaluate_checkpoint(ckpt, root=root, device=torch.device(device), datasets=["3dpw", "h36m-p2"])
    n = sum(r["n"] for r in results.values())
    return f"{n} samples, {n / (time.perf_counter() - start):.0f} images/s incl. loading"


def check_report(tmp: Path, device: str) -> str:
    from compress.report import run_report

    rows, _ = run_report([tmp / "lat"], fmt="json", runs_dir=tmp, device=device)
    base, pruned = rows[0], rows[1]
    return (f"{len(rows)} rows; baseline {base['latency_ms']:.2f} ms, pruned {pruned['latency_ms']:.2f} ms "
            f"on {device}; GPU column {pruned['gpu_latency_ms']}")


def check_export(tmp: Path, device: str, ckpt: Path) -> str:
    from compress.export import export_onnx

    info = export_onnx(ckpt, tmp / "model.onnx", device=torch.device(device))
    return f"max |onnxruntime - PyTorch on {device}| {info['max_abs_diff_all']:.1e}"


def check_ort_cuda(tmp: Path, device: str) -> str:
    """ONNX Runtime's CUDA execution provider (onnxruntime-gpu): the exported model timed there at batch 1."""
    from compress.export import onnx_latency
    from compress.report.costs import cuda_provider_missing

    _need_cuda(device)
    why = cuda_provider_missing()
    if why:
        raise Skip(why)
    stats = onnx_latency(tmp / "model.onnx", img_res=RES, batch=1, repeats=50, device=torch.device(device))
    return f"{stats['median_ms']:.2f} ms at batch 1 ({stats['device']})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a dry run of the script)")
    parser.add_argument("--size", choices=sorted(BATCH), default="default",
                        help="synthetic root: default (~2.4k training images, about a minute to generate) or small")
    args = parser.parse_args(argv)
    global SIZE
    SIZE = args.size
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu-check: no CUDA on this machine (torch.cuda.is_available() is False): nothing to check")
        return 0
    from compress.data.synthetic import generate_root

    checks = Checks()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp_name:
        tmp = Path(tmp_name)
        name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
        print(f"gpu-check on {name}, torch {torch.__version__}, {RES} px, {SIZE} synthetic root", flush=True)
        root = generate_root(tmp / "root", size=SIZE, seed=0)
        device = args.device
        checks.run("train fp32", lambda: _train_figures(_train(root, tmp / "base", device, "train.amp=false")))
        ckpt = tmp / "base" / "trained.pt"
        checks.run("train AMP fp16 + GradScaler", lambda: check_amp(root, tmp, device, "fp16"))
        checks.run("train AMP bf16", lambda: check_amp(root, tmp, device, "bf16"))
        checks.run("train channels-last", lambda: check_channels_last(root, tmp, device))
        checks.run("train torch.compile", lambda: check_compile(root, tmp, device))
        checks.run("resume a run", lambda: check_resume(root, tmp, device))
        checks.run("DDP (torchrun, NCCL)", lambda: check_ddp(root, tmp, device))
        checks.run("latency + memory profile", lambda: check_profile(ckpt, device))
        checks.run("taylor + latency target", lambda: check_taylor_latency(root, tmp, device, ckpt))
        checks.run("eval", lambda: check_eval(root, device, ckpt))
        checks.run("report", lambda: check_report(tmp, device))
        checks.run("ONNX export check", lambda: check_export(tmp, device, ckpt))
        checks.run("ONNX Runtime CUDA provider", lambda: check_ort_cuda(tmp, device))
    print(f"{checks.passed} passed, {checks.failed} failed" + (f", {checks.skipped} skipped" if checks.skipped else ""))
    return 1 if checks.failed else 0


if __name__ == "__main__":
    sys.exit(main())
