"""`prune_model`, the public entry (DESIGN.md "Python API"): one call that picks how to prune.

By ratio or by given widths: core.prune_channels. To a params/MACs target: budget.prune_to_budget. To a latency
target: latency.prune_to_latency. The searches call core.prune_channels themselves, never this function.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from compress.prune.budget import prune_to_budget
from compress.prune.core import PruneOptions, PruneResult, as_spec, prune_channels
from compress.prune.latency import prune_to_latency
from compress.prune.tp_glue import BUILD_TIMEOUT_S
from compress.recipe import PruneSpec


def prune_model(model: nn.Module, spec: PruneSpec | Mapping[str, Any], example_inputs: torch.Tensor, *,
                loss_fn: Callable | None = None, calibration_batches: Iterable | None = None,
                build_timeout_s: float = BUILD_TIMEOUT_S, track_channels: bool = False,
                keep_widths: Mapping[str, int] | None = None, lut_dir: str | Path | None = None,
                lut_copy: str | Path | None = None) -> tuple[nn.Module, PruneResult]:
    """Structured channel pruning of a zoo model -> (pruned copy in train mode, PruneResult).

    spec: recipe PruneSpec (or a mapping with its keys). example_inputs: (B, 3, R, R) images for tracing.
    loss_fn(model, batch) -> scalar and calibration_batches are needed by `taylor`. The input model is not changed.
    track_channels=True fills PruneResult.kept_channels = {layer: {"in": [...], "out": [...]}} (original indices).
    keep_widths: {group root layer: kept channels} instead of a ratio or target (each group keeps its most important
    ones). lut_dir / lut_copy: where a latency target caches its lookup table (a shared cache dir, and a copy for
    the run directory).
    """
    spec = as_spec(spec)
    options = PruneOptions(loss_fn=loss_fn, calibration_batches=calibration_batches, build_timeout_s=build_timeout_s,
                           track_channels=track_channels)
    if keep_widths is not None or spec.target is None:
        return prune_channels(model, spec, example_inputs, widths=keep_widths, options=options)
    if spec.target.latency_ms is not None or spec.target.latency_ratio is not None:
        return prune_to_latency(model, spec, example_inputs, options=options, lut_dir=lut_dir, lut_copy=lut_copy)
    return prune_to_budget(model, spec, example_inputs, options=options)
