"""Prune to a measured latency budget (prune.target latency_ms / latency_ratio) with a per-layer latency LUT.

Each group's candidate widths are multiples of 8; a greedy selection removes the channels that lose the least
importance per millisecond saved (the LUT, compress/latency.py, times every layer shape once), core.prune_channels
cuts the model to the chosen widths, and an interleaved A/B timing against the start model checks the goal. A
missed goal refits the share of time that does not shrink with the widths and tries again (up to max_rounds).
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import nn

from compress import latency as timing  # module access: tests replace its timers
from compress.checkpoint import model_name
from compress.errors import UserError
from compress.prune.core import PruneOptions, PruneResult, min_keep_count, prune_channels
from compress.prune.groups import BudgetGroup, LayerModel, budget_groups
from compress.recipe import PruneSpec

log = logging.getLogger(__name__)

LATENCY_MARGIN = 0.95  # aim 5% under a latency goal: repeated A/B timings on a loaded machine differ by a few %


@dataclasses.dataclass(frozen=True)
class LatencyOutcome:
    """PruneResult.target of a latency search (times in ms; `rounds` holds every round's prediction and timing)."""

    metric: str
    budget: float
    batch: int
    device: str
    threads: int
    start_ms: float
    predicted_ms: float
    measured_ms: float
    baseline_ms: float
    goal_ms: float
    met: bool
    rounds: list[dict]
    lut: str
    lut_entries: int
    lut_loaded: int
    lut_measured: int
    search_seconds: float
    groups: dict[str, list[int]]  # changed groups: {root: [width at the start, kept width]}
    runtime: str = "torch"  # what ran the model when it was timed: torch (eager) or ort (ONNX Runtime)


def latency_candidates(width: int, *, min_keep: float, multiple: int = 8) -> list[int]:
    """Kept widths the latency search may choose for a group, descending: the full width, then multiples of
    `multiple` (vector-friendly) at 1/16 (wide groups) or 1/8 steps, never below the minimum keep fraction."""
    floor = min_keep_count(width, min_keep, 1)
    steps = 16 if width >= 128 else 8
    out = {width}
    for k in range(1, steps):
        w = width * (steps - k) / steps
        w = int(w // multiple * multiple) if width >= 2 * multiple else int(w)
        if w >= max(floor, 1):
            out.add(w)
    return sorted(out, reverse=True)


def select_for_latency(groups: list[BudgetGroup], cost: Callable[[list[int], int, int], float], *, start_ms: float,
                       target_ms: float, state: list[int] | None = None,
                       prefetch: Callable[[list[int], list[tuple[int, int]]], None] | None = None,
                       ) -> tuple[list[int], float]:
    """Greedy: repeatedly take the move (group -> smaller candidate width) that loses the least importance per
    millisecond saved, until the predicted latency <= target_ms -> (candidate index per group, predicted ms).

    cost(state, group_index, to_index) -> predicted ms change of that move from `state` (candidate index per group;
    negative saves time); prefetch(state, moves) lets the caller time all the moves' new layer shapes in one
    interleaved batch.
    A move that does not save time (a slow odd width, noise) is never taken.
    """
    state = list(state or [0] * len(groups))
    predicted = start_ms
    while predicted > target_ms:
        moves = [(gi, ci) for gi, g in enumerate(groups) for ci in range(state[gi] + 1, len(g.candidates))]
        if not moves:
            break
        if prefetch is not None:
            prefetch(state, moves)
        best = None
        for gi, ci in moves:
            g = groups[gi]
            saved = -cost(state, gi, ci)
            if saved <= 1e-9:
                continue
            per_ms = g.lost(g.candidates[state[gi]], g.candidates[ci]) / saved
            key = (per_ms, -saved, gi, ci)
            if best is None or key < best[0]:
                best = (key, gi, ci, saved)
        if best is None:
            break
        _, gi, ci, saved = best
        state[gi] = ci
        predicted -= saved
    return state, predicted


class _LutCosts:
    """Layer times of candidate widths from the LUT: the LUT sum of a set of widths, and of one move."""

    def __init__(self, layers: LayerModel, lut: timing.LatencyLUT) -> None:
        self.layers = layers
        self.lut = lut

    def widths_of(self, state: list[int]) -> list[int]:
        return [g.candidates[i] for g, i in zip(self.layers.groups, state)]

    def move_sigs(self, state: list[int], gi: int, ci: int):
        trial = self.widths_of(state)
        old = self.layers.dims(trial, self.layers.touching[gi])
        trial[gi] = self.layers.groups[gi].candidates[ci]
        new = self.layers.dims(trial, self.layers.touching[gi])
        return old, new

    def prefetch(self, state: list[int], moves: list[tuple[int, int]]) -> None:
        layers = self.layers
        sigs = []
        for gi, ci in moves:
            _, new = self.move_sigs(state, gi, ci)
            sigs += [layers.sig(n, *d) for n, d in new.items() if layers.calls(n) and min(d) > 0]
        missing = [s for s in {s.key: s for s in sigs}.values() if s.key not in self.lut.table]
        for i in range(0, len(missing), 256):  # bounded memory: a chunk of freshly built layers at a time
            self.lut.lookup(missing[i:i + 256])

    def move_cost(self, state: list[int], gi: int, to: int) -> float:  # in LUT ms (the sum of the layers' own times)
        layers, table = self.layers, self.lut.table
        old, new = self.move_sigs(state, gi, to)
        if any(min(d) <= 0 for n, d in new.items() if layers.calls(n)):
            return math.inf  # would empty a layer: never taken
        return sum(layers.calls(n) * (table[layers.sig(n, *new[n]).key] - table[layers.sig(n, *old[n]).key])
                   for n in new if layers.calls(n))

    def layer_sum(self, widths: list[int]) -> float:
        layers = self.layers
        dims = layers.dims(widths)
        table = self.lut.lookup(layers.sig(n, *d) for n, d in dims.items() if layers.calls(n))
        return sum(layers.calls(n) * table[layers.sig(n, *d).key] for n, d in dims.items() if layers.calls(n))


def _ab_timer(runtime: str):
    """The whole-model A/B timer of prune.target.runtime: eager PyTorch, or the exported model in ONNX Runtime (the
    layer lookup table stays PyTorch's: a predictor whose miss each round's measurement corrects)."""
    if runtime == "ort":
        from compress.quantize import ab_model_latency_ort  # here: export imports profile, which imports prune

        return ab_model_latency_ort
    return timing.ab_latency


def prune_to_latency(model: nn.Module, spec: PruneSpec, example_inputs: torch.Tensor, *,
                     options: PruneOptions = PruneOptions(), lut_dir: str | Path | None = None,
                     lut_copy: str | Path | None = None, max_rounds: int = 5,
                     ab_repeats: int = 31) -> tuple[nn.Module, PruneResult]:
    """Prune until an interleaved A/B timing on this device meets prune.target.latency_ms / latency_ratio.

    lut_dir: a shared folder caching the LUT across runs; lut_copy: where a copy of it is written (the run)."""
    target = spec.target
    device = torch.device(target.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"prune.target.device is {target.device} but CUDA is not available here; use cpu")
    threads = target.threads or torch.get_num_threads()
    model = copy.deepcopy(model).eval().to(device)
    example = example_inputs.to(device)
    res = int(example.shape[-1])
    batch = target.latency_batch
    name = model_name(model)
    meta = {"model": name, "img_res": res, "batch": batch, "device": str(device), "threads": threads,
            "host": timing.host_id(), "torch": torch.__version__}
    lut_path = Path(lut_dir) / timing.lut_filename(meta) if lut_dir else None
    lut = timing.LatencyLUT(meta=meta, path=lut_path)

    t0 = time.perf_counter()
    groups = budget_groups(model, spec, example, options=options)
    multiple = max(8, spec.round_to)
    for g in groups:
        g.candidates = latency_candidates(g.width, min_keep=1.0 - spec.max_layer_ratio, multiple=multiple)
    costs = _LutCosts(LayerModel(model, groups, example), lut)
    ab_latency = _ab_timer(target.runtime)
    start = ab_latency({"start": model}, img_res=res, batch=batch, device=device, threads=threads)["start"]
    start_ms = start["median_ms"]
    budget_ms = target.latency_ms if target.latency_ms is not None else target.latency_ratio * start_ms
    if start_ms <= budget_ms:
        raise UserError(f"prune.target: the start model already runs in {start_ms:.2f} ms <= {budget_ms:.2f} ms "
                        f"(batch {batch}, {device}, {threads} threads)")

    full_sum = costs.layer_sum([g.width for g in groups])
    state = [0] * len(groups)
    # The search works in fractions f = layer_sum(widths) / layer_sum(full) of the start model's layer time. The
    # prediction is baseline x (o + (1 - o) f): o is the share of time that does not shrink with the widths (BN,
    # activations, adds, framework overhead), 0 in round 1 and fitted from each measured miss. Each round re-anchors
    # on the baseline of its own A/B timing, because the load on a shared machine drifts.
    overhead = 0.0

    def verify(pruned: nn.Module):
        """Interleaved A/B timing against the start model -> (met, worse run's stats, its paired ratio, runs).

        A relative target is judged against the baseline of the same A/B run, by the median of the per-round
        ratios (pruned_i / baseline_i: robust to load drifting during the run); an absolute one by the median.
        A pass must hold in two A/B runs in a row (the worse is reported): one run can catch a load spike that hit
        the baseline alone."""
        worst = None
        for run in range(1, 3):
            ab = ab_latency({"start": model, "pruned": pruned}, img_res=res, batch=batch, device=device,
                            threads=threads, repeats=ab_repeats)
            pair = timing.paired_ratio(ab["pruned"]["samples_ms"], ab["start"]["samples_ms"])
            score = (ab["pruned"]["median_ms"] / budget_ms if target.latency_ms is not None
                     else pair["median"] / target.latency_ratio)  # <= 1 meets the target
            if worst is None or score > worst[0]:
                worst = (score, ab, pair)
            if score > 1:
                break
        return worst[0] <= 1, worst[1], worst[2], run

    aim = (target.latency_ratio if target.latency_ratio is not None else budget_ms / start_ms) * LATENCY_MARGIN
    rounds = []
    pruned = result = None
    for round_ in range(1, max_rounds + 1):
        state, _ = select_for_latency(groups, costs.move_cost, start_ms=costs.layer_sum(costs.widths_of(state)),
                                      target_ms=aim * full_sum, state=state, prefetch=costs.prefetch)
        fraction = costs.layer_sum(costs.widths_of(state)) / full_sum
        keep = {g.root: w for g, w in zip(groups, costs.widths_of(state))}
        pruned, result = prune_channels(model, spec, example, widths=keep, options=options)
        met, ab, pair, ab_runs = verify(pruned)
        measured, baseline = ab["pruned"]["median_ms"], ab["start"]["median_ms"]
        predicted = baseline * (overhead + (1 - overhead) * fraction)
        goal = budget_ms if target.latency_ms is not None else target.latency_ratio * baseline
        rounds.append({"round": round_, "aim_fraction": round(aim, 4), "layer_fraction": round(fraction, 4),
                       "overhead_share": round(overhead, 4), "predicted_ms": round(predicted, 3),
                       "measured_ms": round(measured, 3), "baseline_ms": round(baseline, 3),
                       "p10_ms": round(ab["pruned"]["p10_ms"], 3), "p90_ms": round(ab["pruned"]["p90_ms"], 3),
                       "baseline_p10_ms": round(ab["start"]["p10_ms"], 3),
                       "baseline_p90_ms": round(ab["start"]["p90_ms"], 3), "goal_ms": round(goal, 3),
                       "paired_ratio": round(pair["median"], 4), "paired_ratio_p10": round(pair["p10"], 4),
                       "paired_ratio_p90": round(pair["p90"], 4), "ab_runs": ab_runs, "met": met})
        log.info("latency round %d: predicted %.2f ms, measured %.2f ms (goal %.2f, baseline %.2f)", round_,
                 predicted, measured, goal, baseline)
        if met:
            break
        # share of the baseline measured now, and the share wanted (paired per-round ratio for relative targets)
        observed = pair["median"] if target.latency_ratio is not None else measured / baseline
        wanted = target.latency_ratio if target.latency_ratio is not None else budget_ms / baseline
        if fraction < 1:  # prune further: fit the fixed share to this miss and aim at the goal with the margin
            overhead = min(max((observed - fraction) / (1 - fraction), 0.0), 0.9)
        aim = min((wanted * LATENCY_MARGIN - overhead) / (1 - overhead), fraction * 0.98)
        if aim <= 0:  # the fitted fixed share says out of reach: still try a proportional step
            aim = fraction * wanted / observed * LATENCY_MARGIN
        if rounds[-1]["layer_fraction"] == (rounds[-2]["layer_fraction"] if len(rounds) > 1 else None):
            break  # the search cannot cut any further (max_layer_ratio)
    pruned.train()
    if lut_copy:
        lut.save(lut_copy)
    widths = costs.widths_of(state)
    last = rounds[-1]
    outcome = LatencyOutcome(
        metric="latency_ms", budget=round(budget_ms, 3), batch=batch, device=str(device), threads=threads,
        start_ms=round(start_ms, 3), predicted_ms=last["predicted_ms"], measured_ms=last["measured_ms"],
        baseline_ms=last["baseline_ms"], goal_ms=last["goal_ms"], met=last["met"], rounds=rounds,
        lut=str(lut_path or lut_copy or ""), lut_entries=len(lut.table), lut_loaded=lut.loaded,
        lut_measured=lut.measured, search_seconds=round(time.perf_counter() - t0, 1),
        groups={g.root: [g.width, w] for g, w in zip(groups, widths) if w != g.width}, runtime=target.runtime,
    )
    odd = [g.root for g, w in zip(groups, widths) if w != g.width and w % multiple]
    notes = _latency_notes(spec, outcome, budget_ms=budget_ms, max_rounds=max_rounds, multiple=multiple,
                           odd=len(odd), lut_path=lut_path)
    # no single channel ratio (ratio None): each group has its own width (target.groups)
    return pruned, dataclasses.replace(result, ratio=None, target=outcome, notes=(*result.notes, *notes))


def _latency_notes(spec: PruneSpec, outcome: LatencyOutcome, *, budget_ms: float, max_rounds: int, multiple: int,
                   odd: int, lut_path: Optional[Path]) -> list[str]:
    target, rounds = spec.target, outcome.rounds
    last = rounds[-1]
    what = (f"{target.latency_ratio:g} x the start model" if target.latency_ratio is not None
            else f"{budget_ms:.2f} ms")
    plural = "s" if outcome.threads > 1 else ""
    where = "ONNX Runtime on the CPU" if outcome.runtime == "ort" else f"PyTorch on {outcome.device}"
    notes = [f"target: latency <= {what} at batch {outcome.batch} in {where} ({outcome.threads} "
             f"thread{plural}): predicted {last['predicted_ms']:.2f} ms, measured {last['measured_ms']:.2f} ms "
             f"(p10-p90 {last['p10_ms']:.2f}-{last['p90_ms']:.2f}) vs baseline {last['baseline_ms']:.2f} ms in an "
             f"interleaved A/B timing (per-round ratio {last['paired_ratio']:.3f}, p10-p90 "
             f"{last['paired_ratio_p10']:.3f}-{last['paired_ratio_p90']:.3f}) -> "
             f"{'met' if last['met'] else 'NOT met'} after {len(rounds)} round{'s' if len(rounds) > 1 else ''}"]
    unused = [k for k, on in (("ratio_by_module", spec.ratio_by_module), ("global", spec.global_),
                              ("iterative_steps", spec.iterative_steps > 1)) if on]
    if unused:
        notes.append(f"target: the latency search ignores prune.{', prune.'.join(unused)}")
    if not last["met"]:
        notes.append(f"target: the latency goal {last['goal_ms']:.2f} ms was not reached in {max_rounds} rounds; "
                     "the machine may be loaded (re-run) or the budget is below what max_layer_ratio allows")
    notes.append(f"target: channels chosen by importance per measured ms from a per-layer latency LUT "
                 f"({outcome.lut_entries} layer shapes, {outcome.lut_loaded} read from cache, {outcome.lut_measured} "
                 f"timed now: {lut_path or 'not cached'}); kept widths are multiples of {multiple}"
                 + (f" except {odd} groups" if odd else ""))
    return notes
