"""`compress prune RECIPE`: load the start model, prune it, write the run directory. Never imports training."""
from __future__ import annotations

import dataclasses
import itertools
import logging
from pathlib import Path
from typing import Any, Callable, Optional

import torch

from compress.checkpoint import save_checkpoint
from compress.data.datasets import training_set
from compress.data.fits import StaticFits
from compress.errors import UserError
from compress.io import atomic_write_json
from compress.losses import loss_weights, spin_loss_fn
from compress.prune.api import prune_model
from compress.prune.core import PruneResult
from compress.recipe import Recipe, TrainSpec, save_recipe
from compress.runs import (LATENCY_LUT, LUT_CACHE, METRICS_DIR, PRUNE_SUMMARY, PRUNED, RECIPE_FILE, RUNS_DIR,
                           parent_ref, point_latest)
from compress.smpl import training_smpl
from compress.start import load_start_model

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class PruneRun:
    """What `compress prune` wrote: the result, the pruned checkpoint and the checkpoint it started from."""

    result: PruneResult
    checkpoint: str
    parent: Optional[str]

    def to_json(self) -> dict[str, Any]:
        """The dict of metrics/prune_summary.json."""
        return {**self.result.to_json(), "checkpoint": self.checkpoint, "parent": self.parent}


def hmr_loss_fn(recipe: Recipe) -> Callable:
    """loss_fn(model, batch) -> SPIN's weighted fine-tuning loss (static fits included), for Taylor importance; it
    runs on the device of the model it is given."""
    spec = recipe.finetune or recipe.train or TrainSpec()
    smpl = training_smpl(recipe.data.root, spec)
    fits = StaticFits(recipe.data.root, recipe.data.train_datasets)
    return spin_loss_fn(smpl, weights=loss_weights(spec, distill=False), img_res=recipe.model.img_res, fits=fits)


def calibration_batches(recipe: Recipe, *, n: int, batch_size: int = 8) -> list[dict]:
    """The first `n` batches of a seeded shuffle of the training mix, without augmentation."""
    dataset = training_set(recipe.data, img_res=recipe.model.img_res, augment=False)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                         num_workers=0, drop_last=False)
    return list(itertools.islice(loader, n))


def run_prune(recipe: Recipe, *, out_dir: str | Path | None = None) -> PruneRun:
    """`compress prune RECIPE`: load the start model, prune it, write runs/NAME/{pruned.pt, recipe.yaml,
    metrics/prune_summary.json} and point runs/latest at the run."""
    spec = recipe.prune
    if spec is None:
        raise UserError("the recipe has no `prune` section (see recipes/mbv2_p1.yaml)")
    run_dir = Path(out_dir) if out_dir else RUNS_DIR / (recipe.name or "prune")
    model, parent = load_start_model(recipe)  # a foreign start file's record carries its model name
    device = next(model.parameters()).device
    res = recipe.model.img_res
    example = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device)
    loss_fn = batches = None
    if spec.importance == "taylor":
        loss_fn = hmr_loss_fn(recipe)
        batches = calibration_batches(recipe, n=spec.calibration)
        if len(batches) < spec.calibration:
            log.warning("prune: only %d calibration batches available (prune.calibration=%d)", len(batches),
                        spec.calibration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # `random` importance and dropout-free tracing are then reproducible
        # a latency target caches its lookup table next to the runs (runs/.latency_lut) and copies it into the run
        pruned, result = prune_model(model, spec, example, loss_fn=loss_fn, calibration_batches=batches,
                                     lut_dir=run_dir.parent / LUT_CACHE, lut_copy=run_dir / LATENCY_LUT)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / RECIPE_FILE)
    record = {k: v for k, v in result.to_json().items() if k != "widths"}  # the checkpoint stores its own widths
    path = save_checkpoint(pruned, run_dir / PRUNED, parent=parent, recipe=recipe, metrics={}, stage="pruned",
                           prune=record)
    run = PruneRun(result=result, checkpoint=str(path), parent=parent_ref({"parent": parent}))
    atomic_write_json(run_dir / METRICS_DIR / PRUNE_SUMMARY, run.to_json())
    point_latest(run_dir)
    log.info("wrote %s", path)
    return run
