"""Structured channel pruning of HMR models with Torch-Pruning's DependencyGraph, plus the HMR knowledge it lacks.

What this module adds on top of Torch-Pruning 1.6.1 (../shared/reference/torch_pruning_notes.md):
- the heads (`model.head_names`) are always ignored (without that the pruner build never finishes, notes section 0);
- after every step the estimate columns of the IEF concat layers (fc1) are checked bit for bit and
  `fc1.in_features == features + 157`;
- pruner construction and every step run under a time limit, since misconfigurations hang instead of raising;
- a per-layer minimum keep fraction (1 - max_layer_ratio) is enforced here, because Torch-Pruning's
  `max_pruning_ratio` is not a hard cap under global ranking (upstream #448);
- `bn_scale` falls back to magnitude for groups without BatchNorm (fc1/fc2 would silently stay whole);
- ShuffleNetV2: the shuffle is a `ChannelShuffle` module (models/encoders.py) with a customized pruning function and
  index mappings through its permutation, so channels are removed consistently on both sides of every shuffle;
- a ratio that would empty a layer is refused with the layer named.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import difflib
import json
import logging
import math
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from compress.constants import N_ESTIMATE
from compress.errors import UserError
from compress.models import parameter_split
from compress.models.encoders import ChannelShuffle

log = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "lamp", "fpgm", "random")
BUILD_TIMEOUT_S = 600.0  # DenseNet201 takes ~80 s to build on 2 cores; a hang never ends
MACS_NOTE = "MACs: Torch-Pruning's counter at batch 1, model.img_res; the regressor is counted once per IEF iteration"


# ----------------------------------------------------------------------------------------------- spec


def _as_spec(spec: Any):
    """A recipe PruneSpec, or a mapping with its YAML keys (`global`, `from`) -> PruneSpec."""
    from compress.recipe import PruneSpec

    if isinstance(spec, PruneSpec):
        return spec
    if isinstance(spec, Mapping):
        fields = {f.name.rstrip("_"): f.name for f in dataclasses.fields(PruneSpec)}
        unknown = [k for k in spec if k not in fields and k not in fields.values()]
        if unknown:
            raise UserError(f"prune: unknown keys {unknown}; valid: {', '.join(fields)}")
        return PruneSpec(**{fields.get(k, k): v for k, v in spec.items()})
    raise TypeError(f"spec must be a PruneSpec or a mapping, got {type(spec).__name__}")


# ----------------------------------------------------------------------------------------------- importance


def _importance(name: str, notes: list[str]):
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    if name == "random":
        return tp.importance.RandomImportance()
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    if name == "bn_scale":
        return _BNScaleWithFallback(notes)
    raise UserError(f"prune.importance: unknown {name!r}; valid: {', '.join(IMPORTANCES)}")


class _BNScaleWithFallback:
    """BN gamma where a group has BatchNorm, group L2 magnitude where it has none (Linear-only groups: fc1, fc2)."""

    def __init__(self, notes: list[str]) -> None:
        import torch_pruning as tp

        self.bn = tp.importance.BNScaleImportance()
        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2)
        self.fallback: list[str] = []
        self.notes = notes

    def __call__(self, group):
        imp = self.bn(group)
        if imp is None:
            imp = self.magnitude(group)
            name = group[0].dep.target.name
            self.fallback.append(name)
            log.info("bn_scale: group rooted at %s has no BatchNorm, scored by L2 magnitude instead", name)
        return imp


# ----------------------------------------------------------------------------------------------- ShuffleNet


def _shuffle_pruner():
    """Torch-Pruning pruning function for ChannelShuffle: its one channel axis is indexed by *input* channels."""
    import torch_pruning as tp

    class ShufflePruner(tp.pruner.function.BasePruningFunc):
        def prune_out_channels(self, layer: ChannelShuffle, idxs):
            drop = set(int(i) for i in idxs)
            perm = layer.perm.tolist()
            keep_inputs = [i for i in range(len(perm)) if i not in drop]
            new_index = {old: new for new, old in enumerate(keep_inputs)}
            layer.perm = torch.tensor([new_index[p] for p in perm if p not in drop], dtype=layer.perm.dtype,
                                      device=layer.perm.device)
            return layer

        prune_in_channels = prune_out_channels  # in and out are one axis (an intra-layer dependency)

        def get_out_channels(self, layer: ChannelShuffle):
            return layer.perm.numel()

        get_in_channels = get_out_channels

    return ShufflePruner()


class _PermutationMapping:
    """Index mapping across a ChannelShuffle: input channel i sits at output position j with perm[j] = i."""

    def __init__(self, shuffle: ChannelShuffle, *, to_output: bool) -> None:
        self.shuffle = shuffle
        self.to_output = to_output

    def __call__(self, idxs):
        from torch_pruning import _helpers

        perm = self.shuffle.perm.tolist()  # read now: earlier groups may have shortened it
        table = {p: j for j, p in enumerate(perm)} if self.to_output else perm
        return [_helpers._HybridIndex(idx=table[i.idx], root_idx=i.root_idx) for i in idxs]


def _install_shuffle_mappings(graph) -> int:
    """Give every dependency across a ChannelShuffle node its permutation mapping; returns the number of shuffles."""
    count = 0
    for module, node in graph.module2node.items():
        if not isinstance(module, ChannelShuffle):
            continue
        count += 1
        for dep in node.dependencies:  # shuffle -> consumer: input coordinates -> output positions
            if dep.target in node.outputs:
                dep.index_mapping[0] = _PermutationMapping(module, to_output=True)
        for out_node in node.outputs:  # consumer -> shuffle: output positions -> input coordinates
            for dep in out_node.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = _PermutationMapping(module, to_output=False)
    return count


def _refresh_split_offsets(graph) -> None:
    # Torch-Pruning updates a split's sizes when it prunes through it but keeps the offsets from tracing, so a
    # later group in the same step would be mapped with stale offsets (ShuffleNet's channel split).
    import torch_pruning as tp

    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and node.module.split_sizes is not None:
            offsets = [0]
            for size in node.module.split_sizes:
                offsets.append(offsets[-1] + size)
            node.module.offsets = offsets


def _fix_pooled_flatten(graph) -> int:
    """Treat a flatten of globally pooled features (B, C, 1, 1) -> (B, C) as the identity on channels.

    Torch-Pruning infers a flatten stride as consumer_in // producer_out; with the IEF concat the consumer is fc1
    (F + 157 inputs), so for F <= 157 it invents a stride of 2 or more and maps the feature channels onto the wrong
    fc1 columns. A 1x1 spatial flatten never changes channel indices.
    """
    import torch_pruning as tp

    fixed = 0
    for node in graph.module2node.values():
        if node.type != tp.ops.OPTYPE.RESHAPE:
            continue
        sizes = getattr(node.grad_fn, "_saved_self_sym_sizes", None) or getattr(node.grad_fn, "_saved_self_sizes", None)
        if sizes is not None and len(sizes) == 4 and int(sizes[2]) == 1 and int(sizes[3]) == 1:
            node.type = tp.ops.OPTYPE.ELEMENTWISE
            # drop the stride mappings already installed while the pruner was built
            for dep in node.dependencies:
                dep.index_mapping[0] = None
            for other in (*node.inputs, *node.outputs):
                for dep in other.dependencies:
                    if dep.target is node:
                        dep.index_mapping[0] = None
            fixed += 1
    return fixed


# ----------------------------------------------------------------------------------------------- guards


@contextlib.contextmanager
def time_limit(seconds: float | None, what: str):
    """Raise UserError if the block runs longer than `seconds` (SIGALRM; main thread on POSIX only)."""
    usable = seconds and hasattr(signal, "SIGALRM") and threading.current_thread() is threading.main_thread()
    if not usable:
        yield
        return

    def on_alarm(signum, frame):
        raise TimeoutError

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    except TimeoutError:
        raise UserError(f"{what} did not finish within {seconds:.0f} s; Torch-Pruning hangs when the heads are not "
                        "ignored or the IEF concat order is changed (features must come first)") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------------------- measurement


def _prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """{name: [in, out]} of every Conv2d and Linear layer."""
    out = {}
    for name, m in _prunable_layers(model).items():
        out[name] = [m.in_channels, m.out_channels] if isinstance(m, nn.Conv2d) else [m.in_features, m.out_features]
    return out


def _regressor_macs(model: nn.Module) -> int:
    n_iter = int(getattr(model, "n_iter", 1))
    total = 0
    for name in getattr(model, "regressor_names", []):
        for m in getattr(model, name).modules() if hasattr(model, name) else []:
            if isinstance(m, nn.Linear):
                total += m.in_features * m.out_features
    return total * n_iter


def cost(model: nn.Module, example: torch.Tensor) -> dict[str, int]:
    """Params (encoder / regressor / total) and MACs at the example's size (batch 1)."""
    import torch_pruning as tp

    split = parameter_split(model)
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(probe, example[:1])
    macs = int(macs)
    reg = _regressor_macs(model)
    with torch.no_grad():
        features = int(probe.extract_features(example[:1]).shape[1])
    return {"params_total": split["total"], "params_encoder": split["encoder"], "params_regressor": split["regressor"],
            "macs": macs, "macs_encoder": macs - reg, "macs_regressor": reg, "features": features}


# ----------------------------------------------------------------------------------------------- tracking


class _ChannelTracker:
    """Original channel indices still present in every Conv/Linear/BN, updated as groups are pruned."""

    def __init__(self, model: nn.Module) -> None:
        self.names = {}
        self.kept: dict[str, dict[str, list[int]]] = {}
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                i, o = layer_widths_of(m)
                self.names[m] = name
                self.kept[name] = {"in": list(range(i)), "out": list(range(o))}
            elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                self.names[m] = name
                self.kept[name] = {"out": list(range(m.num_features))}

    def record(self, graph, group) -> None:
        for item in group:
            dep, idxs = item.dep, item.idxs
            module = dep.target.module
            name = self.names.get(module)
            if name is None or not idxs:
                continue
            drop = set(int(i) for i in idxs)
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                axes = ["out"]
            elif isinstance(module, nn.Conv2d) and module.groups > 1 and module.groups == module.in_channels \
                    == module.out_channels:
                axes = ["in", "out"]  # depthwise: one axis
            else:
                axes = ["out"] if graph.is_out_channel_pruning_fn(dep.handler) else ["in"]
            for axis in axes:
                kept = self.kept[name][axis]
                self.kept[name][axis] = [k for pos, k in enumerate(kept) if pos not in drop]


def layer_widths_of(m: nn.Module) -> tuple[int, int]:
    if isinstance(m, nn.Conv2d):
        return m.in_channels, m.out_channels
    return m.in_features, m.out_features


# ----------------------------------------------------------------------------------------------- pruning


def _named(model: nn.Module, names: Iterable[str], *, key: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or not name:
            hint = difflib.get_close_matches(name, [n for n in modules if n], n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"prune.{key}: the model has no module {name!r}{did}; `compress info` lists the layers")
        out[name] = modules[name]
    return out


def _scope_ignored(model: nn.Module, scope: str) -> list[nn.Module]:
    regressor = set(getattr(model, "regressor_names", []))
    if scope == "encoder":
        return [getattr(model, n) for n in regressor if hasattr(model, n)]
    if scope == "regressor":
        return [m for n, m in model.named_children() if n not in regressor]
    if scope == "all":
        return []
    raise UserError(f"prune.scope must be encoder, regressor or all, got {scope!r}")


def _preflight(model: nn.Module, spec, ignored: set[nn.Module], by_module: dict[str, float]) -> None:
    """Refuse a ratio (with round_to) that would remove every output channel of a layer, naming it."""
    ratio_of = {}
    for name, ratio in by_module.items():
        root = model.get_submodule(name)
        for m in root.modules():
            ratio_of[m] = ratio
    for name, m in _prunable_layers(model).items():
        if m in ignored:
            continue
        if isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.out_channels:
            continue  # depthwise convs follow the layer that feeds them
        n = layer_widths_of(m)[1]
        ratio = ratio_of.get(m, spec.ratio)
        if ratio <= 0:
            continue
        keep = int(n * (1 - ratio))
        keep -= keep % spec.round_to
        if keep <= 0:
            where = f"ratio_by_module.{name}" if m in ratio_of else "ratio"
            raise UserError(f"prune.{where}: {ratio} with round_to={spec.round_to} would remove all {n} output "
                            f"channels of {name}; lower it or add {name!r} to prune.ignore")


def _calibrate(model: nn.Module, loss_fn, batches) -> int:
    """Accumulate gradients of the real loss for data-driven importance (Taylor); returns the batch count."""
    model.zero_grad(set_to_none=True)
    n = 0
    with torch.enable_grad():
        for batch in batches:
            loss = loss_fn(model, batch)
            if not torch.isfinite(loss):
                raise UserError("prune: the calibration loss is not finite; check the start checkpoint and data")
            loss.backward()
            n += 1
    if n == 0:
        raise UserError("prune.importance taylor needs calibration batches (prune.calibration >= 1)")
    return n


def _min_keep_count(original: int, min_keep: float, round_to: int) -> int:
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
    allowed = current - _min_keep_count(original.get(root, current), min_keep, round_to)
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


def _check_concat(model: nn.Module, before: dict[str, torch.Tensor], tracker: _ChannelTracker,
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


def prune_model(model: nn.Module, spec, example_inputs: torch.Tensor, *, loss_fn: Callable | None = None,
                calibration_batches: Iterable | None = None, build_timeout_s: float = BUILD_TIMEOUT_S,
                track_channels: bool = False, keep_widths: Mapping[str, int] | None = None,
                lut_dir: str | Path | None = None, lut_copy: str | Path | None = None) -> tuple[nn.Module, dict]:
    """Structured channel pruning of a zoo model -> (pruned copy in train mode, summary dict).

    spec: recipe PruneSpec (or a mapping with its keys). example_inputs: (B, 3, R, R) images for tracing.
    loss_fn(model, batch) -> scalar and calibration_batches are needed by `taylor`. The input model is not changed.
    track_channels=True adds summary["kept_channels"] = {layer: {"in": [...], "out": [...]}} (original indices).
    keep_widths: {group root layer: kept channels} instead of a ratio (each group keeps its most important ones);
    used by the budget searches. lut_dir / lut_copy: where a latency target caches its lookup table (a shared
    cache dir, and a copy for the run directory).
    """
    import torch_pruning as tp

    spec = _as_spec(spec)
    if spec.target is not None and keep_widths is None:
        return _prune_to_target(model, spec, example_inputs, loss_fn=loss_fn, calibration_batches=calibration_batches,
                                build_timeout_s=build_timeout_s, track_channels=track_channels, lut_dir=lut_dir,
                                lut_copy=lut_copy)
    if keep_widths is not None:  # every group is offered (ratio 0.5, local) and then cut to its given width
        spec = dataclasses.replace(spec, target=None, ratio=0.5, global_=False, iterative_steps=1, ratio_by_module={},
                                   round_to=1, max_layer_ratio=max(spec.max_layer_ratio, 0.5))
    notes: list[str] = [MACS_NOTE]
    model = copy.deepcopy(model).eval()
    example = example_inputs.to(next(model.parameters()).device)
    before = cost(model, example)
    widths_before = layer_widths(model)

    heads = _named(model, getattr(model, "head_names", []), key="heads")
    extra = _named(model, spec.ignore, key="ignore")
    by_module = _named(model, spec.ratio_by_module, key="ratio_by_module")
    ignored = list(heads.values()) + list(extra.values()) + _scope_ignored(model, spec.scope)
    ignored_set = {sub for m in ignored for sub in m.modules()}
    if keep_widths is None:  # given widths are checked by the search that chose them
        _preflight(model, spec, ignored_set, dict(spec.ratio_by_module))

    importance = _importance(spec.importance, notes)
    shuffles = [m for m in model.modules() if isinstance(m, ChannelShuffle)]
    tracker = _ChannelTracker(model)
    concat_before = {n: model.get_submodule(n).weight[:, -N_ESTIMATE:].detach().clone()
                     for n in getattr(model, "concat_layers", [])}
    min_keep = 1.0 - spec.max_layer_ratio
    t0 = time.perf_counter()
    with time_limit(build_timeout_s, "building the Torch-Pruning dependency graph"):
        pruner = tp.pruner.BasePruner(
            model, example[:1], importance=importance, pruning_ratio=spec.ratio,
            pruning_ratio_dict={by_module[n]: r for n, r in spec.ratio_by_module.items()},
            global_pruning=spec.global_, max_pruning_ratio=spec.max_layer_ratio,
            iterative_steps=spec.iterative_steps, ignored_layers=ignored,
            round_to=spec.round_to if spec.round_to > 1 else None,
            customized_pruners={ChannelShuffle: _shuffle_pruner()} if shuffles else None,
        )
    build_s = time.perf_counter() - t0
    _fix_pooled_flatten(pruner.DG)
    if shuffles:
        n = _install_shuffle_mappings(pruner.DG)
        notes.append(f"ShuffleNetV2: {n} channel shuffles pruned through their permutation (paired channels)")
    original_out = {m: layer_widths_of(m)[1] for m in _prunable_layers(model).values()}
    names = {m: n for n, m in model.named_modules()}

    t1 = time.perf_counter()
    n_calibration = 0
    with time_limit(build_timeout_s, "pruning"):
        for step in range(spec.iterative_steps):
            if spec.importance == "taylor":
                if loss_fn is None or calibration_batches is None:
                    raise UserError("prune.importance taylor needs calibration data (run through `compress prune`, "
                                    "which uses prune.calibration batches of the training set)")
                n_calibration = _calibrate(model, loss_fn, calibration_batches)
            with torch.no_grad():
                for group in pruner.step(interactive=True):
                    if keep_widths is not None:
                        group = _cut_to_width(pruner, group, keep_widths, names)
                    else:
                        group = _enforce_min_keep(pruner, group, original_out, min_keep, spec.round_to, names)
                    if group is None:
                        continue
                    tracker.record(pruner.DG, group)
                    group.prune()
                    _refresh_split_offsets(pruner.DG)
            _check_concat(model, concat_before, tracker, example)
            log.info("prune step %d/%d done", step + 1, spec.iterative_steps)
    prune_s = time.perf_counter() - t1

    model.zero_grad(set_to_none=True)
    after = cost(model, example)
    widths_after = layer_widths(model)
    fractions = {n: widths_after[n][1] / widths_before[n][1] for n in widths_before if n in widths_after}
    min_layer = min(fractions, key=fractions.get) if fractions else ""
    if spec.importance == "taylor":
        notes.append(f"taylor: gradients of the loss on {n_calibration} calibration batches before each step")
    if isinstance(importance, _BNScaleWithFallback) and importance.fallback:
        notes.append(f"bn_scale: {len(set(importance.fallback))} groups without BatchNorm scored by L2 magnitude "
                     f"({', '.join(sorted(set(importance.fallback))[:4])}...)")
    if spec.scope == "regressor" and before["params_regressor"] == after["params_regressor"]:
        notes.append("scope regressor: nothing prunable outside the heads in this model")
    model.train()
    summary = {
        "model": getattr(model, "config", {}).get("name", type(model).__name__),
        "importance": spec.importance, "ratio": spec.ratio, "global": spec.global_, "scope": spec.scope,
        "round_to": spec.round_to, "iterative_steps": spec.iterative_steps, "max_layer_ratio": spec.max_layer_ratio,
        "ratio_by_module": dict(spec.ratio_by_module), "ignore": list(spec.ignore),
        "img_res": int(example.shape[-1]),
        "before": before, "after": after,
        "params_kept": after["params_total"] / before["params_total"],
        "macs_kept": after["macs"] / before["macs"] if before["macs"] else 1.0,
        "min_keep_fraction": round(fractions.get(min_layer, 1.0), 4), "min_keep_layer": min_layer,
        "widths": {n: {"before": widths_before[n], "after": widths_after[n]} for n in widths_before
                   if widths_before[n] != widths_after.get(n)},
        "calibration_batches": n_calibration,
        "build_seconds": round(build_s, 2), "prune_seconds": round(prune_s, 2),
        "notes": notes,
    }
    if track_channels:
        summary["kept_channels"] = tracker.kept
    log.info("pruned %s: params %d -> %d, MACs %d -> %d", summary["model"], before["params_total"],
             after["params_total"], before["macs"], after["macs"])
    return model, summary


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


def budget_groups(model: nn.Module, spec, example: torch.Tensor, *, loss_fn: Callable | None = None,
                  calibration_batches: Iterable | None = None,
                  build_timeout_s: float = BUILD_TIMEOUT_S) -> list[BudgetGroup]:
    """The prunable groups of `model` under `spec` (heads, ignore, scope), with importance and affected layers."""
    import torch_pruning as tp

    spec = _as_spec(spec)
    work = copy.deepcopy(model).eval()
    heads = _named(work, getattr(work, "head_names", []), key="heads")
    extra = _named(work, spec.ignore, key="ignore")
    ignored = list(heads.values()) + list(extra.values()) + _scope_ignored(work, spec.scope)
    shuffles = [m for m in work.modules() if isinstance(m, ChannelShuffle)]
    with time_limit(build_timeout_s, "building the Torch-Pruning dependency graph"):
        pruner = tp.pruner.BasePruner(
            work, example[:1].to(next(work.parameters()).device), importance=_importance(spec.importance, []),
            pruning_ratio=0.5, ignored_layers=ignored,
            customized_pruners={ChannelShuffle: _shuffle_pruner()} if shuffles else None)
    _fix_pooled_flatten(pruner.DG)
    if shuffles:
        _install_shuffle_mappings(pruner.DG)
    if spec.importance == "taylor":
        if loss_fn is None or calibration_batches is None:
            raise UserError("prune.importance taylor needs calibration data (run through `compress prune`)")
        _calibrate(work, loss_fn, calibration_batches)
    names = {m: n for n, m in work.named_modules()}
    graph = pruner.DG
    out: list[BudgetGroup] = []
    for group in graph.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types):
        root = group[0].dep.target.module
        width = graph.get_out_channels(root)
        if not width or width < 2 or pruner._get_channel_groups(group) > 1:
            continue  # grouped convs stay whole, as under _enforce_min_keep
        with torch.no_grad():
            imp = pruner.estimate_importance(group)
        if imp is None:
            continue
        layers: dict[tuple[str, str], float] = {}
        for item in group:  # the group holds every channel of the root; items list where they land
            m = item.dep.target.module
            if not isinstance(m, (nn.Conv2d, nn.Linear)):
                continue
            if isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels:
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
    for name, m in _prunable_layers(model).items():
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
    from compress.latency import ACTIVATIONS

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


class _LayerModel:
    """Per-layer widths as a function of the groups' kept widths, and the layer signatures/costs they give."""

    def __init__(self, model: nn.Module, groups: list[BudgetGroup], example: torch.Tensor) -> None:
        self.groups = groups
        self.layers = _prunable_layers(model)
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

    def sig(self, name: str, cin: int, cout: int):
        from compress.latency import LayerSig

        m = self.layers[name]
        if isinstance(m, nn.Linear):
            return LayerSig("linear", cin, cout, bias=m.bias is not None)
        depthwise = 1 < m.groups == m.in_channels == m.out_channels
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


def latency_candidates(width: int, *, min_keep: float, multiple: int = 8) -> list[int]:
    """Kept widths the latency search may choose for a group, descending: the full width, then multiples of
    `multiple` (vector-friendly) at 1/16 (wide groups) or 1/8 steps, never below the minimum keep fraction."""
    floor = _min_keep_count(width, min_keep, 1)
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


def _budget_value(target, base: dict) -> tuple[str, float]:
    if target.params is not None or target.params_ratio is not None:
        metric = "params_total"
        value = target.params if target.params is not None else base[metric] * target.params_ratio
    else:
        metric = "macs"
        value = target.macs if target.macs is not None else base[metric] * target.macs_ratio
    return metric, float(value)


def _prune_to_target(model: nn.Module, spec, example_inputs: torch.Tensor, *, lut_dir=None, lut_copy=None,
                     **kwargs) -> tuple[nn.Module, dict]:
    """Prune to prune.target: params/MACs by bisecting the ratio then filling up; latency by the measured LUT."""
    target = spec.target
    if target.latency_ms is not None or target.latency_ratio is not None:
        return _prune_to_latency(model, spec, example_inputs, lut_dir=lut_dir, lut_copy=lut_copy, **kwargs)
    base = cost(model, example_inputs.to(next(model.parameters()).device))
    metric, budget = _budget_value(target, base)
    if base[metric] <= budget:
        raise UserError(f"prune.target: the model already has {metric} {base[metric]:,} <= {budget:,.0f}")

    def attempt(ratio: float):
        try:
            return prune_model(model, dataclasses.replace(spec, ratio=ratio, target=None), example_inputs, **kwargs)
        except UserError as exc:  # a ratio that empties a layer is simply too high
            log.info("target search: ratio %.4f refused (%s)", ratio, exc)
            return None

    lo, hi = 0.0, min(spec.max_layer_ratio, 0.99)
    top = attempt(hi)
    while top is None and hi > 0.1:  # a thin layer (an SE squeeze) refuses high ratios: try a lower top
        hi = round(hi - 0.1, 4)
        top = attempt(hi)
    if top is None or top[1]["after"][metric] > budget:
        reached = "refused" if top is None else f"{top[1]['after'][metric]:,}"
        raise UserError(f"prune.target: {metric} {budget:,.0f} is out of reach (ratio {hi:.2f} gives {reached}); "
                        "raise prune.max_layer_ratio or the target")
    best, below = (hi, top), None
    for _ in range(10):  # ratio to within ~0.001
        mid = (lo + hi) / 2
        result = attempt(mid)
        if result is not None and result[1]["after"][metric] <= budget:
            hi, best = mid, (mid, result)
        else:
            lo = mid
            below = result if result is not None else below
    ratio, (pruned, summary) = best
    method = f"channel ratio {ratio:.4f} (bisection)"
    if budget - summary["after"][metric] > FILL_TOLERANCE * budget and below is not None and spec.round_to == 1 \
            and not spec.global_:
        filled = _fill_up(model, spec, example_inputs, pruned, below[0], summary, metric, budget, **kwargs)
        if filled is not None:
            pruned, summary = filled
            method += f", then {summary.pop('_filled')} groups given back channels up to the budget"
    achieved = summary["after"][metric]
    gap = (budget - achieved) / budget * 100
    summary["ratio"] = round(ratio, 4)
    summary["target"] = {"metric": metric, "budget": int(budget), "reached": achieved, "achieved": achieved,
                         "gap_percent": round(gap, 4), "deterministic": not spec.global_}
    label = "params" if metric == "params_total" else "MACs"
    summary["notes"].append(f"target: {label} <= {budget:,.0f}: achieved {achieved:,} ({budget - achieved:,.0f} "
                            f"below, {gap:.4f}%) with {method}")
    if not spec.global_:
        summary["notes"].append("target: local pruning, so the widths depend only on the architecture and the "
                                "target, not on the weights: the same result on every run (deterministic)")
    return pruned, summary


FILL_TOLERANCE = 0.001  # fill up when the bisection lands more than 0.1% below the budget


def _fill_up(model, spec, example_inputs, hi_model, lo_model, hi_summary, metric: str, budget: float, **kwargs):
    """Give channels back, group by group in graph order, while the analytic count stays within the budget: first
    between the widths of the last ratio that met the budget (hi) and the first that did not (lo), then up to the
    full widths if room is left. The real counter checks the result and an overshoot is backed off.
    Deterministic (no weights involved for local pruning)."""
    example = example_inputs.to(next(model.parameters()).device)
    groups = budget_groups(model, spec, example, **{k: v for k, v in kwargs.items()
                                                    if k in ("loss_fn", "calibration_batches", "build_timeout_s")})
    layers = _LayerModel(model, groups, example)
    hi_w = [layer_widths_of(hi_model.get_submodule(g.root))[1] for g in groups]
    lo_w = [layer_widths_of(lo_model.get_submodule(g.root))[1] for g in groups]
    hi_real = hi_summary["after"][metric]
    hi_est = layers.analytic_total(hi_w, metric)
    room = budget - hi_real
    best = None
    full_w = [g.width for g in groups]
    for _ in range(5):
        widths, filled = list(hi_w), set()
        # first between the two ratios' widths (stays close to uniform), then up to the full width if room is left
        for bound in (lo_w, full_w):
            for gi in range(len(groups)):
                lo_k, hi_k = 0, max(bound[gi] - widths[gi], 0)
                while lo_k < hi_k:  # the most channels this group can take back within the room
                    mid = (lo_k + hi_k + 1) // 2
                    trial = widths[:gi] + [widths[gi] + mid] + widths[gi + 1:]
                    if layers.analytic_total(trial, metric) - hi_est <= room:
                        lo_k = mid
                    else:
                        hi_k = mid - 1
                if lo_k:
                    widths[gi] += lo_k
                    filled.add(gi)
        # small models: one channel can be worth more than the gap; trade one channel of group j for one of i
        floor = [_min_keep_count(g.width, 1.0 - spec.max_layer_ratio, 1) for g in groups]
        for _swap in range(3):
            used = layers.analytic_total(widths, metric) - hi_est
            best_swap = None
            for i in range(len(groups)):
                for j in range(len(groups)):
                    if i == j or widths[i] >= full_w[i] or widths[j] <= floor[j]:
                        continue
                    trial = list(widths)
                    trial[i] += 1
                    trial[j] -= 1
                    gain = layers.analytic_total(trial, metric) - hi_est - used
                    if 0 < gain and used + gain <= room and (best_swap is None or gain > best_swap[0]):
                        best_swap = (gain, trial, (i, j))
            if best_swap is None:
                break
            widths = best_swap[1]
            filled.update(best_swap[2])
        if not filled:
            break
        keep = {g.root: w for g, w in zip(groups, widths)}
        pruned, summary = prune_model(model, spec, example_inputs, keep_widths=keep, **kwargs)
        real = summary["after"][metric]
        if real <= budget:
            if best is None or real > best[1]["after"][metric]:
                best = (pruned, summary)
                summary["_filled"] = len(filled)
            break
        room -= (real - budget) * 1.5  # unmodelled terms (BatchNorm, activations): back off and retry
    if best is None:
        return None
    best[1]["ratio"] = hi_summary["ratio"]
    return best


LATENCY_MARGIN = 0.95  # aim 5% under a latency goal: repeated A/B timings on a loaded machine differ by a few %


def _prune_to_latency(model: nn.Module, spec, example_inputs: torch.Tensor, *, lut_dir=None, lut_copy=None,
                      max_rounds: int = 5, ab_repeats: int = 31, **kwargs) -> tuple[nn.Module, dict]:
    """Prune until an interleaved A/B timing on this device meets prune.target.latency_ms / latency_ratio."""
    from compress.latency import LatencyLUT, ab_latency, host_id, lut_filename, paired_ratio

    target = spec.target
    device = torch.device(target.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"prune.target.device is {target.device} but CUDA is not available here; use cpu")
    threads = target.threads or torch.get_num_threads()
    model = copy.deepcopy(model).eval().to(device)
    example = example_inputs.to(device)
    res = int(example.shape[-1])
    batch = target.latency_batch
    name = getattr(model, "config", {}).get("name", type(model).__name__)
    meta = {"model": name, "img_res": res, "batch": batch, "device": str(device), "threads": threads,
            "host": host_id(), "torch": torch.__version__}
    lut_path = Path(lut_dir) / lut_filename(meta) if lut_dir else None
    lut = LatencyLUT(meta=meta, path=lut_path)

    t0 = time.perf_counter()
    groups = budget_groups(model, spec, example, **{k: v for k, v in kwargs.items()
                                                    if k in ("loss_fn", "calibration_batches", "build_timeout_s")})
    multiple = max(8, spec.round_to)
    for g in groups:
        g.candidates = latency_candidates(g.width, min_keep=1.0 - spec.max_layer_ratio, multiple=multiple)
    layers = _LayerModel(model, groups, example)
    start = ab_latency({"start": model}, img_res=res, batch=batch, device=device, threads=threads)["start"]
    start_ms = start["median_ms"]
    budget_ms = target.latency_ms if target.latency_ms is not None else target.latency_ratio * start_ms
    if start_ms <= budget_ms:
        raise UserError(f"prune.target: the start model already runs in {start_ms:.2f} ms <= {budget_ms:.2f} ms "
                        f"(batch {batch}, {device}, {threads} threads)")

    full = [g.width for g in groups]
    state = [0] * len(groups)

    def widths_of(st):
        return [g.candidates[i] for g, i in zip(groups, st)]

    def move_sigs(st, gi, ci):
        trial = widths_of(st)
        old = layers.dims(trial, layers.touching[gi])
        trial[gi] = groups[gi].candidates[ci]
        new = layers.dims(trial, layers.touching[gi])
        return old, new

    def prefetch(st, moves):
        sigs = []
        for gi, ci in moves:
            _, new = move_sigs(st, gi, ci)
            sigs += [layers.sig(n, *d) for n, d in new.items() if layers.calls(n) and min(d) > 0]
        missing = [s for s in {s.key: s for s in sigs}.values() if s.key not in lut.table]
        for i in range(0, len(missing), 256):  # bounded memory: a chunk of freshly built layers at a time
            lut.lookup(missing[i:i + 256])

    def move_cost(st, gi, to):  # in LUT ms (the sum of the layers' own times)
        old, new = move_sigs(st, gi, to)
        if any(min(d) <= 0 for n, d in new.items() if layers.calls(n)):
            return math.inf  # would empty a layer: never taken
        return sum(layers.calls(n) * (lut.table[layers.sig(n, *new[n]).key] - lut.table[layers.sig(n, *old[n]).key])
                   for n in new if layers.calls(n))

    def layer_sum(widths):
        dims = layers.dims(widths)
        table = lut.lookup(layers.sig(n, *d) for n, d in dims.items() if layers.calls(n))
        return sum(layers.calls(n) * table[layers.sig(n, *d).key] for n, d in dims.items() if layers.calls(n))

    full_sum = layer_sum(full)
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
            pair = paired_ratio(ab["pruned"]["samples_ms"], ab["start"]["samples_ms"])
            score = (ab["pruned"]["median_ms"] / budget_ms if target.latency_ms is not None
                     else pair["median"] / target.latency_ratio)  # <= 1 meets the target
            if worst is None or score > worst[0]:
                worst = (score, ab, pair)
            if score > 1:
                break
        return worst[0] <= 1, worst[1], worst[2], run

    aim = (target.latency_ratio if target.latency_ratio is not None else budget_ms / start_ms) * LATENCY_MARGIN
    rounds = []
    pruned = summary = None
    for round_ in range(1, max_rounds + 1):
        state, _ = select_for_latency(groups, move_cost, start_ms=layer_sum(widths_of(state)),
                                      target_ms=aim * full_sum, state=state, prefetch=prefetch)
        fraction = layer_sum(widths_of(state)) / full_sum
        keep = {g.root: w for g, w in zip(groups, widths_of(state))}
        pruned, summary = prune_model(model, spec, example, keep_widths=keep, **kwargs)
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
    last = rounds[-1]
    if lut_copy:
        lut.save(lut_copy)
    widths = widths_of(state)
    odd = [g.root for g, w in zip(groups, widths) if w != g.width and w % multiple]
    del summary["ratio"]  # no single channel ratio: each group has its own width (target.groups)
    summary["target"] = {
        "metric": "latency_ms", "budget": round(budget_ms, 3), "batch": batch, "device": str(device),
        "threads": threads, "start_ms": round(start_ms, 3), "predicted_ms": last["predicted_ms"],
        "measured_ms": last["measured_ms"], "baseline_ms": last["baseline_ms"], "goal_ms": last["goal_ms"],
        "met": last["met"], "rounds": rounds, "lut": str(lut_path or lut_copy or ""), "lut_entries": len(lut.table),
        "lut_loaded": lut.loaded, "lut_measured": lut.measured, "search_seconds": round(time.perf_counter() - t0, 1),
        "groups": {g.root: [g.width, w] for g, w in zip(groups, widths) if w != g.width},
    }
    what = (f"{target.latency_ratio:g} x the start model" if target.latency_ratio is not None
            else f"{budget_ms:.2f} ms")
    notes = summary["notes"]
    plural = "s" if threads > 1 else ""
    notes.append(f"target: latency <= {what} at batch {batch} on {device} ({threads} thread{plural}): predicted "
                 f"{last['predicted_ms']:.2f} ms, measured {last['measured_ms']:.2f} ms "
                 f"(p10-p90 {last['p10_ms']:.2f}-{last['p90_ms']:.2f}) vs baseline {last['baseline_ms']:.2f} ms in an "
                 f"interleaved A/B timing (per-round ratio {last['paired_ratio']:.3f}, p10-p90 "
                 f"{last['paired_ratio_p10']:.3f}-{last['paired_ratio_p90']:.3f}) -> "
                 f"{'met' if last['met'] else 'NOT met'} after {len(rounds)} round{'s' if len(rounds) > 1 else ''}")
    unused = [k for k, on in (("ratio_by_module", spec.ratio_by_module), ("global", spec.global_),
                              ("iterative_steps", spec.iterative_steps > 1)) if on]
    if unused:
        notes.append(f"target: the latency search ignores prune.{', prune.'.join(unused)}")
    if not last["met"]:
        notes.append(f"target: the latency goal {last['goal_ms']:.2f} ms was not reached in {max_rounds} rounds; "
                     "the machine may be loaded (re-run) or the budget is below what max_layer_ratio allows")
    notes.append(f"target: channels chosen by importance per measured ms from a per-layer latency LUT "
                 f"({len(lut.table)} layer shapes, {lut.loaded} read from cache, {lut.measured} timed now: "
                 f"{lut_path or 'not cached'}); kept widths are multiples of {multiple}"
                 + (f" except {len(odd)} groups" if odd else ""))
    return pruned, summary


# ----------------------------------------------------------------------------------------------- run


def hmr_loss_fn(recipe, *, device: torch.device) -> Callable:
    """loss_fn(model, batch) -> SPIN's weighted fine-tuning loss (static fits included), for Taylor importance."""
    from compress.data.fits import StaticFits
    from compress.losses import loss_weights, spin_loss_fn
    from compress.recipe import TrainSpec
    from compress.smpl import training_smpl

    spec = recipe.finetune or recipe.train or TrainSpec()
    smpl = training_smpl(recipe.data.root, spec).to(device)
    fits = StaticFits(recipe.data.root, recipe.data.train_datasets)
    return spin_loss_fn(smpl, weights=loss_weights(spec, distill=False), img_res=recipe.model.img_res,
                        device=device, fits=fits)


def calibration_batches(recipe, *, n: int, batch_size: int = 8) -> list[dict]:
    """The first `n` batches of a seeded shuffle of the training mix, without augmentation."""
    from compress.data.datasets import training_set

    dataset = training_set(recipe.data, img_res=recipe.model.img_res, augment=False)
    generator = torch.Generator().manual_seed(0)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                                         num_workers=0, drop_last=False)
    batches = []
    for batch in loader:
        if len(batches) >= n:
            break
        batches.append(batch)
    return batches


def run_prune(recipe, *, out_dir: str | Path | None = None) -> dict:
    """`compress prune RECIPE`: load the start model, prune it, write runs/NAME/{pruned.pt, recipe.yaml,
    metrics/prune_summary.json} and point runs/latest at the run. Returns the summary."""
    from compress.checkpoint import save_checkpoint
    from compress.io import atomic_write_text
    from compress.recipe import save_recipe
    from compress.runs import point_latest
    from compress.start import load_start_model

    spec = recipe.prune
    if spec is None:
        raise UserError("the recipe has no `prune` section (see recipes/mbv2_p1.yaml)")
    run_dir = Path(out_dir) if out_dir else Path("runs") / (recipe.name or "prune")
    model, parent = load_start_model(recipe)
    device = next(model.parameters()).device
    res = recipe.model.img_res
    example = torch.randn(1, 3, res, res, generator=torch.Generator().manual_seed(0)).to(device)
    loss_fn = batches = None
    if spec.importance == "taylor":
        loss_fn = hmr_loss_fn(recipe, device=device)
        batches = calibration_batches(recipe, n=spec.calibration)
        if len(batches) < spec.calibration:
            log.warning("prune: only %d calibration batches available (prune.calibration=%d)", len(batches),
                        spec.calibration)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # `random` importance and dropout-free tracing are then reproducible
        # a latency target caches its lookup table next to the runs (runs/.latency_lut) and copies it into the run
        pruned, summary = prune_model(model, spec, example, loss_fn=loss_fn, calibration_batches=batches,
                                      lut_dir=run_dir.parent / ".latency_lut", lut_copy=run_dir / "latency_lut.json")
    run_dir.mkdir(parents=True, exist_ok=True)
    save_recipe(recipe, run_dir / "recipe.yaml")
    record = {k: v for k, v in summary.items() if k != "widths"}
    path = save_checkpoint(pruned, run_dir / "pruned.pt", parent=parent, recipe=recipe, metrics={}, stage="pruned",
                           prune=record)
    summary["checkpoint"] = str(path)
    summary["parent"] = parent
    (run_dir / "metrics").mkdir(exist_ok=True)
    atomic_write_text(run_dir / "metrics" / "prune_summary.json", json.dumps(summary, indent=2))
    point_latest(run_dir)
    log.info("wrote %s", path)
    return summary
