"""The one pruning primitive: prune a copy of a zoo model by the spec's ratio, or to given widths per group.

What it adds on top of Torch-Pruning (tp_glue.py holds the adapters):
- after every step the estimate columns of the IEF concat layers (fc1) are checked bit for bit and
  `fc1.in_features == features + 157`;
- a per-layer minimum keep fraction (1 - max_layer_ratio) is enforced here, because Torch-Pruning's
  `max_pruning_ratio` is not a hard cap under global ranking (upstream #448);
- a ratio that would empty a layer is refused with the layer named;
- round_to is applied here, not by Torch-Pruning (which rounds the kept count *down*, to zero for a layer narrower
  than round_to / (1 - ratio)): see `round_keep`.
The budget and latency searches (budget.py, latency.py) choose widths and call `prune_channels` with them.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
from typing import Any, Callable, Mapping, Optional, Sequence

import torch
import torch_pruning as tp
from torch import nn

from compress.checkpoint import model_name
from compress.constants import N_ESTIMATE
from compress.errors import UserError
from compress.prune.cost import MACS_NOTE, Cost, cost, layer_widths, layer_widths_of, prunable_layers
from compress.prune.tp_glue import (BUILD_TIMEOUT_S, BNScaleWithFallback, ChannelTracker, build_pruner, calibrate,
                                    kept_whole, make_importance, named_modules, refresh_split_offsets, scope_ignored,
                                    time_limit)
from compress.recipe import PruneSpec, PruneTarget

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- inputs


def as_spec(spec: PruneSpec | Mapping[str, Any]) -> PruneSpec:
    """A recipe PruneSpec, or a mapping with its YAML keys (`global`, `from`) -> PruneSpec."""
    if isinstance(spec, PruneSpec):
        return spec
    if isinstance(spec, Mapping):
        fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(PruneSpec)}
        unknown = [k for k in spec if k not in fields and k not in fields.values()]
        if unknown:
            raise UserError(f"prune: unknown keys {unknown}; valid: {', '.join(fields)}")
        values = {fields.get(k, k): v for k, v in spec.items()}
        if isinstance(values.get("target"), Mapping):
            values["target"] = PruneTarget(**values["target"])
        return PruneSpec(**values)
    raise TypeError(f"spec must be a PruneSpec or a mapping, got {type(spec).__name__}")


@dataclasses.dataclass(frozen=True)
class PruneOptions:
    """How a prune runs, beside the spec: calibration data for `taylor`, the hang guard, channel tracking."""

    loss_fn: Optional[Callable] = None  # loss_fn(model, batch) -> scalar; needed by `taylor`
    calibration_batches: Optional[Sequence] = None  # batches for loss_fn; needed by `taylor`
    build_timeout_s: float = BUILD_TIMEOUT_S  # limit on building the graph, and on the pruning steps
    track_channels: bool = False  # record the original indices of the kept channels (PruneResult.kept_channels)


# ----------------------------------------------------------------------------------------------- result


@dataclasses.dataclass(frozen=True)
class PruneResult:
    """What a prune did. `to_json()` is the dict of prune_summary.json (field order = key order)."""

    model: str
    importance: str
    ratio: Optional[float]  # None under a latency target: each group has its own width (no "ratio" key then)
    global_: bool
    scope: str
    round_to: int
    iterative_steps: int
    max_layer_ratio: float
    ratio_by_module: dict[str, float]
    ignore: list[str]
    img_res: int
    before: Cost
    after: Cost
    params_kept: float
    macs_kept: float
    min_keep_fraction: float
    min_keep_layer: str
    widths: dict[str, dict[str, list[int]]]  # changed layers: {name: {"before": [in, out], "after": [in, out]}}
    calibration_batches: int
    build_seconds: float
    prune_seconds: float
    notes: tuple[str, ...]
    kept_channels: Optional[dict[str, dict[str, list[int]]]] = None  # {layer: {"in", "out": original indices}}
    target: Any = None  # budget.BudgetOutcome or latency.LatencyOutcome when a search chose the widths

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in ("ratio", "kept_channels", "target"):
                continue
            if dataclasses.is_dataclass(value):
                value = dataclasses.asdict(value)
            out[f.name.rstrip("_")] = list(value) if isinstance(value, tuple) else value
        return out


# ----------------------------------------------------------------------------------------------- guards


def round_keep(width: int, keep: int, round_to: int) -> int:
    """The kept channel count of a layer of `width` channels that would keep `keep` without rounding (prune.round_to).

    The nearest multiple of round_to (a tie keeps more), at least round_to: rounding never empties a layer. When
    that is not below `width` (a layer narrower than round_to, or one whose nearest multiple is its own width or
    above it) the layer stays whole, so a kept count is either the full width or a multiple of round_to.
    Nearest rather than down (Torch-Pruning's rule): a 24-channel layer at ratio 0.3 keeps 16, not 8, with
    round_to=8; the per-layer ratio stays as close to the requested one as the multiple allows.
    """
    if round_to <= 1:
        return keep
    rounded = max(round_to, math.floor(keep / round_to + 0.5) * round_to)
    return width if rounded >= width else rounded


def _preflight(model: nn.Module, spec: PruneSpec, ignored: set[nn.Module], by_module: dict[str, float]) -> None:
    """Refuse a ratio that would remove every output channel of a layer, naming it (with round_to > 1 a layer
    keeps at least round_to channels or stays whole, see `round_keep`)."""
    ratio_of = {}
    for name, ratio in by_module.items():
        root = model.get_submodule(name)
        for m in root.modules():
            ratio_of[m] = ratio
    for name, m in prunable_layers(model).items():
        if m in ignored:
            continue
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels:
            continue  # depthwise convs follow the layer that feeds them
        n = layer_widths_of(m)[1]
        ratio = ratio_of.get(m, spec.ratio)
        if ratio <= 0:
            continue
        keep = round_keep(n, int(n * (1 - ratio)), spec.round_to)
        if keep <= 0:
            where = f"ratio_by_module.{name}" if m in ratio_of else "ratio"
            raise UserError(f"prune.{where}: {ratio} would remove all {n} output channels of {name}; lower it or "
                            f"add {name!r} to prune.ignore")


def min_keep_count(original: int, min_keep: float, round_to: int) -> int:
    """The fewest channels a layer of `original` channels may keep (a multiple of round_to where it can be)."""
    keep = max(1, math.ceil(original * min_keep - 1e-9))
    if round_to > 1 and original >= round_to:
        keep = math.ceil(keep / round_to) * round_to
    return min(keep, original)


def _enforce_min_keep(pruner, group, original: dict[nn.Module, int], min_keep: float, round_to: int,
                      names: dict[nn.Module, str]):
    """Trim a group so its root layer keeps at least `min_keep` of its width at the start (None: skip the group)."""
    graph = pruner.DG
    root = group[0].dep.target.module
    fn = group[0].dep.handler
    idxs = list(group[0].idxs)
    current = graph.get_out_channels(root)
    name = names.get(root, graph._module2name.get(root, "?"))
    if len(idxs) >= current:
        raise UserError(f"prune: the ratio would remove all {current} channels of {name}; lower prune.ratio or "
                        f"add {name!r} to prune.ignore")
    allowed = current - min_keep_count(original.get(root, current), min_keep, round_to)
    if len(idxs) <= allowed:
        return group
    if allowed <= 0 or pruner._get_channel_groups(group) > 1:
        # grouped convs must lose the same channels in every group; rather than re-deriving that, keep the layer
        log.info("min keep: %s stays at %d channels", name, current)
        return None
    full = graph.get_pruning_group(root, fn, list(range(current)))
    scores = pruner.estimate_importance(full)
    if scores is None:
        order = sorted(idxs)
    else:
        order = sorted(idxs, key=lambda i: float(scores[i]))
    log.info("min keep: %s prunes %d instead of %d channels", name, allowed, len(idxs))
    return graph.get_pruning_group(root, fn, sorted(order[:allowed]))


def _round_group(pruner, group, round_to: int, names: dict[nn.Module, str]):
    """The group re-cut so its root keeps `round_keep(...)` channels, the most important ones (None: leave it
    whole). Grouped convs, whose channels go in equal shares per group, are left whole unless their kept count is
    already a multiple of round_to."""
    if round_to <= 1:
        return group
    graph = pruner.DG
    root = group[0].dep.target.module
    fn = group[0].dep.handler
    current = graph.get_out_channels(root)
    idxs = list(group[0].idxs)
    keep = round_keep(current, current - len(idxs), round_to)
    name = names.get(root, graph._module2name.get(root, "?"))
    if keep >= current:
        log.info("round_to: %s stays at %d channels (would keep %d)", name, current, current - len(idxs))
        return None
    if keep == current - len(idxs):
        return group
    if pruner._get_channel_groups(group) > 1:
        log.info("round_to: grouped %s stays at %d channels", name, current)
        return None
    full = graph.get_pruning_group(root, fn, list(range(current)))
    scores = pruner.estimate_importance(full)
    order = list(range(current)) if scores is None else sorted(range(current), key=lambda i: (float(scores[i]), i))
    return graph.get_pruning_group(root, fn, sorted(order[:current - keep]))


def _cut_to_width(pruner, group, keep: Mapping[str, int], names: dict[nn.Module, str]):
    """The group re-cut so its root keeps `keep[root]` channels, the most important ones (None: leave it whole)."""
    graph = pruner.DG
    root = group[0].dep.target.module
    fn = group[0].dep.handler
    current = graph.get_out_channels(root)
    want = keep.get(names.get(root, ""), current)
    if want >= current or pruner._get_channel_groups(group) > 1:
        return None
    if want < 1:
        raise UserError(f"prune: a budget search asked for {want} channels in {names.get(root)}")
    full = graph.get_pruning_group(root, fn, list(range(current)))
    scores = pruner.estimate_importance(full)
    order = list(range(current)) if scores is None else sorted(range(current), key=lambda i: (float(scores[i]), i))
    return graph.get_pruning_group(root, fn, sorted(order[:current - want]))


def _check_concat(model: nn.Module, before: dict[str, torch.Tensor], tracker: ChannelTracker,
                  example: torch.Tensor) -> None:
    """The IEF concat layers keep their 157 estimate columns bit for bit and take features + 157 inputs."""
    with torch.no_grad():
        width = model.extract_features(example[:1]).shape[1]
    for name in getattr(model, "concat_layers", []):
        layer = model.get_submodule(name)
        if layer.in_features != width + N_ESTIMATE:
            raise RuntimeError(f"pruning broke {name}: in_features {layer.in_features} != features {width} + 157")
        rows = tracker.kept[name]["out"]
        expected = before[name][rows]
        if not torch.equal(layer.weight[:, -N_ESTIMATE:].detach(), expected):
            raise RuntimeError(f"pruning changed the pose/shape/cam columns of {name} (Torch-Pruning index mapping)")


# ----------------------------------------------------------------------------------------------- prune


def _widths_spec(spec: PruneSpec) -> PruneSpec:
    """How given widths are cut: every group is offered once, locally (ratio 0.5), then cut to its width. The
    result records these settings (a search then sets its own ratio and target)."""
    return dataclasses.replace(spec, target=None, ratio=0.5, global_=False, iterative_steps=1, ratio_by_module={},
                               round_to=1, max_layer_ratio=max(spec.max_layer_ratio, 0.5))


def prune_channels(model: nn.Module, spec: PruneSpec, example_inputs: torch.Tensor, *,
                   widths: Mapping[str, int] | None = None,
                   options: PruneOptions = PruneOptions()) -> tuple[nn.Module, PruneResult]:
    """Structured channel pruning of a zoo model -> (pruned copy in train mode, result). The input is not changed.

    widths=None: by spec.ratio (ratio_by_module, global, round_to, iterative_steps, max_layer_ratio); spec.target
    is not looked at. widths={group root layer: kept channels}: each listed group keeps its most important
    channels, the others stay whole (the searches choose the widths). example_inputs: (B, 3, R, R) for tracing.
    """
    if widths is not None:
        spec = _widths_spec(spec)
    notes: list[str] = [MACS_NOTE]
    model = copy.deepcopy(model).eval()
    example = example_inputs.to(next(model.parameters()).device)
    before = cost(model, example)
    widths_before = layer_widths(model)

    fixed = kept_whole(model, spec)
    by_module = named_modules(model, spec.ratio_by_module, key="ratio_by_module")
    ignored = fixed + scope_ignored(model, spec.scope)
    if widths is None:  # given widths are checked by the search that chose them
        _preflight(model, spec, {sub for m in ignored for sub in m.modules()}, dict(spec.ratio_by_module))

    importance = make_importance(spec.importance)
    tracker = ChannelTracker(model)
    concat_before = {n: model.get_submodule(n).weight[:, -N_ESTIMATE:].detach().clone()
                     for n in getattr(model, "concat_layers", [])}
    t0 = time.perf_counter()
    pruner, n_shuffles = build_pruner(
        model, example, importance=importance, ignored=ignored, timeout_s=options.build_timeout_s,
        pruning_ratio=spec.ratio, pruning_ratio_dict={by_module[n]: r for n, r in spec.ratio_by_module.items()},
        global_pruning=spec.global_, max_pruning_ratio=spec.max_layer_ratio, iterative_steps=spec.iterative_steps,
        round_to=None)  # rounded here (_round_group): Torch-Pruning's rounding down can empty a layer
    build_s = time.perf_counter() - t0
    if n_shuffles:
        notes.append(f"ShuffleNetV2: {n_shuffles} channel shuffles pruned through their permutation (paired channels)")

    t1 = time.perf_counter()
    n_calibration = _run_steps(model, pruner, spec, example, widths=widths, options=options, tracker=tracker,
                               concat_before=concat_before)
    prune_s = time.perf_counter() - t1

    model.zero_grad(set_to_none=True)
    after = cost(model, example)
    widths_after = layer_widths(model)
    fractions = {n: widths_after[n][1] / widths_before[n][1] for n in widths_before if n in widths_after}
    min_layer = min(fractions, key=fractions.get) if fractions else ""
    if spec.importance == "taylor":
        notes.append(f"taylor: gradients of the loss on {n_calibration} calibration batches before each step")
    if isinstance(importance, BNScaleWithFallback) and importance.fallback:
        notes.append(f"bn_scale: {len(set(importance.fallback))} groups without BatchNorm scored by L2 magnitude "
                     f"({', '.join(sorted(set(importance.fallback))[:4])}...)")
    if spec.scope == "regressor" and before.params_regressor == after.params_regressor:
        notes.append("scope regressor: nothing prunable outside the heads in this model")
    model.train()
    result = PruneResult(
        model=model_name(model),
        importance=spec.importance, ratio=spec.ratio, global_=spec.global_, scope=spec.scope,
        round_to=spec.round_to, iterative_steps=spec.iterative_steps, max_layer_ratio=spec.max_layer_ratio,
        ratio_by_module=dict(spec.ratio_by_module), ignore=list(spec.ignore), img_res=int(example.shape[-1]),
        before=before, after=after, params_kept=after.params_total / before.params_total,
        macs_kept=after.macs / before.macs if before.macs else 1.0,
        min_keep_fraction=round(fractions.get(min_layer, 1.0), 4), min_keep_layer=min_layer,
        widths={n: {"before": widths_before[n], "after": widths_after[n]} for n in widths_before
                if widths_before[n] != widths_after.get(n)},
        calibration_batches=n_calibration, build_seconds=round(build_s, 2), prune_seconds=round(prune_s, 2),
        notes=tuple(notes), kept_channels=tracker.kept if options.track_channels else None,
    )
    log.info("pruned %s: params %d -> %d, MACs %d -> %d", result.model, before.params_total, after.params_total,
             before.macs, after.macs)
    return model, result


def _run_steps(model: nn.Module, pruner: tp.pruner.BasePruner, spec: PruneSpec, example: torch.Tensor, *,
               widths: Mapping[str, int] | None, options: PruneOptions, tracker: ChannelTracker,
               concat_before: dict[str, torch.Tensor]) -> int:
    """The pruning steps, each group cut to its width or trimmed to the minimum keep -> calibration batches used."""
    original_out = {m: layer_widths_of(m)[1] for m in prunable_layers(model).values()}
    names = {m: n for n, m in model.named_modules()}
    min_keep = 1.0 - spec.max_layer_ratio
    n_calibration = 0
    with time_limit(options.build_timeout_s, "pruning"):
        for step in range(spec.iterative_steps):
            if spec.importance == "taylor":
                n_calibration = calibrate(model, options.loss_fn, options.calibration_batches)
            with torch.no_grad():
                for group in pruner.step(interactive=True):
                    if widths is not None:
                        group = _cut_to_width(pruner, group, widths, names)
                    else:
                        group = _round_group(pruner, group, spec.round_to, names)
                        if group is None:
                            continue
                        group = _enforce_min_keep(pruner, group, original_out, min_keep, spec.round_to, names)
                    if group is None:
                        continue
                    tracker.record(pruner.DG, group)
                    group.prune()
                    refresh_split_offsets(pruner.DG)
            _check_concat(model, concat_before, tracker, example)
            log.info("prune step %d/%d done", step + 1, spec.iterative_steps)
    return n_calibration
