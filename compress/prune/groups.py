"""What the budget and latency searches work on: the prunable channel groups (with importance and the layers they
touch) and a model of the per-layer widths, parameters, MACs and layer signatures as a function of the groups' widths.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from compress.latency import ACTIVATIONS, LayerSig
from compress.prune.core import PruneOptions, as_spec
from compress.prune.cost import is_depthwise, layer_widths_of, prunable_layers
from compress.prune.tp_glue import build_pruner, calibrate, kept_whole, make_importance, scope_ignored
from compress.recipe import PruneSpec


@dataclasses.dataclass
class BudgetGroup:
    """One prunable channel group as local pruning sees it (Torch-Pruning group, named by its root layer)."""

    root: str
    width: int  # channels at the start
    scores: list[float]  # importance of its channels (group-normalised), ascending
    layers: list[tuple[str, str, float]]  # (Conv2d/Linear name, "in" | "out" | "both", share of the group's
    # channels that land in that layer: 1 except behind a channel split, e.g. ShuffleNet's branches)
    candidates: list[int] = dataclasses.field(default_factory=list)  # allowed kept widths, descending

    def lost(self, keep_from: int, keep_to: int) -> float:
        """Importance removed when the kept width goes from keep_from down to keep_to (lowest scores go first)."""
        return float(sum(self.scores[self.width - keep_from:self.width - keep_to]))


def budget_groups(model: nn.Module, spec: PruneSpec | Mapping[str, Any], example: torch.Tensor, *,
                  options: PruneOptions = PruneOptions()) -> list[BudgetGroup]:
    """The prunable groups of `model` under `spec` (heads, ignore, scope), with importance and affected layers."""
    spec = as_spec(spec)
    work = copy.deepcopy(model).eval()
    ignored = kept_whole(work, spec) + scope_ignored(work, spec.scope)
    pruner, _ = build_pruner(work, example.to(next(work.parameters()).device),
                             importance=make_importance(spec.importance), ignored=ignored,
                             timeout_s=options.build_timeout_s, pruning_ratio=0.5)
    if spec.importance == "taylor":
        calibrate(work, options.loss_fn, options.calibration_batches)
    names = {m: n for n, m in work.named_modules()}
    graph = pruner.DG
    out: list[BudgetGroup] = []
    for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        root = group[0].dep.target.module
        width = graph.get_out_channels(root)
        if not width or width < 2 or pruner._get_channel_groups(group) > 1:
            continue  # grouped convs stay whole, as under the minimum keep of core.py
        with torch.no_grad():
            imp = pruner.estimate_importance(group)
        if imp is None:
            continue
        layers: dict[tuple[str, str], float] = {}
        for item in group:  # the group holds every channel of the root; items list where they land
            m = item.dep.target.module
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if is_depthwise(m):
                axis = "both"  # depthwise: in and out are one axis
            else:
                axis = "out" if graph.is_out_channel_pruning_fn(item.dep.handler) else "in"
            share = min(1.0, len(item.idxs) / width)
            layers[(names[m], axis)] = max(share, layers.get((names[m], axis), 0.0))
        out.append(BudgetGroup(root=names[root], width=int(width), scores=sorted(float(v) for v in imp),
                               layers=sorted((n, a, sh) for (n, a), sh in layers.items())))
    return out


def _layer_shapes(model: nn.Module, example: torch.Tensor) -> dict[str, dict]:
    """{layer: {"calls": forward calls per image batch, "hw": input (H, W) for convs}} from one traced forward."""
    shapes: dict[str, dict] = {}
    handles = []
    for name, m in prunable_layers(model).items():
        def hook(mod, inputs, output, name=name):
            entry = shapes.setdefault(name, {"calls": 0})
            entry["calls"] += 1
            if isinstance(mod, nn.Conv2d):
                entry["hw"] = [int(inputs[0].shape[-2]), int(inputs[0].shape[-1])]
        handles.append(m.register_forward_hook(hook))
    try:
        was = model.training
        with torch.no_grad():
            model.eval()(example[:1])
        model.train(was)
    finally:
        for h in handles:
            h.remove()
    return shapes


def _post_ops(model: nn.Module) -> dict[str, str]:
    """{conv name: "bn+relu6"}: the BatchNorm and activation that follow a conv in its Sequential, so the LUT
    times them with it (their cost scales with the conv's width, not with its MACs)."""
    kinds = {cls: key for key, cls in ACTIVATIONS.items()}
    out = {}
    for parent_name, parent in model.named_modules():
        if not isinstance(parent, nn.Sequential):
            continue
        children = list(parent.named_children())
        for i, (name, m) in enumerate(children):
            if not isinstance(m, nn.Conv2d):
                continue
            post = []
            rest = [c for _, c in children[i + 1:i + 3]]
            if rest and isinstance(rest[0], nn.BatchNorm2d):
                post.append("bn")
                rest = rest[1:]
                if rest and type(rest[0]) in kinds:
                    post.append(kinds[type(rest[0])])
            if post:
                out[f"{parent_name}.{name}" if parent_name else name] = "+".join(post)
    return out


class LayerModel:
    """Per-layer widths as a function of the groups' kept widths, and the layer signatures/costs they give."""

    def __init__(self, model: nn.Module, groups: list[BudgetGroup], example: torch.Tensor) -> None:
        self.groups = groups
        self.layers = prunable_layers(model)
        self.shapes = _layer_shapes(model, example)
        self.base = {n: layer_widths_of(m) for n, m in self.layers.items()}
        self.touching: dict[int, list[str]] = {i: sorted({n for n, _, _ in g.layers}) for i, g in enumerate(groups)}
        self.post = _post_ops(model)

    def dims(self, widths: list[int], names: Iterable[str] | None = None) -> dict[str, tuple[int, int]]:
        names = set(self.layers if names is None else names)
        cut_in = {n: 0 for n in names}
        cut_out = {n: 0 for n in names}
        for g, w in zip(self.groups, widths):
            cut = g.width - w
            if not cut:
                continue
            for name, axis, share in g.layers:
                if name in names:
                    part = cut if share >= 1 else int(round(cut * share))
                    if axis in ("in", "both"):
                        cut_in[name] += part
                    if axis in ("out", "both"):
                        cut_out[name] += part
        return {n: (self.base[n][0] - cut_in[n], self.base[n][1] - cut_out[n]) for n in names}

    def sig(self, name: str, cin: int, cout: int) -> LayerSig:
        m = self.layers[name]
        if isinstance(m, nn.Linear):
            return LayerSig("linear", cin, cout, bias=m.bias is not None)
        depthwise = is_depthwise(m)
        h, w = self.shapes.get(name, {}).get("hw", [1, 1])
        return LayerSig("conv", cin, cout, tuple(m.kernel_size), tuple(m.stride), tuple(m.padding),
                        tuple(m.dilation), cout if depthwise else m.groups, h, w, m.bias is not None,
                        self.post.get(name, ""))

    def calls(self, name: str) -> int:
        return int(self.shapes.get(name, {}).get("calls", 0))

    def analytic(self, name: str, cin: int, cout: int, metric: str) -> float:
        """Weights (params) or multiply-accumulates (macs) of one layer at these widths, all calls."""
        s = self.sig(name, cin, cout)
        if s.kind == "linear":
            weights = cin * cout
            return weights + (cout if s.bias else 0) if metric == "params_total" else weights * self.calls(name)
        weights = cout * (cin // s.groups) * s.kernel[0] * s.kernel[1]
        if metric == "params_total":  # a following BatchNorm adds its weight and bias per channel
            return weights + (cout if s.bias else 0) + (2 * cout if s.post.startswith("bn") else 0)
        ho = (s.height + 2 * s.padding[0] - s.dilation[0] * (s.kernel[0] - 1) - 1) // s.stride[0] + 1
        wo = (s.width + 2 * s.padding[1] - s.dilation[1] * (s.kernel[1] - 1) - 1) // s.stride[1] + 1
        return weights * ho * wo * self.calls(name)

    def analytic_total(self, widths: list[int], metric: str) -> float:
        return sum(self.analytic(n, ci, co, metric) for n, (ci, co) in self.dims(widths).items() if self.calls(n))
