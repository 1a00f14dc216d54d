"""Self-describing checkpoints, SPIN checkpoints, safe loading, atomic writes.

Our format (`format_version` 1) is `torch.save` of a plain dict, loadable with `weights_only=True`:

    {format_version: 1, model: {name, overrides, widths}, state_dict, parent, recipe, metrics, created, ...}

`widths` records the structural size of every Conv/Linear/norm layer (`model_widths`), so a pruned model
is rebuilt as `create_model(name, **overrides)` + `apply_widths` + a strict `load_state_dict`, without
replaying pruning and without pickling modules. A custom layer type whose size pruning changes registers how
to read its sizes (`LAYER_SIZES`) and how to rebuild it (`REBUILDERS`). SPIN files
(`{'model': state_dict, 'optimizer': ...}`) and bare state_dicts (optionally with DataParallel's `module.` prefix)
load with `name=` given.

Every failure a user can meet (missing, truncated or corrupted file, a pickle that asks to run code,
a file that is not a checkpoint, another architecture) is a one-line `UserError` naming the file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import logging
import os
import pickle
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from compress.errors import UserError
from compress.io import atomic_torch_save
from compress.models import create_model
from compress.models.encoders import ChannelShuffle
from compress.recipe import recipe_to_dict
from compress.runs import recorded_foreign, resolve_checkpoint

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
_SHOW = 5  # keys named in mismatch messages


# ----------------------------------------------------------------------------------------------- widths


def _conv_sizes(m: nn.Module) -> dict | None:
    return None if m.transposed else {"in": m.in_channels, "out": m.out_channels, "groups": m.groups}


# Module type -> its structural sizes (plain ints only, weights_only-safe), the ones pruning can change. The MRO is
# searched, so subclasses are covered; a custom layer type registers here and in REBUILDERS below.
LAYER_SIZES: dict[type, Callable[[nn.Module], dict | None]] = {
    nn.modules.conv._ConvNd: _conv_sizes,
    nn.Linear: lambda m: {"in": m.in_features, "out": m.out_features},
    nn.modules.batchnorm._NormBase: lambda m: {"num_features": m.num_features},
    nn.LayerNorm: lambda m: {"normalized_shape": [int(s) for s in m.normalized_shape]},
    nn.GroupNorm: lambda m: {"num_groups": m.num_groups, "num_channels": m.num_channels},
    nn.PReLU: lambda m: {"num_parameters": m.num_parameters},
    # ShuffleNet's shuffle: pruning shortens its permutation (compress.prune)
    ChannelShuffle: lambda m: {"channels": m.perm.numel()},
}


def _lookup(table: dict, m: nn.Module):
    return next((table[cls] for cls in type(m).__mro__ if cls in table), None)


def _module_sizes(m: nn.Module) -> dict | None:
    """Structural sizes of a layer whose shape pruning can change; None for other modules."""
    sizes = _lookup(LAYER_SIZES, m)
    return sizes(m) if sizes is not None else None


def model_widths(model: nn.Module) -> dict[str, dict]:
    """Per-module structural sizes keyed by module name, e.g. {"fc1": {"type": "Linear", "in": 2205, "out": 1024}}."""
    widths = {}
    for name, m in unwrap_model(model).named_modules():
        sizes = _module_sizes(m)
        if sizes is not None and name:
            widths[name] = {"type": type(m).__name__, **sizes}
    return widths


def _like(old: nn.Module, new: nn.Module) -> nn.Module:
    """Move `new` to `old`'s device/dtype and training mode."""
    ref = next(old.parameters(), None)
    if ref is not None:
        new = new.to(device=ref.device, dtype=ref.dtype)
    return new.train(old.training)


def _rebuild_conv(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(s["in"], s["out"], m.kernel_size, stride=m.stride, padding=m.padding, dilation=m.dilation,
                   groups=s["groups"], bias=m.bias is not None, padding_mode=m.padding_mode)


def _rebuild_linear(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(s["in"], s["out"], bias=m.bias is not None)


def _norm_bias(m: nn.Module) -> dict:
    """`bias=False` for an affine norm layer without bias, where this torch's constructor knows the flag."""
    affine = getattr(m, "affine", getattr(m, "elementwise_affine", False))
    if affine and m.bias is None and "bias" in inspect.signature(type(m).__init__).parameters:
        return {"bias": False}
    return {}


def _rebuild_batchnorm(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(s["num_features"], eps=m.eps, momentum=m.momentum, affine=m.affine,
                   track_running_stats=m.track_running_stats, **_norm_bias(m))


def _rebuild_layernorm(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(s["normalized_shape"], eps=m.eps, elementwise_affine=m.elementwise_affine, **_norm_bias(m))


def _rebuild_groupnorm(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(s["num_groups"], s["num_channels"], eps=m.eps, affine=m.affine, **_norm_bias(m))


def _rebuild_prelu(m: nn.Module, s: dict) -> nn.Module:
    return type(m)(num_parameters=s["num_parameters"])


# Module type -> rebuild(old_module, recorded_sizes) -> new module. The MRO is searched, so subclasses of these
# types are covered when their constructor takes the base arguments; a custom layer type registers its own here.
REBUILDERS: dict[type, Callable[[nn.Module, dict], nn.Module]] = {
    nn.modules.conv._ConvNd: _rebuild_conv,
    nn.Linear: _rebuild_linear,
    nn.modules.batchnorm._NormBase: _rebuild_batchnorm,
    nn.LayerNorm: _rebuild_layernorm,
    nn.GroupNorm: _rebuild_groupnorm,
    nn.PReLU: _rebuild_prelu,
    ChannelShuffle: lambda m, s: ChannelShuffle(s["channels"], groups=m.groups),  # the state_dict brings `perm`
}


def _rebuilder(m: nn.Module) -> Callable[[nn.Module, dict], nn.Module]:
    rebuild = _lookup(REBUILDERS, m)
    if rebuild is None:
        raise UserError(f"cannot rebuild layer type {type(m).__name__}: add a function to "
                        "compress.checkpoint.REBUILDERS")
    return rebuild


def apply_widths(model: nn.Module, widths: dict[str, dict]) -> nn.Module:
    """Replace every recorded module whose sizes differ with a fresh one of the recorded sizes (in place).

    Hyper-parameters (kernel, stride, padding, bias, eps, momentum, affine, ...) are copied from the module being
    replaced; the weights are whatever the new module initialises to (a state_dict load follows).
    """
    modules = dict(model.named_modules())
    for name, spec in widths.items():
        old = modules.get(name)
        if old is None:
            raise UserError(f"the checkpoint has a layer {name!r} that {type(model).__name__} does not have")
        if spec.get("type", type(old).__name__) != type(old).__name__:
            raise UserError(f"layer {name!r} is a {spec['type']} in the checkpoint but a {type(old).__name__} in "
                            f"{type(model).__name__}: another architecture")
        sizes = {k: v for k, v in spec.items() if k != "type"}
        if _module_sizes(old) == sizes:
            continue
        new = _like(old, _rebuilder(old)(old, sizes))
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
        modules[name] = new
    return model


# ----------------------------------------------------------------------------------------------- save


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _plain(obj: Any) -> Any:
    """Meta data as weights_only-safe plain values (dataclasses -> dict, Path -> str, tuples -> lists,
    numpy arrays -> tensors, numpy scalars -> Python numbers); any other object is refused."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return recipe_to_dict(obj)
    if isinstance(obj, dict):
        return {str(k) if isinstance(k, Path) else k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.Tensor)):
        return obj
    raise TypeError(f"checkpoint meta must be plain data (no objects), got {type(obj).__name__}")


def save_checkpoint(model: nn.Module, path: str | os.PathLike, *, parent: str | None = None, recipe: Any = None,
                    metrics: dict | None = None, **extra: Any) -> Path:
    """Write our self-describing checkpoint atomically; `extra` keys (epoch, optimizer state, ...) are stored too.

    The model must be a zoo model (it carries `config = {"name", "overrides"}`).
    """
    bare = unwrap_model(model)
    config = getattr(bare, "config", None)
    if not isinstance(config, dict) or "name" not in config:
        raise TypeError("save_checkpoint needs a zoo model with .config = {'name', 'overrides'} (create_model)")
    ckpt = {
        "format_version": FORMAT_VERSION,
        "model": {"name": config["name"], "overrides": _plain(dict(config.get("overrides") or {})),
                  "widths": model_widths(bare)},
        "state_dict": bare.state_dict(),
        "parent": _plain(parent),
        "recipe": _plain(recipe),
        "metrics": _plain(metrics or {}),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **_plain(extra),
    }
    return atomic_torch_save(ckpt, path)


# ----------------------------------------------------------------------------------------------- load


def read_checkpoint_file(path: str | os.PathLike, *, map_location: Any = "cpu") -> dict:
    """`torch.load(weights_only=True)` of a checkpoint dict, with one-line errors naming the file."""
    path = resolve_checkpoint(path)
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        wanted = re.search(r"GLOBAL\s+([\w.]+)", str(exc), flags=re.IGNORECASE)
        if wanted:  # the weights-only unpickler met a reference to code (a class or function)
            raise UserError(f"{path}: refused: the file asks for {wanted.group(1)}; only weights are loaded "
                            "(re-save it as a plain state_dict from a trusted environment)") from None
        raise UserError(f"{path}: corrupted or truncated checkpoint (not a readable pickle)") from None
    except Exception as exc:  # noqa: BLE001 - whatever the parser trips on, the file is damaged
        raise UserError(f"{path}: corrupted or truncated checkpoint ({_first_line(exc)})") from None
    if not isinstance(obj, dict):
        raise UserError(f"{path}: not a checkpoint (a {type(obj).__name__}, expected a dict)")
    return obj


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160]}" if text else type(exc).__name__


def load_checkpoint(path: str | os.PathLike, *, name: str | None = None, foreign: dict | None = None,
                    map_location: Any = "cpu", **overrides: Any) -> tuple[nn.Module, dict]:
    """Load our checkpoint, a SPIN checkpoint or a bare state_dict -> (model in eval mode, meta).

    Our files rebuild themselves (`overrides` are merged over the stored ones, e.g. img_res). SPIN files and
    bare state_dicts need `name=` (e.g. "hmr_resnet50") or `foreign=`, the {"name", "overrides"} a run recorded
    when the file entered it (ignored for our own files); without either, the record of a run under runs/ is used
    (runs.recorded_foreign). The key set must match exactly.
    """
    path = resolve_checkpoint(path)
    raw = read_checkpoint_file(path, map_location=map_location)
    if "format_version" in raw:
        model, meta = _load_ours(raw, path, name, overrides)
    else:
        foreign = foreign or (recorded_foreign(path) if name is None else None)
        if name is None and foreign:
            name, overrides = foreign["name"], {**(foreign.get("overrides") or {}), **overrides}
        model, meta = _load_foreign(raw, path, name, overrides)
    meta["path"] = str(path)
    return model.eval(), meta


def _create(name: str, overrides: dict, path: Path) -> nn.Module:
    try:
        return create_model(name, **overrides)
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None


def _load_ours(raw: dict, path: Path, name: str | None, overrides: dict) -> tuple[nn.Module, dict]:
    version, spec = raw.get("format_version"), raw.get("model")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version!r} is newer than this compress (knows {FORMAT_VERSION})")
    if not isinstance(spec, dict) or "name" not in spec or not isinstance(raw.get("state_dict"), dict):
        raise UserError(f"{path}: damaged checkpoint (no model description or state_dict)")
    if name is not None and name != spec["name"]:
        raise UserError(f"{path}: holds a {spec['name']} model, not {name} (drop --name to use the stored one)")
    model = _create(spec["name"], {**(spec.get("overrides") or {}), **overrides}, path)
    try:
        apply_widths(model, spec.get("widths") or {})
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from None
    load_state_dict_strict(model, raw["state_dict"], source=str(path))
    meta = {k: v for k, v in raw.items() if k != "state_dict"}
    return model, meta


def _load_foreign(raw: dict, path: Path, name: str | None, overrides: dict) -> tuple[nn.Module, dict]:
    """SPIN's `{'model': sd, 'optimizer': ...}` or a bare state_dict."""
    if isinstance(raw.get("model"), dict):
        state, fmt = raw["model"], "spin"
        meta = {k: v for k, v in raw.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}
    elif raw and all(isinstance(v, torch.Tensor) for v in raw.values()):
        state, fmt, meta = raw, "state_dict", {}
    else:
        raise UserError(f"{path}: not a checkpoint compress knows (keys: {', '.join(map(str, list(raw)[:_SHOW]))})")
    if name is None:
        raise UserError(f"{path}: a {'SPIN checkpoint' if fmt == 'spin' else 'bare state_dict'} does not say which "
                        "model it holds: pass the model name once (e.g. --name hmr_resnet50, or the recipe's model.name "
                        "with prune.from / model.checkpoint); runs record it")
    state = strip_prefix(state, "module.")
    model = _create(name, overrides, path)
    load_state_dict_strict(model, state, source=str(path))
    return model, {**meta, "format": fmt, "model": {"name": name, "overrides": dict(overrides)}}


def strip_prefix(state: dict, prefix: str) -> dict:
    """Remove `prefix` from every key when all keys carry it (DataParallel's `module.`)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return state


def load_state_dict_strict(model: nn.Module, state: dict, *, source: str) -> None:
    """load_state_dict(strict=True) that first names missing/unexpected keys and shape mismatches in one line."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(keys)} {what} key{'s' if len(keys) > 1 else ''} ({_some(keys)})"
                 for what, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
        raise UserError(f"{source}: does not match {model_name(model)}: {'; '.join(parts)}")
    for key, value in state.items():
        if tuple(value.shape) != tuple(own[key].shape):
            raise UserError(f"{source}: shape mismatch at {key}: checkpoint {tuple(value.shape)}, "
                            f"model {tuple(own[key].shape)}")
    model.load_state_dict(state, strict=True)


def model_name(model: nn.Module) -> str:
    """The zoo name a model was created with (its class name otherwise)."""
    config = getattr(model, "config", None)
    return config["name"] if isinstance(config, dict) and "name" in config else type(model).__name__


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOW])
    return shown + (f", ... +{len(keys) - _SHOW} more" if len(keys) > _SHOW else "")
