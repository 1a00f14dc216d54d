"""Adapters between HMR models and Torch-Pruning 1.6 (../shared/reference/torch_pruning_notes.md).

- importance criteria by name; `bn_scale` falls back to magnitude for groups without BatchNorm (fc1/fc2 would
  silently stay whole);
- ShuffleNetV2: the shuffle is a `ChannelShuffle` module (models/encoders.py) with a customized pruning function and
  index mappings through its permutation, so channels are removed consistently on both sides of every shuffle;
- fixes of the traced graph: split offsets refreshed after every pruned group, a flatten of pooled features treated
  as the identity on channels;
- the pruner build (heads always ignored: without that the build never finishes, notes section 0) and every step
  run under a time limit, since misconfigurations hang instead of raising;
- a tracker of the original channel indices still present in every layer.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import signal
import threading
from typing import Callable, Iterable

import torch
import torch_pruning as tp
from torch import nn
from torch_pruning import _helpers

from compress.errors import UserError
from compress.models.encoders import ChannelShuffle
from compress.prune.cost import is_depthwise, layer_widths_of
from compress.recipe import PruneSpec

log = logging.getLogger(__name__)

IMPORTANCES = ("l1", "l2", "bn_scale", "taylor", "lamp", "fpgm", "random")
BUILD_TIMEOUT_S = 600.0  # DenseNet201 takes ~80 s to build on 2 cores; a hang never ends


# ----------------------------------------------------------------------------------------------- importance


def make_importance(name: str):
    """The Torch-Pruning importance criterion called `name` (one of IMPORTANCES)."""
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
        return BNScaleWithFallback()
    raise UserError(f"prune.importance: unknown {name!r}; valid: {', '.join(IMPORTANCES)}")


class BNScaleWithFallback:
    """BN gamma where a group has BatchNorm, group L2 magnitude where it has none (Linear-only groups: fc1, fc2)."""

    def __init__(self) -> None:
        self.bn = tp.importance.BNScaleImportance()
        self.magnitude = tp.importance.GroupMagnitudeImportance(p=2)
        self.fallback: list[str] = []  # root layers of the groups scored by magnitude

    def __call__(self, group):
        imp = self.bn(group)
        if imp is None:
            imp = self.magnitude(group)
            name = group[0].dep.target.name
            self.fallback.append(name)
            log.info("bn_scale: group rooted at %s has no BatchNorm, scored by L2 magnitude instead", name)
        return imp


def calibrate(model: nn.Module, loss_fn: Callable | None, batches: Iterable | None) -> int:
    """Accumulate gradients of the real loss for data-driven importance (Taylor); returns the batch count."""
    if loss_fn is None or batches is None:
        raise UserError("prune.importance taylor needs calibration data (run through `compress prune`, "
                        "which uses prune.calibration batches of the training set)")
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


# ----------------------------------------------------------------------------------------------- ShuffleNet


class ShufflePruner(tp.pruner.function.BasePruningFunc):
    """Torch-Pruning pruning function for ChannelShuffle: its one channel axis is indexed by *input* channels."""

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


class PermutationMapping:
    """Index mapping across a ChannelShuffle: input channel i sits at output position j with perm[j] = i."""

    def __init__(self, shuffle: ChannelShuffle, *, to_output: bool) -> None:
        self.shuffle = shuffle
        self.to_output = to_output

    def __call__(self, idxs):
        perm = self.shuffle.perm.tolist()  # read now: earlier groups may have shortened it
        table = {p: j for j, p in enumerate(perm)} if self.to_output else perm
        return [_helpers._HybridIndex(idx=table[i.idx], root_idx=i.root_idx) for i in idxs]


def install_shuffle_mappings(graph) -> int:
    """Give every dependency across a ChannelShuffle node its permutation mapping; returns the number of shuffles."""
    count = 0
    for module, node in graph.module2node.items():
        if not isinstance(module, ChannelShuffle):
            continue
        count += 1
        for dep in node.dependencies:  # shuffle -> consumer: input coordinates -> output positions
            if dep.target in node.outputs:
                dep.index_mapping[0] = PermutationMapping(module, to_output=True)
        for out_node in node.outputs:  # consumer -> shuffle: output positions -> input coordinates
            for dep in out_node.dependencies:
                if dep.target is node:
                    dep.index_mapping[0] = PermutationMapping(module, to_output=False)
    return count


# ----------------------------------------------------------------------------------------------- graph fixes


def refresh_split_offsets(graph) -> None:
    # Torch-Pruning updates a split's sizes when it prunes through it but keeps the offsets from tracing, so a
    # later group in the same step would be mapped with stale offsets (ShuffleNet's channel split).
    for node in graph.module2node.values():
        if node.type == tp.ops.OPTYPE.SPLIT and node.module.split_sizes is not None:
            offsets = [0]
            for size in node.module.split_sizes:
                offsets.append(offsets[-1] + size)
            node.module.offsets = offsets


def fix_pooled_flatten(graph) -> int:
    """Treat a flatten of globally pooled features (B, C, 1, 1) -> (B, C) as the identity on channels.

    Torch-Pruning infers a flatten stride as consumer_in // producer_out; with the IEF concat the consumer is fc1
    (F + 157 inputs), so for F <= 157 it invents a stride of 2 or more and maps the feature channels onto the wrong
    fc1 columns. A 1x1 spatial flatten never changes channel indices.
    """
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


# ----------------------------------------------------------------------------------------------- build


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


def named_modules(model: nn.Module, names: Iterable[str], *, key: str) -> dict[str, nn.Module]:
    """{name: module} for names of prune.<key>; an unknown name is a UserError with a "did you mean"."""
    modules = dict(model.named_modules())
    out = {}
    for name in names:
        if name not in modules or not name:
            hint = difflib.get_close_matches(name, [n for n in modules if n], n=1)
            did = f" (did you mean {hint[0]!r}?)" if hint else ""
            raise UserError(f"prune.{key}: the model has no module {name!r}{did}; `compress info` lists the layers")
        out[name] = modules[name]
    return out


def kept_whole(model: nn.Module, spec: PruneSpec) -> list[nn.Module]:
    """The heads (always) and prune.ignore: modules never pruned, whatever the scope."""
    heads = named_modules(model, getattr(model, "head_names", []), key="heads")
    extra = named_modules(model, spec.ignore, key="ignore")
    return list(heads.values()) + list(extra.values())


def scope_ignored(model: nn.Module, scope: str) -> list[nn.Module]:
    """The modules outside prune.scope (encoder, regressor or all)."""
    regressor = set(getattr(model, "regressor_names", []))
    if scope == "encoder":
        return [getattr(model, n) for n in regressor if hasattr(model, n)]
    if scope == "regressor":
        return [m for n, m in model.named_children() if n not in regressor]
    if scope == "all":
        return []
    raise UserError(f"prune.scope must be encoder, regressor or all, got {scope!r}")


def build_pruner(model: nn.Module, example: torch.Tensor, *, importance, ignored: list[nn.Module],
                 timeout_s: float | None, **options) -> tuple[tp.pruner.BasePruner, int]:
    """A Torch-Pruning BasePruner over `model` traced on example[:1], with the graph fixes and the ShuffleNet
    mappings installed -> (pruner, number of channel shuffles). `options` go to BasePruner as they are."""
    shuffles = any(isinstance(m, ChannelShuffle) for m in model.modules())
    with time_limit(timeout_s, "building the Torch-Pruning dependency graph"):
        pruner = tp.pruner.BasePruner(
            model, example[:1], importance=importance, ignored_layers=ignored,
            customized_pruners={ChannelShuffle: ShufflePruner()} if shuffles else None, **options)
    fix_pooled_flatten(pruner.DG)
    return pruner, install_shuffle_mappings(pruner.DG) if shuffles else 0


# ----------------------------------------------------------------------------------------------- tracking


class ChannelTracker:
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
            elif is_depthwise(module):
                axes = ["in", "out"]  # depthwise: one axis
            else:
                axes = ["out"] if graph.is_out_channel_pruning_fn(dep.handler) else ["in"]
            for axis in axes:
                kept = self.kept[name][axis]
                self.kept[name][axis] = [k for pos, k in enumerate(kept) if pos not in drop]
