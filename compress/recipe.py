"""Recipes: typed, strict, frozen dataclasses loaded from YAML (no torch here).

A recipe is plain data. `load_recipe` reads YAML, applies `--set a.b=value` overrides and converts the
nested dict into the dataclasses below with one generic converter that collects *every* problem (unknown
key with a "did you mean", wrong type, out-of-range value, missing required key), each with its key path,
and raises them together as one `UserError`.

Adding a field: write `my_field: int = opt(3, "one-line help", ge=1)` in the section's dataclass. The
converter, `recipe_to_dict` and the generated reference (`recipe_reference_markdown`) pick it up.
Conventions:
- the YAML key is the attribute name without a trailing underscore (`global_` <-> `global`, `from_` <-> `from`);
- `Literal[...]` types restrict values to a set of choices; `ge/gt/le/lt` in `opt` bound numbers;
- a section may define `check(self, given: frozenset[str]) -> list[str]` for cross-field rules
  (`given` = the YAML keys present); a message starting with one of the section's keys ("ratio: ...") is
  reported at that key, any other message at the section.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from compress.constants import EVAL_DATASETS, IMAGE_FOLDERS, TRAIN_DATASETS, UPI_S1H_FOLDER
from compress.errors import UserError
from compress.io import atomic_write_text

DATA_ROOT_ENV = "COMPRESS_DATA_ROOT"
DEFAULT_DATA_ROOT = "data/synthetic"


def opt(default: Any, help: str, **bounds: float) -> Any:  # noqa: A002 - `help` reads best in field declarations
    """A dataclass field with a one-line help and optional numeric bounds (ge, gt, le, lt).

    Mutable defaults (dict, list) are deep-copied per instance, so they can be written inline.
    """
    unknown = set(bounds) - {"ge", "gt", "le", "lt"}
    if unknown:
        raise TypeError(f"opt() got unknown bounds {sorted(unknown)}")
    meta = {"help": help, **bounds}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


# ----------------------------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class ModelSpec:
    name: str = opt("hmr_mobilenet_v2", "zoo model name (`compress info list` shows them)")
    overrides: Dict[str, Any] = opt({}, "keyword overrides passed to create_model, e.g. {encoder_head: logits}")
    img_res: int = opt(224, "input crop size in pixels", ge=16)
    checkpoint: Optional[str] = opt(None, "weights to start from: our checkpoint, a run dir, or SPIN's file")
    pretrained: bool = opt(False, "ImageNet encoder weights (only from the local torch hub cache)")


@dataclass(frozen=True)
class DataSpec:
    root: str = opt(DEFAULT_DATA_ROOT, f"SPIN-layout data root; ${DATA_ROOT_ENV} or --data override it")
    image_roots: Dict[str, str] = opt({}, "dataset key (or upi-s1h) -> image folder, for datasets stored elsewhere")
    train_datasets: List[str] = opt(
        ["h36m", "lsp-orig", "mpii", "lspet", "coco", "mpi-inf-3dhp"], "training datasets (SPIN's mixed set)")
    mix: Dict[str, float] = opt(
        {"h36m": 0.3, "itw": 0.6, "mpi-inf-3dhp": 0.1},
        "sampling proportions; `itw` is split over the in-the-wild sets by size")
    workers: int = opt(2, "DataLoader worker processes", ge=0)
    cache: bool = opt(False, "read pre-cropped images from the HDF5 cache (`compress data cache`)")
    augment: bool = opt(True, "SPIN's training augmentation (flip, rotation, scale, pixel noise)")
    epoch_length: Optional[int] = opt(
        None, "samples per epoch of the mixed training set (null: the largest dataset's length, as SPIN); a longer "
        "epoch restarts the data loader less often (fast GPUs)", ge=1)

    def check(self, given: frozenset[str]) -> list[str]:
        errors = _unknown_names("train_datasets", self.train_datasets, list(TRAIN_DATASETS))
        errors += _unknown_names("mix", list(self.mix), ["itw", *TRAIN_DATASETS])
        errors += _unknown_names("image_roots", list(self.image_roots), [*IMAGE_FOLDERS, UPI_S1H_FOLDER])
        errors += [f"mix.{k}: must be >= 0, got {v}" for k, v in self.mix.items() if v < 0]
        if self.mix and sum(self.mix.values()) <= 0:
            errors.append("mix: the proportions must not all be zero")
        return errors


@dataclass(frozen=True)
class PruneTarget:
    """A budget to prune to instead of a fixed ratio (give exactly one of the figures)."""

    params: Optional[int] = opt(None, "target parameter count", ge=1)
    macs: Optional[int] = opt(None, "target MACs at model.img_res", ge=1)
    params_ratio: Optional[float] = opt(None, "target params as a fraction of the unpruned model", gt=0, lt=1)
    macs_ratio: Optional[float] = opt(None, "target MACs as a fraction of the unpruned model", gt=0, lt=1)
    latency_ms: Optional[float] = opt(None, "target latency in milliseconds, measured on `device`", gt=0)
    latency_ratio: Optional[float] = opt(
        None, "target latency as a fraction of the unpruned start model's, both measured on `device`", gt=0, lt=1)
    latency_batch: int = opt(1, "batch size the latency target is measured at", ge=1)
    device: str = opt("cpu", "where latency is measured: cpu or cuda[:N] (the machine the command runs on)")
    runtime: Literal["torch", "ort"] = opt(
        "torch", "what runs the model when latency is measured: torch (eager PyTorch) or ort (ONNX Runtime on the "
                 "CPU: the exported model, as deployed)")
    threads: Optional[int] = opt(None, "CPU threads while measuring latency (null: torch's current setting)", ge=1)

    def check(self, given: frozenset[str]) -> list[str]:
        figures = ("params", "macs", "params_ratio", "macs_ratio", "latency_ms", "latency_ratio")
        given_ = [k for k in figures if getattr(self, k) is not None]
        if len(given_) != 1:
            return [f"give exactly one of {', '.join(figures)} (got {given_ or 'none'})"]
        if not (self.device == "cpu" or self.device == "cuda" or self.device.startswith("cuda:")):
            return [f"device: expected cpu or cuda[:N], got {self.device!r}"]
        if self.runtime == "ort" and self.device != "cpu":
            return [f"runtime: ort measures with ONNX Runtime's CPU provider; set device: cpu (got {self.device})"]
        return []


Importance = Literal["l1", "l2", "bn_scale", "taylor", "lamp", "fpgm", "random"]


@dataclass(frozen=True)
class PruneSpec:
    from_: str = opt("", "checkpoint path or run dir to prune (empty: model.checkpoint or a fresh model)")
    fallback: str = opt("", "checkpoint pruned when `from` does not exist (the MobileNetV2 recipes: the shipped "
                            "reference model), with the settings of its card (checkpoints/*.json)")
    importance: Importance = opt("l2", "channel importance criterion")
    ratio: float = opt(0.2, "fraction of channels removed (ignored when `target` is given)", ge=0, lt=1)
    target: Optional[PruneTarget] = opt(None, "prune to a budget (params, MACs or latency) instead of a ratio")
    global_: bool = opt(False, "rank channels across layers (global) instead of per layer")
    max_layer_ratio: float = opt(0.8, "largest fraction of any single layer's channels that may be removed",
                                 gt=0, le=1)
    scope: Literal["encoder", "regressor", "all"] = opt("all", "which part of the model is pruned")
    ratio_by_module: Dict[str, float] = opt({}, "module name -> its own ratio (overrides `ratio`)")
    ignore: List[str] = opt([], "module names never pruned (the heads are always ignored)")
    round_to: Literal[1, 2, 4, 8, 16] = opt(
        1, "kept channel counts are multiples of this: each layer keeps the nearest multiple (at least round_to); "
           "a layer it cannot round stays whole")
    iterative_steps: int = opt(1, "prune in this many steps to the final ratio", ge=1)
    calibration: int = opt(4, "batches used by data-driven criteria (taylor)", ge=0)

    def check(self, given: frozenset[str]) -> list[str]:
        errors = [f"ratio_by_module.{k}: must be in [0, 1), got {v}" for k, v in self.ratio_by_module.items()
                  if not 0 <= v < 1]
        if self.target is not None and "ratio" in given:
            errors.append("ratio: give either `ratio` or `target`, not both")
        return errors


@dataclass(frozen=True)
class DistillSpec:
    teacher: str = opt("", "teacher checkpoint or run dir (empty: the unpruned parent)")
    rotmat: float = opt(1.0, "weight of the rotation-matrix MSE to the teacher", ge=0)
    betas: float = opt(0.01, "weight of the shape MSE to the teacher", ge=0)
    cam: float = opt(1.0, "weight of the camera MSE to the teacher", ge=0)
    joints: float = opt(1.0, "weight of the 3D-joint MSE to the teacher", ge=0)
    features: float = opt(0.0, "weight of the encoder-feature MSE to the teacher (same width only)", ge=0)


@dataclass(frozen=True)
class TrainSpec:
    epochs: int = opt(20, "epochs", ge=0)
    steps_per_epoch: Optional[int] = opt(None, "optimizer steps per epoch (null: a full pass)", ge=1)
    batch_size: int = opt(64, "global batch size (split evenly over DDP processes)", ge=1)
    lr: float = opt(5e-5, "Adam learning rate", gt=0)
    encoder_lr: Optional[float] = opt(None, "Adam learning rate of the encoder (null: lr); the regressor keeps lr",
                                      gt=0)
    weight_decay: float = opt(0.0, "Adam weight decay", ge=0)
    grad_clip: float = opt(0.0, "clip the gradient norm to this value (0: off, as SPIN)", ge=0)
    warmup_steps: int = opt(0, "raise the learning rate linearly over the first N optimizer steps (0: off, as SPIN)",
                            ge=0)
    lr_schedule: Literal["constant", "cosine"] = opt(
        "constant", "after the warm-up: constant (SPIN) or cosine decay to 0 at the run's last step")
    seed: int = opt(0, "random seed (data order, augmentation, init)")
    amp: bool = opt(True, "mixed precision (only used on CUDA)")
    amp_dtype: Literal["auto", "bf16", "fp16"] = opt(
        "auto", "with amp on CUDA: bf16, fp16 (with a GradScaler), or auto (bf16 where the GPU supports it)")
    channels_last: bool = opt(False, "channels-last memory format")
    compile: bool = opt(False, "torch.compile the model")
    log_every: int = opt(20, "log every N steps", ge=1)
    checkpoint_every_epoch: bool = opt(True, "write an epoch checkpoint (for resuming) after every epoch")
    snapshot_every: int = opt(0, "also keep the model every N epochs as snapshots/epoch_<N>.pt, for learning "
                                 "curves (0: off)", ge=0)
    kp2d: float = opt(5.0, "2D keypoint loss weight", ge=0)
    kp3d: float = opt(5.0, "3D keypoint loss weight", ge=0)
    pose: float = opt(1.0, "SMPL pose (rotmat MSE) loss weight", ge=0)
    betas: float = opt(0.001, "SMPL shape (betas MSE) loss weight", ge=0)
    shape: float = opt(0.0, "vertex L1 loss weight (SPIN: disabled)", ge=0)
    cam: float = opt(1.0, "camera scale regulariser weight", ge=0)
    openpose_weight: float = opt(0.0, "confidence multiplier of the OpenPose 2D joints", ge=0)
    gt_weight: float = opt(1.0, "confidence multiplier of the ground-truth 2D joints", ge=0)
    loss_scale: float = opt(60.0, "total loss multiplier (SPIN: 60)", gt=0)
    fit_threshold: Optional[float] = opt(
        100.0, "static fits whose SMPLify reprojection loss (224 px frame) is not below this are no SMPL target "
        "(SPIN: 100; null: use every fit)", gt=0)
    distill: Optional[DistillSpec] = opt(None, "distillation from a teacher (null: off)")


@dataclass(frozen=True)
class EvalSpec:
    datasets: List[str] = opt(["3dpw", "mpi-inf-3dhp", "h36m-p1", "h36m-p2", "lsp"], "evaluation datasets")
    batch_size: int = opt(32, "evaluation batch size", ge=1)
    subset: Optional[int] = opt(None, "first N samples of each dataset (null: all)", ge=1)
    workers: int = opt(2, "DataLoader worker processes", ge=0)

    def check(self, given: frozenset[str]) -> list[str]:
        return _unknown_names("datasets", self.datasets, list(EVAL_DATASETS))


@dataclass(frozen=True)
class Recipe:
    name: str = opt("", "run name (default: the recipe file's stem)")
    description: str = opt("", "free text")
    model: ModelSpec = opt(ModelSpec(), "the model to build or load")
    data: DataSpec = opt(DataSpec(), "data root and training mix")
    prune: Optional[PruneSpec] = opt(None, "structured channel pruning (null: no pruning)")
    train: Optional[TrainSpec] = opt(None, "baseline training (`compress train`)")
    finetune: Optional[TrainSpec] = opt(None, "fine-tuning after pruning (`compress finetune`)")
    eval: EvalSpec = opt(EvalSpec(), "evaluation suite")


# ----------------------------------------------------------------------------------------------- conversion


def yaml_key(f: dataclasses.Field) -> str:
    """The YAML spelling of a field: the attribute without a trailing underscore (`global_` -> `global`)."""
    return f.name.rstrip("_")


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _describe(value: Any) -> str:
    return f"{value!r} ({type(value).__name__})"


def _convert(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    """Convert `value` to type `tp`, appending '<path>: <problem>' to `errors` (returns None on failure)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _convert_dataclass(value, tp, path, errors)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], path, errors)  # only Optional[X] is used
    if origin is Literal:
        return _convert_choice(value, args, path, errors)
    if origin in (list, List):
        return _convert_list(value, args[0] if args else Any, path, errors)
    if origin in (dict, Dict):
        return _convert_dict(value, args[1] if args else Any, path, errors)
    return _convert_scalar(value, tp, path, errors)


def _convert_scalar(value: Any, tp: Any, path: str, errors: list[str]) -> Any:
    if tp is Any:
        return value
    if tp is float and isinstance(value, str):
        try:  # PyYAML reads `5e-5` (no dot) as a string; accept it for float fields
            value = float(value)
        except ValueError:
            pass
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not math.isfinite(value):
            errors.append(f"{path}: must be a finite number, got {value}")
            return None
        return float(value)
    if not isinstance(value, tp) or (isinstance(value, bool) and tp is not bool):
        errors.append(f"{path}: expected {_type_name(tp)}, got {_describe(value)}")
        return None
    return value


def _convert_choice(value: Any, choices: tuple, path: str, errors: list[str]) -> Any:
    if value in choices and type(value) in {type(c) for c in choices}:
        return value
    hint = _did_you_mean(str(value), [str(c) for c in choices])
    errors.append(f"{path}: {value!r} is not one of {', '.join(map(str, choices))}{hint}")
    return None


def _convert_list(value: Any, item_tp: Any, path: str, errors: list[str]) -> Any:
    if isinstance(value, str) or not isinstance(value, (list, tuple)):
        errors.append(f"{path}: expected a list, got {_describe(value)}")
        return None
    return [_convert(v, item_tp, f"{path}[{i}]", errors) for i, v in enumerate(value)]


def _convert_dict(value: Any, value_tp: Any, path: str, errors: list[str]) -> Any:
    if value is None:
        return {}
    if not isinstance(value, dict):
        errors.append(f"{path}: expected a mapping, got {_describe(value)}")
        return None
    return {k: _convert(v, value_tp, _join(path, k), errors) for k, v in value.items()}


def _convert_dataclass(value: Any, cls: type, path: str, errors: list[str]) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        errors.append(f"{path or 'recipe'}: expected a mapping, got {_describe(value)}")
        return None
    fields_by_key = {yaml_key(f): f for f in dataclasses.fields(cls)}
    for key in value:
        if key not in fields_by_key:
            hint = _did_you_mean(str(key), list(fields_by_key))
            errors.append(f"{_join(path, key)}: unknown key{hint or f' (valid: {sorted(fields_by_key)})'}")
    hints = typing.get_type_hints(cls)
    kwargs, n_errors = {}, len(errors)
    for key, f in fields_by_key.items():
        if key in value:
            kwargs[f.name] = _convert(value[key], hints[f.name], _join(path, key), errors)
            _check_bounds(kwargs[f.name], f, _join(path, key), errors)
    if len(errors) > n_errors:
        return None
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        errors.extend(_locate(msg, path, fields_by_key) for msg in check(frozenset(value)))
    return obj


def _locate(msg: str, path: str, keys: dict) -> str:
    """Prefix a check() message with the section path: 'ratio: ...' -> 'prune.ratio: ...', else 'prune: ...'."""
    head = msg.split(":", 1)[0].split(".")[0].split("[")[0]
    return _join(path, msg) if head in keys else f"{path or 'recipe'}: {msg}"


def _check_bounds(value: Any, f: dataclasses.Field, path: str, errors: list[str]) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return
    tests = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
             "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}
    for name, (ok, sign) in tests.items():
        bound = f.metadata.get(name)
        if bound is not None and not ok(value, bound):
            errors.append(f"{path}: must be {sign} {bound}, got {value}")


def _unknown_names(key: str, names: list[str], valid: list[str]) -> list[str]:
    """Messages for names outside `valid` (dataset keys and the like), with a did-you-mean hint."""
    listing = f" (valid: {', '.join(valid)})"
    return [f"{key}: unknown name {n!r}{_did_you_mean(str(n), valid) or listing}" for n in names if n not in valid]


def _did_you_mean(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Union:
        return " or ".join(_type_name(a) for a in args)  # not "|": the name lands in markdown tables
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(_type_name(a) for a in args)}]"
    if dataclasses.is_dataclass(tp):
        return "section"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def recipe_from_dict(data: dict, *, source: str = "recipe") -> Recipe:
    """Convert a nested dict (parsed YAML) into a `Recipe`; every problem is reported in one `UserError`."""
    errors: list[str] = []
    recipe = _convert_dataclass(data, Recipe, "", errors)
    if errors:
        head = f"{source}: {len(errors)} problem{'s' if len(errors) > 1 else ''}"
        raise UserError(head + ":\n  " + "\n  ".join(errors) if len(errors) > 1 else f"{source}: {errors[0]}")
    return recipe


# ----------------------------------------------------------------------------------------------- overrides


def apply_overrides(data: dict, overrides: typing.Iterable[str] = ()) -> dict:
    """Apply `a.b=value` overrides to a nested dict (a copy); values are parsed as YAML scalars.

    Missing intermediate sections are created, so `prune.ratio=0.3` works on a recipe without `prune`.
    """
    out = copy.deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set expects key.path=value, got {item!r} (e.g. --set finetune.lr=1e-4)")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise UserError(f"--set {key}: cannot parse value {raw!r} as YAML ({exc.__class__.__name__})") from None
        _set_path(out, key.strip().split("."), value, item)
    return out


def _set_path(data: dict, keys: list[str], value: Any, item: str) -> None:
    # Once the path reaches a dict-typed field (prune.ratio_by_module, model.overrides, data.image_roots, data.mix),
    # the rest of the path is one key: module names such as encoder.features.3 contain dots.
    keys = _join_mapping_keys(keys)
    node = data
    for i, key in enumerate(keys[:-1]):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise UserError(f"--set {item}: {'.'.join(keys[:i + 1])} is a value, not a section")
        node = child
    node[keys[-1]] = value


def _join_mapping_keys(keys: list[str]) -> list[str]:
    """Walk the dataclass types along `keys`; after a Dict-typed field join the remaining parts into one key."""
    tp: Any = Recipe
    for i, key in enumerate(keys):
        section = _section_type(tp)
        if section is None:
            return keys
        fields_by_key = {yaml_key(f): f for f in dataclasses.fields(section)}
        if key not in fields_by_key:
            return keys  # unknown key: the converter reports it with a did-you-mean
        tp = typing.get_type_hints(section)[fields_by_key[key].name]
        inner = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) is Union else [tp]
        if typing.get_origin(inner[0]) in (dict, Dict) and i + 2 < len(keys):
            return [*keys[:i + 1], ".".join(keys[i + 1:])]
    return keys


def override_recipe(recipe: Recipe, overrides: typing.Iterable[str]) -> Recipe:
    """A copy of `recipe` with `a.b=value` overrides applied and re-validated."""
    return recipe_from_dict(apply_overrides(recipe_to_dict(recipe), overrides), source="--set")



def overrides_between(base: Recipe, ran: Recipe, skip: typing.Iterable[str] = ()) -> list[str]:
    """The `a.b=value` overrides that turn `base` into `ran` (override_recipe's inverse), one per differing leaf,
    in the recipe's order; keys in `skip` (e.g. data.root) are left out."""
    old, new = _leaves(recipe_to_dict(base)), _leaves(recipe_to_dict(ran))
    skip = set(skip)
    return [f"{key}={_as_yaml(value)}" for key, value in new.items()
            if key not in skip and (key not in old or old[key] != value)]


def _as_yaml(value: Any) -> str:
    """A value as apply_overrides reads it back (JSON is YAML; a plain string unless YAML would read it as another
    type)."""
    return value if isinstance(value, str) and yaml.safe_load(value) == value else json.dumps(value)


def _leaves(data: dict, prefix: str = "") -> dict:
    """{dotted.key: value} of a nested dict; lists are leaves."""
    out = {}
    for key, value in data.items():
        path = f"{prefix}{key}"
        out.update(_leaves(value, path + ".") if isinstance(value, dict) and value else {path: value})
    return out

# ----------------------------------------------------------------------------------------------- files


def data_root(given: str | None = None, recipe_root: str | None = None, *, env: bool = True) -> str:
    """The one data-root rule: an explicit root (--data, --set data.root) beats $COMPRESS_DATA_ROOT (when `env`)
    beats the recipe's data.root beats the default. A run's stored recipe is re-read with env=False: the root it
    was made with stays unless the user names another explicitly."""
    from_env = os.environ.get(DATA_ROOT_ENV) if env else None
    return given or from_env or recipe_root or DEFAULT_DATA_ROOT


def load_recipe(path: str | os.PathLike, overrides: typing.Iterable[str] = (), *, root: str | None = None,
                env: bool = True) -> Recipe:
    """Read a YAML recipe, apply `--set`-style overrides and validate it. `name` defaults to the file stem.

    data.root follows `data_root`: `root` (the CLI's --data) > a `data.root=` override > $COMPRESS_DATA_ROOT (when
    `env`) > the file.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"recipe not found: {path} (see recipes/ for examples)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a recipe is a mapping of sections, got {type(data).__name__}")
    overrides = list(overrides)
    explicit = root or next((o.split("=", 1)[1] for o in reversed(overrides) if o.startswith("data.root=")), None)
    file_root = (data.get("data") or {}).get("root") if isinstance(data.get("data"), dict) else None
    overrides.append(f"data.root={data_root(explicit, file_root, env=env)}")
    data = apply_overrides(data, overrides)
    data.setdefault("name", path.stem)
    if not data["name"]:
        data["name"] = path.stem
    return recipe_from_dict(data, source=str(path))


def recipe_to_dict(obj: Any) -> Any:
    """A recipe (or any section) as plain YAML-ready data, with YAML key spellings."""
    if dataclasses.is_dataclass(obj):
        out = {yaml_key(f): recipe_to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, PruneSpec) and obj.target is not None:
            del out["ratio"]  # exactly one of ratio / target: a saved recipe must load again
        return out
    if isinstance(obj, (list, tuple)):
        return [recipe_to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: recipe_to_dict(v) for k, v in obj.items()}
    return obj


def save_recipe(recipe: Recipe, path: str | os.PathLike) -> Path:
    """Write the resolved recipe as YAML (atomically: temp file + rename)."""
    text = yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False, default_flow_style=False)
    return atomic_write_text(path, text)


# ----------------------------------------------------------------------------------------------- reference


def recipe_reference_markdown() -> str:
    """A markdown reference of every recipe field (key, type, default, help), generated from the dataclasses."""
    lines = ["| key | type | default | description |", "|---|---|---|---|"]
    lines += _reference_rows(Recipe, "", {})
    return "\n".join(lines) + "\n"


def _reference_rows(cls: type, prefix: str, seen: dict) -> list[str]:
    """Rows for the fields of `cls`; a section type met before is referred to instead of repeated."""
    rows: list[str] = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = _join(prefix, yaml_key(f)), hints[f.name]
        section, default = _section_type(tp), _default_of(f)
        shown = "(section)" if section and default is not None else f"`{_yaml_inline(recipe_to_dict(default))}`"
        help_ = f.metadata.get("help", "")
        if section and section in seen:
            help_ += f"; same fields as `{seen[section]}`"
        rows.append(f"| `{key}` | {_type_name(tp)} | {shown} | {help_} |")
        if section and section not in seen:
            seen[section] = key
            rows += _reference_rows(section, key, seen)
    return rows


def _section_type(tp: Any) -> Optional[type]:
    candidates = [tp, *typing.get_args(tp)] if typing.get_origin(tp) is Union else [tp]
    return next((c for c in candidates if dataclasses.is_dataclass(c)), None)


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _yaml_inline(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


# ----------------------------------------------------------------------------------------------- README

README_START = "<!-- recipe-reference:start (generated by `make readme`; do not edit) -->"
README_END = "<!-- recipe-reference:end -->"


def readme_with_reference(text: str) -> str:
    """A Markdown page's text (docs/recipes.md) with its recipe-reference block regenerated from the dataclasses."""
    head, sep, rest = text.partition(README_START)
    _, sep2, tail = rest.partition(README_END)
    if not sep or not sep2:
        raise UserError(f"the page has no recipe reference block ({README_START} ... {README_END})")
    return f"{head}{README_START}\n{recipe_reference_markdown()}\n{README_END}{tail}"


if __name__ == "__main__":  # python -m compress.recipe docs/recipes.md: regenerate the reference block
    import sys

    readme = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/recipes.md")
    readme.write_text(readme_with_reference(readme.read_text()))
