"""The model a run starts from: `compress train`'s baseline and `compress prune`'s input.

Our checkpoints name their model; SPIN files and bare state_dicts take the name from the recipe's `model.name`.
A fresh model starts its regressor from the data root's `smpl_mean_params.npz`, as SPIN does.
"""
from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from compress.checkpoint import load_checkpoint, read_checkpoint_file
from compress.constants import SMPL_MEAN_PARAMS
from compress.models import create_model
from compress.runs import PRUNE_START, parent_record, resolve_checkpoint

log = logging.getLogger(__name__)


def load_named(path: str | Path, recipe) -> tuple[nn.Module, dict]:
    """Load a checkpoint at the recipe's img_res; a foreign file (SPIN's, a bare state_dict) is the recipe's model."""
    ours = "format_version" in read_checkpoint_file(path)
    return load_checkpoint(path, name=None if ours else recipe.model.name, img_res=recipe.model.img_res)


def initial_model(recipe) -> tuple[nn.Module, str | dict | None]:
    """The model a baseline starts from: recipe.model.checkpoint's weights, else a fresh zoo model (with ImageNet
    encoder weights when model.pretrained). Returns (model, parent record or None): a foreign file's record carries
    the model name it was loaded as (runs.parent_record), so no later step asks for it again."""
    m = recipe.model
    if m.checkpoint:
        model, meta = load_named(m.checkpoint, recipe)
        return model, parent_record(meta.get("path", m.checkpoint), meta)
    overrides = {**m.overrides, "img_res": m.img_res, "pretrained": m.pretrained}
    mean_file = Path(recipe.data.root) / SMPL_MEAN_PARAMS
    if overrides.get("mean_params") is None and mean_file.is_file():
        overrides["mean_params"] = str(mean_file)  # as SPIN: start from the data root's mean pose and shape
    model = create_model(m.name, **overrides)
    # the checkpoint must rebuild without the ImageNet weights or the mean-params file (both are in the state_dict)
    model.config["overrides"].pop("pretrained", None)
    model.config["overrides"].pop("mean_params", None)
    return model, None


def load_start_model(recipe) -> tuple[nn.Module, str | dict | None]:
    """The model to prune: prune.from, else model.checkpoint, else a fresh zoo model -> (model, parent path).
    A run directory offers its newest unpruned-or-fine-tuned weights (finetuned.pt, then trained.pt, pruned.pt)."""
    ref = recipe.prune.from_ or recipe.model.checkpoint
    if not ref:
        log.warning("prune: no prune.from or model.checkpoint, pruning a freshly initialised %s", recipe.model.name)
        return initial_model(recipe)  # as `compress train` would start it (the data root's mean params)
    path = resolve_checkpoint(ref, order=PRUNE_START, what="prune.from")
    model, meta = load_named(path, recipe)
    return model, parent_record(meta.get("path", path), meta)
