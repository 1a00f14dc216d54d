"""Prune to a parameter or MAC budget (prune.target params / macs / params_ratio / macs_ratio).

The channel ratio is bisected (core.prune_channels by ratio) to the smallest that meets the budget; then, for local
pruning without round_to, groups are given channels back up to the budget (core.prune_channels by widths), counted
analytically and checked by the real counter.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional

import torch
from torch import nn

from compress.errors import UserError
from compress.prune.core import PruneOptions, PruneResult, min_keep_count, prune_channels
from compress.prune.cost import Cost, cost, layer_widths_of
from compress.prune.groups import LayerModel, budget_groups
from compress.recipe import PruneSpec, PruneTarget

log = logging.getLogger(__name__)

FILL_TOLERANCE = 0.001  # fill up when the bisection lands more than 0.1% below the budget


@dataclasses.dataclass(frozen=True)
class BudgetOutcome:
    """PruneResult.target of a params/MACs search."""

    metric: str  # "params_total" or "macs"
    budget: int
    reached: int
    achieved: int
    gap_percent: float  # how far below the budget, in percent of it
    deterministic: bool  # local pruning: the widths depend on the architecture and the target only


def _budget_value(target: PruneTarget, base: Cost) -> tuple[str, float]:
    if target.params is not None or target.params_ratio is not None:
        metric = "params_total"
        value = target.params if target.params is not None else base.params_total * target.params_ratio
    else:
        metric = "macs"
        value = target.macs if target.macs is not None else base.macs * target.macs_ratio
    return metric, float(value)


def prune_to_budget(model: nn.Module, spec: PruneSpec, example_inputs: torch.Tensor, *,
                    options: PruneOptions = PruneOptions()) -> tuple[nn.Module, PruneResult]:
    """Prune to spec.target (params or MACs) by bisecting the ratio, then filling up."""
    base = cost(model, example_inputs.to(next(model.parameters()).device))
    metric, budget = _budget_value(spec.target, base)
    if getattr(base, metric) <= budget:
        raise UserError(f"prune.target: the model already has {metric} {getattr(base, metric):,} <= {budget:,.0f}")

    def attempt(ratio: float) -> Optional[tuple[nn.Module, PruneResult]]:
        try:
            return prune_channels(model, dataclasses.replace(spec, ratio=ratio), example_inputs,
                                  options=options)
        except UserError as exc:  # a ratio that empties a layer is simply too high
            log.info("target search: ratio %.4f refused (%s)", ratio, exc)
            return None

    lo, hi = 0.0, min(spec.max_layer_ratio, 0.99)
    top = attempt(hi)
    while top is None and hi > 0.1:  # a thin layer (an SE squeeze) refuses high ratios: try a lower top
        hi = round(hi - 0.1, 4)
        top = attempt(hi)
    if top is None or getattr(top[1].after, metric) > budget:
        reached = "refused" if top is None else f"{getattr(top[1].after, metric):,}"
        raise UserError(f"prune.target: {metric} {budget:,.0f} is out of reach (ratio {hi:.2f} gives {reached}); "
                        "raise prune.max_layer_ratio or the target")
    best, below = (hi, top), None
    for _ in range(10):  # ratio to within ~0.001
        mid = (lo + hi) / 2
        attempted = attempt(mid)
        if attempted is not None and getattr(attempted[1].after, metric) <= budget:
            hi, best = mid, (mid, attempted)
        else:
            lo = mid
            below = attempted if attempted is not None else below
    ratio, (pruned, result) = best
    method = f"channel ratio {ratio:.4f} (bisection)"
    if budget - getattr(result.after, metric) > FILL_TOLERANCE * budget and below is not None \
            and spec.round_to == 1 and not spec.global_:
        filled = _fill_up(model, spec, example_inputs, pruned, below[0], result, metric, budget, options=options)
        if filled is not None:
            pruned, result, n_filled = filled
            method += f", then {n_filled} groups given back channels up to the budget"
    achieved = getattr(result.after, metric)
    gap = (budget - achieved) / budget * 100
    label = "params" if metric == "params_total" else "MACs"
    notes = [f"target: {label} <= {budget:,.0f}: achieved {achieved:,} ({budget - achieved:,.0f} below, "
             f"{gap:.4f}%) with {method}"]
    if not spec.global_:
        notes.append("target: local pruning, so the widths depend only on the architecture and the target, not on "
                     "the weights: the same result on every run (deterministic)")
    outcome = BudgetOutcome(metric=metric, budget=int(budget), reached=achieved, achieved=achieved,
                            gap_percent=round(gap, 4), deterministic=not spec.global_)
    return pruned, dataclasses.replace(result, ratio=round(ratio, 4), target=outcome, notes=(*result.notes, *notes))


def _fill_up(model: nn.Module, spec: PruneSpec, example_inputs: torch.Tensor, hi_model: nn.Module,
             lo_model: nn.Module, hi_result: PruneResult, metric: str, budget: float, *,
             options: PruneOptions) -> Optional[tuple[nn.Module, PruneResult, int]]:
    """Give channels back, group by group in graph order, while the analytic count stays within the budget: first
    between the widths of the last ratio that met the budget (hi) and the first that did not (lo), then up to the
    full widths if room is left. The real counter checks the result and an overshoot is backed off.
    Deterministic (no weights involved for local pruning). -> (pruned, result, number of groups filled) or None."""
    example = example_inputs.to(next(model.parameters()).device)
    groups = budget_groups(model, spec, example, options=options)
    layers = LayerModel(model, groups, example)
    hi_w = [layer_widths_of(hi_model.get_submodule(g.root))[1] for g in groups]
    lo_w = [layer_widths_of(lo_model.get_submodule(g.root))[1] for g in groups]
    hi_est = layers.analytic_total(hi_w, metric)
    room = budget - getattr(hi_result.after, metric)
    full_w = [g.width for g in groups]
    floor = [min_keep_count(g.width, 1.0 - spec.max_layer_ratio, 1) for g in groups]
    for _ in range(5):
        widths = list(hi_w)
        # first between the two ratios' widths (stays close to uniform), then up to the full width if room is left
        filled = _give_back(layers, widths, (lo_w, full_w), hi_est, room, metric)
        filled |= _swap_channels(layers, widths, full_w, floor, hi_est, room, metric)
        if not filled:
            break
        keep = {g.root: w for g, w in zip(groups, widths)}
        pruned, result = prune_channels(model, spec, example_inputs, widths=keep, options=options)
        real = getattr(result.after, metric)
        if real <= budget:
            return pruned, result, len(filled)
        room -= (real - budget) * 1.5  # unmodelled terms (BatchNorm, activations): back off and retry
    return None


def _give_back(layers: LayerModel, widths: list[int], bounds: tuple[list[int], ...], base_est: float, room: float,
               metric: str) -> set[int]:
    """Raise each group's width (in place), bound after bound, by the most channels that fit in the room."""
    filled = set()
    for bound in bounds:
        for gi in range(len(widths)):
            lo_k, hi_k = 0, max(bound[gi] - widths[gi], 0)
            while lo_k < hi_k:  # the most channels this group can take back within the room
                mid = (lo_k + hi_k + 1) // 2
                trial = widths[:gi] + [widths[gi] + mid] + widths[gi + 1:]
                if layers.analytic_total(trial, metric) - base_est <= room:
                    lo_k = mid
                else:
                    hi_k = mid - 1
            if lo_k:
                widths[gi] += lo_k
                filled.add(gi)
    return filled


def _swap_channels(layers: LayerModel, widths: list[int], full_w: list[int], floor: list[int], base_est: float,
                   room: float, metric: str) -> set[int]:
    """Small models: one channel can be worth more than the gap; trade one channel of group j for one of group i
    (in place, up to 3 times) where that uses more of the room."""
    swapped = set()
    for _swap in range(3):
        used = layers.analytic_total(widths, metric) - base_est
        best_swap = None
        for i in range(len(widths)):
            for j in range(len(widths)):
                if i == j or widths[i] >= full_w[i] or widths[j] <= floor[j]:
                    continue
                trial = list(widths)
                trial[i] += 1
                trial[j] -= 1
                gain = layers.analytic_total(trial, metric) - base_est - used
                if 0 < gain and used + gain <= room and (best_swap is None or gain > best_swap[0]):
                    best_swap = (gain, trial, (i, j))
        if best_swap is None:
            break
        widths[:] = best_swap[1]
        swapped.update(best_swap[2])
    return swapped
