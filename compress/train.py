"""Training and fine-tuning: one loop for `compress train` (a baseline) and `compress finetune` (a pruned run).

Plain functions: `train_step`, `train_one_epoch`, `fit`, and the entry points `run_train` / `run_finetune`.
SPIN's losses without the discriminator and without SMPLify in the loop (compress.losses); SPIN's static fits
(`<root>/static_fits`) are the SMPL targets of samples without SMPL ground truth when present. Adam, constant LR
(SPIN). The losses call a joints-only SMPL (`SMPLJoints`) unless the vertex loss is on. Evaluation is
compress.eval.protocols.evaluate, the one evaluation function.

Exact resume: every epoch starts by seeding torch/numpy/python from (seed, epoch, rank) and builds its DataLoader
with a generator seeded the same way (the DistributedSampler order depends on seed + epoch only), so the random
stream of epoch e does not depend on how the process got there. An epoch checkpoint (`last.pt`, atomic) holds the
model, optimizer, scheduler, scaler, epoch, step, sampler seed/epoch and the RNG states; resuming after a SIGKILL
re-runs the unfinished epoch and ends with the weights of an uninterrupted run.

DDP (torchrun; the process group, seeding and BatchNorm sync are compress.distributed): the global batch
`batch_size` is split evenly over the processes, so a run on N processes takes the same optimizer steps as a single
process. Dropout draws from per-rank RNG streams (seeded from seed, epoch, rank): with dropout > 0 the ranks see
different masks than a single process would (the weights stay identical across ranks).
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn as nn

from compress.checkpoint import load_checkpoint, save_checkpoint
from compress.data.datasets import training_set
from compress.data.fits import StaticFits
from compress.distributed import (DistInfo, all_reduce_mean, barrier, distributed_job, epoch_seed, rng_state,
                                  seed_all, select_device, set_rng_state, set_sync_batchnorm)
from compress.devices import AUTO, resolve_device
from compress.errors import UserError
from compress.eval.protocols import evaluate, present_datasets
from compress.io import atomic_torch_save, atomic_write_json, atomic_write_text, json_text
from compress.models import regressor_parameters
from compress.losses import (LossWeights, batch_targets, check_finite, compute_losses, distill_losses, loss_values,
                             loss_weights, spin_batch_terms)
from compress.recipe import Recipe, TrainSpec, save_recipe
from compress.runs import (FINETUNED, LAST, LOG_FILE, SNAPSHOTS, PRUNED, RECIPE_FILE, RUNS_DIR, TRAINED, Lineage,
                           load_run_recipe, metrics_file, resolve_ref)
from compress.smpl import training_smpl
from compress.start import initial_model, load_named

log = logging.getLogger(__name__)

STATE_FORMAT = "compress-train-state/1"

Progress = Callable[[int, int, dict], None]  # (done steps, total steps, running values)


# ----------------------------------------------------------------------------------------------- state and step


@dataclasses.dataclass
class TrainState:
    """Everything a training step touches. `model` is the bare module (saved, evaluated); `net` is what the step
    calls (the model, DDP-wrapped and/or compiled)."""

    model: nn.Module
    net: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    smpl: nn.Module
    weights: LossWeights
    img_res: int
    device: torch.device
    dist: DistInfo = DistInfo()
    scaler: torch.amp.GradScaler | None = None
    amp_dtype: torch.dtype | None = None
    channels_last: bool = False
    teacher: nn.Module | None = None
    fits: StaticFits | None = None  # SMPL targets where has_smpl is 0
    grad_clip: float = 0.0  # max gradient norm; 0 = off (SPIN does not clip)
    epoch: int = 0  # completed epochs
    step: int = 0  # optimizer steps taken


def _autocast(state: TrainState):
    if state.amp_dtype is None:
        return torch.autocast(state.device.type, enabled=False)
    return torch.autocast(state.device.type, dtype=state.amp_dtype)


def train_step(state: TrainState, batch: dict) -> dict[str, float]:
    """One optimizer step on one batch; returns the loss values (averaged over ranks under DDP)."""
    img = batch["img"].to(state.device, non_blocking=True)
    if state.channels_last:
        img = img.contiguous(memory_format=torch.channels_last)
    targets = batch_targets(batch, state.device, fits=state.fits)
    with _autocast(state):
        out = state.net(img)
    terms, pred = spin_batch_terms(out, state.smpl, targets, weights=state.weights, img_res=state.img_res)
    if state.teacher is not None:
        with torch.no_grad():
            with _autocast(state):
                t_out = state.teacher(img)
            t_joints = state.smpl(t_out["rotmat"].float(), t_out["betas"].float()).joints  # (B, 49, 3)
        terms.update(distill_losses(out, t_out, joints=pred.joints, teacher_joints=t_joints, weights=state.weights))
    losses = compute_losses(terms, state.weights)
    values = all_reduce_mean(loss_values(losses), state.dist, state.device)
    check_finite(values, where=f"epoch {state.epoch + 1}, step {state.step + 1}")

    state.optimizer.zero_grad(set_to_none=True)
    if state.scaler is not None:
        state.scaler.scale(losses["total"]).backward()
        if state.grad_clip:
            state.scaler.unscale_(state.optimizer)
            nn.utils.clip_grad_norm_(state.model.parameters(), state.grad_clip)
        state.scaler.step(state.optimizer)
        state.scaler.update()
    else:
        losses["total"].backward()
        if state.grad_clip:
            nn.utils.clip_grad_norm_(state.model.parameters(), state.grad_clip)
        state.optimizer.step()
    state.scheduler.step()
    state.step += 1
    return values


def train_one_epoch(state: TrainState, loader: Iterable[dict], *, max_steps: int | None = None,
                    on_step: Callable[[dict], None] | None = None) -> dict[str, float]:
    """Train over `loader` (at most `max_steps` batches). Returns the epoch means of every loss term plus
    images_per_s (global images over wall time, data waiting included), time_s and steps."""
    state.net.train()
    if state.teacher is not None:
        state.teacher.eval()
    sums: dict[str, float] = {}
    steps, images = 0, 0
    t0 = time.perf_counter()
    for batch in itertools.islice(loader, max_steps):  # stop before fetching a batch that is not used
        values = train_step(state, batch)
        steps += 1
        images += batch["img"].shape[0] * state.dist.world
        for k, v in values.items():
            sums[k] = sums.get(k, 0.0) + v
        if on_step is not None:
            elapsed = time.perf_counter() - t0
            on_step({**values, "lr": state.optimizer.param_groups[0]["lr"], "images_per_s": images / elapsed})
    elapsed = time.perf_counter() - t0
    means = {k: v / max(steps, 1) for k, v in sums.items()}
    return {**means, "images_per_s": images / elapsed if elapsed > 0 else 0.0, "time_s": elapsed, "steps": steps}


# ----------------------------------------------------------------------------------------------- run files


def append_log(run_dir: Path, record: dict) -> None:
    with open(Path(run_dir) / LOG_FILE, "a") as f:
        f.write(json_text(record, indent=None) + "\n")  # strict JSON: a NaN loss is logged as null


def truncate_log(run_dir: Path, *, phase: str, step: int) -> None:
    """Drop log lines of `phase` written after optimizer step `step` (the unfinished epoch of a killed run)."""
    path = Path(run_dir) / LOG_FILE
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:  # a line cut by the kill
            continue
        if rec.get("phase") != phase or rec.get("step", 0) <= step:
            keep.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in keep))


def save_train_state(state: TrainState, path: Path, *, phase: str, stage: str, seed: int, epochs: int) -> None:
    """The epoch checkpoint: enough to continue exactly (weights_only-loadable)."""

    payload = {
        "format": STATE_FORMAT, "phase": phase, "stage": stage, "epoch": state.epoch, "step": state.step,
        "epochs": epochs, "state_dict": state.model.state_dict(), "optimizer": state.optimizer.state_dict(),
        "scheduler": state.scheduler.state_dict(),
        "scaler": state.scaler.state_dict() if state.scaler is not None else None,
        "sampler": {"seed": seed, "epoch": state.epoch}, "rng": rng_state(),
    }
    atomic_torch_save(payload, path)


def load_train_state(state: TrainState, path: Path, *, phase: str, stage: str) -> None:
    """Restore an epoch checkpoint written by save_train_state into `state` (before DDP wrapping is irrelevant:
    the wrapper shares the module's parameters). Read to the CPU: the RNG states must stay CPU ByteTensors, and
    load_state_dict copies weights and optimizer moments onto the model's device."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    if payload.get("format") != STATE_FORMAT or payload.get("phase") != phase:
        raise UserError(f"{path} is not a {phase} checkpoint of this run (found {payload.get('phase')!r}): "
                        "run without --resume to start over")
    if payload.get("stage") != stage:
        raise UserError(f"{path} belongs to stage {payload.get('stage')} but this run is {stage}: "
                        "pass the same --epochs as the interrupted run, or run without --resume")
    state.model.load_state_dict(payload["state_dict"])
    try:
        state.optimizer.load_state_dict(payload["optimizer"])
    except ValueError as exc:  # e.g. encoder_lr set on one side only: another number of parameter groups
        raise UserError(f"{path} was written with another optimizer layout ({exc}): resume with the interrupted "
                        "run's train/finetune settings (encoder_lr), or run without --resume") from None
    state.scheduler.load_state_dict(payload["scheduler"])
    if state.scaler is not None and payload.get("scaler"):
        state.scaler.load_state_dict(payload["scaler"])
    state.epoch, state.step = int(payload["epoch"]), int(payload["step"])
    set_rng_state(payload["rng"])


# ----------------------------------------------------------------------------------------------- fit


@dataclasses.dataclass(frozen=True)
class FitOptions:
    """How `fit` runs: length, seeding, logging and where epoch checkpoints go (None: nowhere)."""

    epochs: int
    steps_per_epoch: int | None = None
    seed: int = 0
    log_every: int = 20
    run_dir: Path | None = None
    checkpoint_every_epoch: bool = True
    phase: str = "train"  # "train" or "finetune": what last.pt belongs to
    stage: str = ""
    on_epoch: Callable[[TrainState], None] | None = None  # rank 0, after the epoch checkpoint


def fit(state: TrainState, make_loader: Callable[[int], Iterable[dict]], opts: FitOptions, *,
        progress: Progress | None = None) -> dict[str, float]:
    """Train from state.epoch to opts.epochs; `make_loader(epoch)` gives each epoch's batches. Rank 0 writes
    log.jsonl and the epoch checkpoint. Returns the last epoch's means plus totals."""
    main = state.dist.main
    run_dir = Path(opts.run_dir) if opts.run_dir is not None else None
    per_epoch = opts.steps_per_epoch
    last: dict[str, float] = {}
    t_start = time.perf_counter()
    if state.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(state.device)
    for epoch in range(state.epoch, opts.epochs):
        seed_all(epoch_seed(opts.seed, epoch, state.dist.rank))
        loader = make_loader(epoch)
        n_steps = len(loader) if hasattr(loader, "__len__") else per_epoch
        if per_epoch is not None and n_steps is not None:
            n_steps = min(per_epoch, n_steps)
        total = (n_steps or 0) * opts.epochs
        set_total_steps(state.scheduler, total)

        def on_step(record: dict, epoch: int = epoch) -> None:
            if main and run_dir is not None and state.step % opts.log_every == 0:
                append_log(run_dir, {"phase": opts.phase, "kind": "step", "epoch": epoch + 1, "step": state.step,
                                     **record})
            if main and progress is not None:
                progress(state.step, total, {"epoch": epoch + 1, "loss": record["total"],
                                             "img/s": record["images_per_s"]})

        last = train_one_epoch(state, loader, max_steps=per_epoch, on_step=on_step)
        if last["steps"] == 0:
            raise UserError("the training set gave no batch: lower the batch size or check data.train_datasets")
        state.epoch = epoch + 1
        if main:
            log.info("%s epoch %d/%d: loss %.4g, %.1f images/s", opts.stage or opts.phase, state.epoch,
                     opts.epochs, last["total"], last["images_per_s"])
        if main and run_dir is not None:
            append_log(run_dir, {"phase": opts.phase, "kind": "epoch", "epoch": state.epoch, "step": state.step,
                                 "lr": state.optimizer.param_groups[0]["lr"], **last})
            if opts.checkpoint_every_epoch:
                save_train_state(state, run_dir / LAST, phase=opts.phase, stage=opts.stage, seed=opts.seed,
                                 epochs=opts.epochs)
        if main and opts.on_epoch is not None:
            opts.on_epoch(state)
    summary = {**{k: v for k, v in last.items() if k not in ("time_s", "steps")},
               "epochs": state.epoch, "steps": state.step, "time_s": time.perf_counter() - t_start}
    if state.device.type == "cuda":
        summary["peak_train_mem_mb"] = torch.cuda.max_memory_allocated(state.device) / 2**20
    return summary


# ----------------------------------------------------------------------------------------------- building


def build_optimizer(model: nn.Module, spec: TrainSpec) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """Adam over the model's current parameters (built after any load/prune: a pruned model has new parameter
    objects) and SPIN's constant learning rate as a LambdaLR, so the checkpoint always has a scheduler state.
    With spec.warmup_steps the rate rises linearly over the first steps (Adam's first steps on a fresh regressor
    are large: without a warm-up, lr 1e-3 drives the camera scale negative and SPIN's exp(-10 s) term to inf)."""
    optimizer = torch.optim.Adam(param_groups(model, spec), lr=spec.lr, weight_decay=spec.weight_decay,
                                 betas=(0.9, 0.999))
    factor = LRFactor(spec.warmup_steps, spec.lr_schedule)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return optimizer, scheduler


def param_groups(model: nn.Module, spec: TrainSpec) -> list[dict]:
    """One group at spec.lr; with spec.encoder_lr, the regressor (model.regressor_names) first at spec.lr and the
    encoder second at encoder_lr."""
    params = [p for p in model.parameters() if p.requires_grad]
    encoder_lr = spec.encoder_lr
    if encoder_lr is None:
        return [{"params": params}]
    head = {id(p) for p in regressor_parameters(model)}
    return [{"params": [p for p in params if id(p) in head]},
            {"params": [p for p in params if id(p) not in head], "lr": encoder_lr}]


class LRFactor:
    """LR multiplier at optimizer step `step` (0-based): a linear warm-up, (step + 1) / warmup_steps until 1, times
    1 (constant) or a cosine from 1 at step 0 to 0 at `total_steps` (set by `fit` once the epoch length is known).
    A callable object, so LambdaLR's state_dict (and a resumed run) carries these fields."""

    def __init__(self, warmup_steps: int = 0, schedule: str = "constant"):
        self.warmup_steps = int(warmup_steps)
        self.schedule = schedule
        self.total_steps: int | None = None

    def __call__(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps > 0 else 1.0
        if self.schedule != "cosine" or not self.total_steps:
            return warm
        return warm * 0.5 * (1.0 + math.cos(math.pi * min(step, self.total_steps) / self.total_steps))


def set_total_steps(scheduler, total: int) -> None:
    """Tell the schedule how many optimizer steps the whole run takes (a cosine ends there)."""
    for factor in getattr(scheduler, "lr_lambdas", []):
        if isinstance(factor, LRFactor) and factor.total_steps != total:
            factor.total_steps = total
            for group, base in zip(scheduler.optimizer.param_groups, scheduler.base_lrs):
                group["lr"] = base * factor(scheduler.last_epoch)


def amp_dtype(spec: TrainSpec, device: torch.device) -> torch.dtype | None:
    """spec.amp_dtype on CUDA (auto: bf16 where the GPU supports it, else fp16, which gets a GradScaler); None
    (fp32) on CPU or with amp off."""
    if not spec.amp or device.type != "cuda":
        return None
    if spec.amp_dtype == "fp16":
        return torch.float16
    if spec.amp_dtype == "bf16" and not torch.cuda.is_bf16_supported():
        raise UserError("amp_dtype bf16: this GPU has no bfloat16 support; set amp_dtype: fp16 (or auto)")
    return torch.bfloat16 if spec.amp_dtype == "bf16" or torch.cuda.is_bf16_supported() else torch.float16


def make_state(model: nn.Module, smpl: nn.Module, spec: TrainSpec, *, img_res: int, device: torch.device, info: DistInfo,
               teacher: nn.Module | None = None, distill: bool = True) -> TrainState:
    """Move everything to the device, set up AMP / channels-last / compile / DDP, and the optimizer."""
    model = model.to(device)
    smpl = smpl.to(device)
    if spec.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer, scheduler = build_optimizer(model, spec)
    dtype = amp_dtype(spec, device)
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    net: nn.Module = model
    if info.world > 1:
        n_bn = set_sync_batchnorm(model, True, cuda=device.type == "cuda")
        if n_bn and info.main:
            log.info("DDP: %d BatchNorm layers synchronised over %d processes", n_bn, info.world)
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if spec.compile:
        net = torch.compile(net)
    if teacher is not None:
        teacher = teacher.to(device).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
    weights = loss_weights(spec, distill=distill and teacher is not None)
    return TrainState(model=model, net=net, optimizer=optimizer, scheduler=scheduler, smpl=smpl, weights=weights,
                      img_res=img_res, device=device, dist=info, scaler=scaler, amp_dtype=dtype,
                      channels_last=spec.channels_last and device.type == "cuda",
                      teacher=teacher if weights.distill else None, grad_clip=spec.grad_clip)


def loader_factory(dataset, *, batch_size: int, workers: int, seed: int, info: DistInfo,
                   pin_memory: bool = False, section: str = "train") -> Callable[[int], torch.utils.data.DataLoader]:
    """make_loader(epoch): this rank's share of a seeded shuffle of `dataset` (DistributedSampler, also for one
    process, so the global order is the same for any world size) in batches of batch_size / world."""
    if batch_size % info.world:
        raise UserError(f"batch_size {batch_size} is not divisible by the {info.world} DDP processes: "
                        f"use a multiple of {info.world} (the global batch is split evenly)")
    per_rank = batch_size // info.world
    if len(dataset) < batch_size:
        raise UserError(f"the training set has {len(dataset)} samples, fewer than one batch of {batch_size}: "
                        f"lower the batch size (--set {section}.batch_size=...)")
    sampler = torch.utils.data.DistributedSampler(dataset, num_replicas=info.world, rank=info.rank, shuffle=True,
                                                  seed=seed, drop_last=True)

    def make_loader(epoch: int) -> torch.utils.data.DataLoader:
        sampler.set_epoch(epoch)
        # Workers are re-created every epoch and seeded from this generator, so epoch e's augmentation is fixed.
        # Same seed on every rank: the datasets draw augmentation from (seed, worker base seed, sample index), so
        # sample i is augmented alike for any world size, and differently from sample j on another rank.
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch))
        return torch.utils.data.DataLoader(dataset, batch_size=per_rank, sampler=sampler, num_workers=workers,
                                           drop_last=True, pin_memory=pin_memory, generator=generator,
                                           persistent_workers=False, prefetch_factor=4 if workers else None)

    return make_loader


# ----------------------------------------------------------------------------------------------- entry points


def run_train(recipe: Recipe, *, out_dir: str | os.PathLike | None = None, resume: bool = False,
              progress: Progress | None = None, device: str | None = None) -> dict:
    """`compress train`: a baseline for recipe.model (from scratch, ImageNet weights, or model.checkpoint) with
    recipe.train; writes runs/NAME/{recipe.yaml, trained.pt, last.pt, log.jsonl, metrics/trained.json}."""
    spec = recipe.train or TrainSpec()
    run_dir = Path(out_dir) if out_dir else RUNS_DIR / recipe.name
    seed_all(spec.seed)  # the initial weights depend on the seed only
    model, parent = initial_model(recipe)
    if int(os.environ.get("RANK", "0")) == 0:
        save_recipe(recipe, run_dir / RECIPE_FILE)
    return _run(recipe, spec, model, run_dir=run_dir, phase="train", stage="trained", epochs=spec.epochs,
                out_name=TRAINED, parent=parent, teacher=None, resume=resume, progress=progress, device=device)


def run_finetune(run_dir: str | os.PathLike, *, epochs: int | None = None, overrides: Iterable[str] = (),
                 resume: bool = False, progress: Progress | None = None, out_dir: str | os.PathLike | None = None,
                 device: str | None = None) -> dict:
    """`compress finetune`: fine-tune the run's pruned.pt with the run's recipe (`overrides` as --set) for `epochs`
    (default recipe.finetune.epochs), distilling from finetune.distill.teacher when set; writes finetuned.pt with
    meta stage "FT(N)" and the evaluation metrics into `out_dir` (default: the run itself; another directory
    keeps the run's own fine-tuning, e.g. to compare with and without distillation from the same pruned.pt)."""
    run_dir = Path(run_dir)
    recipe = load_run_recipe(run_dir, overrides)
    pruned = run_dir / PRUNED
    if not pruned.is_file():
        raise UserError(f"{run_dir} has no {PRUNED}: run `compress prune RECIPE` first")
    spec = recipe.finetune or TrainSpec()
    n = spec.epochs if epochs is None else int(epochs)
    if n < 0:
        raise UserError(f"--epochs must be >= 0, got {n}")
    model, _ = load_checkpoint(pruned)
    teacher = load_teacher(recipe, spec, run_dir=run_dir)
    return _run(recipe, spec, model, run_dir=Path(out_dir or run_dir), phase="finetune", stage=f"FT({n})",
                epochs=n, out_name=FINETUNED, parent=str(pruned), teacher=teacher, resume=resume,
                progress=progress, device=device)


def load_teacher(recipe: Recipe, spec: TrainSpec, *, run_dir: Path) -> nn.Module | None:
    """The distillation teacher (eval mode, frozen): finetune.distill.teacher (a foreign file there is the recipe's
    model.name), or when it is empty the root of the pruned checkpoint's parent chain (the unpruned baseline, with
    the model name recorded when a foreign file entered the run). None when distillation is off."""
    kd = spec.distill
    if kd is None:
        return None
    if kd.teacher:
        path = resolve_ref(kd.teacher, near=run_dir)
        if path is None:
            raise UserError(f"distillation teacher not found: {kd.teacher} (set finetune.distill.teacher to a "
                            "checkpoint or run directory, or finetune.distill=null to train without a teacher)")
        teacher, _ = load_named(path, recipe)
    else:
        lineage = Lineage()
        chain = lineage.chain(run_dir / PRUNED)
        if len(chain) < 2:
            raise UserError(f"finetune.distill.teacher is empty and {run_dir / PRUNED} records no existing "
                            f"parent: set --set finetune.distill.teacher=PATH (e.g. runs/mbv2_baseline/{TRAINED})")
        path = chain[0].path
        teacher, _ = load_checkpoint(path, foreign=lineage.foreign_model(path))  # SPIN's file: the recorded name
    log.info("distilling from %s", path)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _run(recipe: Recipe, spec: TrainSpec, model: nn.Module, *, run_dir: Path, phase: str, stage: str, epochs: int, out_name: str,
         parent: str | dict | None, teacher: nn.Module | None, resume: bool, progress: Progress | None,
         device: str | None = None) -> dict:
    """The part train and finetune share: DDP setup, resume, fit, evaluation, final checkpoint. `device`: auto
    (None; CUDA when available, this process's GPU under torchrun), cpu or cuda[:N]. The process group is torn down
    deterministically (compress.distributed.distributed_job) after the DDP objects of _run_in_group are gone."""
    # a root without the eval files fails now, not after the training (the checkpoint is written after evaluating)
    present_datasets(recipe.data.root, recipe.eval.datasets, warn=False)
    with distributed_job(cuda=resolve_device(device).type == "cuda") as info:
        return _run_in_group(info, recipe, spec, model, run_dir=run_dir, phase=phase, stage=stage, epochs=epochs,
                             out_name=out_name, parent=parent, teacher=teacher, resume=resume, progress=progress,
                             device=device)


def _run_in_group(info: DistInfo, recipe: Recipe, spec: TrainSpec, model: nn.Module, *, run_dir: Path, phase: str,
                  stage: str, epochs: int, out_name: str, parent: str | dict | None, teacher: nn.Module | None,
                  resume: bool, progress: Progress | None, device: str | None) -> dict:
    device = train_device(info, device)
    run_dir = Path(run_dir)
    if info.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    barrier(info)
    img_res = recipe.model.img_res
    smpl = training_smpl(recipe.data.root, spec)
    state = make_state(model, smpl, spec, img_res=img_res, device=device, info=info, teacher=teacher)
    state.fits = StaticFits(recipe.data.root, recipe.data.train_datasets)
    if info.main and state.fits:
        log.info("static fits for %s", ", ".join(state.fits.fits))
    last = run_dir / LAST
    if resume and last.is_file():
        load_train_state(state, last, phase=phase, stage=stage)
        if info.main:
            log.info("resuming %s from %s (epoch %d, step %d)", stage, last, state.epoch, state.step)
            truncate_log(run_dir, phase=phase, step=state.step)
    elif info.main:
        if resume:
            log.info("no %s to resume from: starting %s from the beginning", last, stage)
        truncate_log(run_dir, phase=phase, step=0)  # a fresh start replaces this phase's earlier curve
    dataset = training_set(recipe.data, img_res=img_res, augment=recipe.data.augment, seed=spec.seed)
    make_loader = loader_factory(dataset, batch_size=spec.batch_size, workers=recipe.data.workers,
                                 seed=spec.seed, info=info, pin_memory=device.type == "cuda", section=phase)
    opts = FitOptions(epochs=epochs, steps_per_epoch=spec.steps_per_epoch, seed=spec.seed,
                      log_every=spec.log_every, run_dir=run_dir, phase=phase, stage=stage,
                      checkpoint_every_epoch=spec.checkpoint_every_epoch,
                      on_epoch=snapshotter(recipe, spec, run_dir=run_dir, stage=stage, parent=parent))
    summary = fit(state, make_loader, opts, progress=progress)
    set_sync_batchnorm(state.model, False)
    result: dict = {"run": str(run_dir), "stage": stage, **summary, "distill": state.teacher is not None}
    if info.main:
        result.update(_finish(state.model, recipe, run_dir=run_dir, out_name=out_name, stage=stage,
                              parent=parent, epochs=epochs, summary=summary, device=device,
                              distill=state.teacher is not None))
    barrier(info)
    return result


def snapshotter(recipe: Recipe, spec: TrainSpec, *, run_dir: Path, stage: str,
                parent: str | dict | None) -> Callable[[TrainState], None] | None:
    """With train.snapshot_every N: keep the model of every N-th epoch as snapshots/epoch_<N>.pt (a learning curve's
    points; `compress eval` reads them like any checkpoint)."""
    every = spec.snapshot_every
    if not every:
        return None

    def save(state: TrainState) -> None:
        if state.epoch % every == 0:
            path = run_dir / SNAPSHOTS / f"epoch_{state.epoch:04d}.pt"
            save_checkpoint(state.model, path, parent=parent, recipe=recipe, stage=f"{stage}@{state.step}",
                            epochs=state.epoch, steps=state.step)

    return save


def train_device(info: DistInfo, requested: str | None) -> torch.device:
    """The device of this process: --device (auto: select_device, CUDA's local rank under torchrun)."""
    chosen = resolve_device(requested)
    if chosen.type == "cuda" and (requested in (None, AUTO) or info.world > 1):
        return select_device(info)
    return chosen


def _finish(model: nn.Module, recipe: Recipe, *, run_dir: Path, out_name: str, stage: str, parent: str | None, epochs: int,
            summary: dict, device: torch.device, distill: bool) -> dict:
    """Evaluate on recipe.eval, write metrics/<stem>.json and the stage checkpoint (rank 0 only)."""
    model.eval()
    e = recipe.eval
    metrics = evaluate(model, recipe.data.root, datasets=list(e.datasets), img_res=recipe.model.img_res,
                       batch_size=e.batch_size, subset=e.subset, device=device, workers=e.workers,
                       image_roots=dict(recipe.data.image_roots))
    atomic_write_json(metrics_file(run_dir, out_name), {"stage": stage, "metrics": metrics})
    out = save_checkpoint(model, run_dir / out_name, parent=parent, recipe=recipe, metrics=metrics, stage=stage,
                          epochs=epochs, distill=distill, train=summary)
    log.info("%s: wrote %s", stage, out)
    return {"checkpoint": str(out), "metrics": metrics}
