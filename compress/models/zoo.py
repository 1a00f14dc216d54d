"""The model registry: one dict name -> builder, tiny variant functions, `create_model` and `list_models`."""
from __future__ import annotations

import dataclasses
import difflib
from collections import OrderedDict
from pathlib import Path
from typing import Callable

from torch import nn

import compress.models.encoders as encoders
from compress.errors import UserError
from compress.models.hmr import HMR, IEFModel, SeedHMR


@dataclasses.dataclass(frozen=True)
class HMROptions:
    """Overrides every HMR variant accepts (`create_model(name, **overrides)`); defaults are SPIN's."""

    encoder_head: str = "features"  # features | logits (the torchvision classifier's 1000 logits feed fc1)
    fc2: bool = True
    n_iter: int = 3
    ief_relu: bool = False
    hidden: int = 1024
    img_res: int = 224
    pretrained: bool = False
    mean_params: str | None = None


_MINIMUM = {"n_iter": 1, "hidden": 1, "img_res": 32}


def _options(name: str, overrides: dict, *, defaults: dict | None = None, exclude: tuple[str, ...] = ()) -> HMROptions:
    """Validate `overrides` for model `name` (unknown keys, types, ranges: all reported at once)."""
    fields = {f.name: f for f in dataclasses.fields(HMROptions) if f.name not in exclude}
    values = {**(defaults or {}), **overrides}
    errors = []
    for key, value in values.items():
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            errors.append(f"unknown option {key!r}" + (f" (did you mean {hint[0]!r}?)" if hint else ""))
            continue
        default = fields[key].default
        if key == "mean_params":
            if value is not None and not isinstance(value, (str, Path)):
                errors.append(f"mean_params must be a path or null, got {value!r}")
            elif value is not None:
                values[key] = str(value)
        elif isinstance(default, bool):
            if not isinstance(value, bool):
                errors.append(f"{key} must be true or false, got {value!r}")
        elif isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int):
                errors.append(f"{key} must be an integer, got {value!r}")
            elif value < _MINIMUM[key]:
                errors.append(f"{key} must be >= {_MINIMUM[key]}, got {value}")
        elif key == "encoder_head" and value not in encoders.ENCODER_HEADS:
            errors.append(f"encoder_head must be one of {', '.join(encoders.ENCODER_HEADS)}, got {value!r}")
    if errors:
        raise UserError(f"{name}: " + "; ".join(errors) + f". Valid options: {', '.join(fields)}")
    return HMROptions(**values)


def _regressor_kwargs(opts: HMROptions) -> dict:
    return dict(hidden=opts.hidden, fc2=opts.fc2, n_iter=opts.n_iter, ief_relu=opts.ief_relu, img_res=opts.img_res,
                mean_params=opts.mean_params)


def _torchvision_hmr(name: str, arch: str, overrides: dict) -> HMR:
    opts = _options(name, overrides)
    encoder, feat_dim = encoders.torchvision_encoder(arch, encoder_head=opts.encoder_head, pretrained=opts.pretrained)
    return HMR(OrderedDict(encoder=encoder), feat_dim=feat_dim, pool=False, **_regressor_kwargs(opts))


# ----------------------------------------------------------------------------------------------- variants


def hmr_resnet50(**overrides) -> HMR:
    """SPIN's HMR: ResNet-50 trunk at the root (SPIN's state_dict keys), 2048-d features, 26,977,501 params."""
    opts = _options("hmr_resnet50", overrides, exclude=("encoder_head",))
    trunk = encoders.spin_resnet50_trunk(pretrained=opts.pretrained)
    return HMR(trunk, feat_dim=2048, pool=True, **_regressor_kwargs(opts))


def hmr_densenet121(**overrides) -> HMR:
    return _torchvision_hmr("hmr_densenet121", "densenet121", overrides)


def hmr_densenet169(**overrides) -> HMR:
    return _torchvision_hmr("hmr_densenet169", "densenet169", overrides)


def hmr_densenet201(**overrides) -> HMR:
    return _torchvision_hmr("hmr_densenet201", "densenet201", overrides)


def hmr_mobilenet_v2(**overrides) -> HMR:
    return _torchvision_hmr("hmr_mobilenet_v2", "mobilenet_v2", overrides)


def hmr_mobilenet_v3_large(**overrides) -> HMR:
    return _torchvision_hmr("hmr_mobilenet_v3_large", "mobilenet_v3_large", overrides)


def hmr_mobilenet_v3_small(**overrides) -> HMR:
    return _torchvision_hmr("hmr_mobilenet_v3_small", "mobilenet_v3_small", overrides)


def hmr_shufflenet_v2_x0_5(**overrides) -> HMR:
    return _torchvision_hmr("hmr_shufflenet_v2_x0_5", "shufflenet_v2_x0_5", overrides)


def hmr_shufflenet_v2_x1_0(**overrides) -> HMR:
    return _torchvision_hmr("hmr_shufflenet_v2_x1_0", "shufflenet_v2_x1_0", overrides)


def hmr_shufflenet_v2_x1_5(**overrides) -> HMR:
    return _torchvision_hmr("hmr_shufflenet_v2_x1_5", "shufflenet_v2_x1_5", overrides)


def hmr_shufflenet_v2_x2_0(**overrides) -> HMR:
    return _torchvision_hmr("hmr_shufflenet_v2_x2_0", "shufflenet_v2_x2_0", overrides)


def hmr_efficientnet_b0(**overrides) -> HMR:
    return _torchvision_hmr("hmr_efficientnet_b0", "efficientnet_b0", overrides)


def hmr_regnet_y_400mf(**overrides) -> HMR:
    return _torchvision_hmr("hmr_regnet_y_400mf", "regnet_y_400mf", overrides)


def hmr_seed_mobilenet_v2(**overrides) -> SeedHMR:
    """The study's "My MobileNetV2" (3,131,853 params at 224 px), shape update fixed."""
    opts = _options("hmr_seed_mobilenet_v2", overrides, exclude=("encoder_head", "fc2", "ief_relu"))
    encoder = encoders.mobilenet_v2_trunk(pretrained=opts.pretrained)
    return SeedHMR(encoder, hidden=opts.hidden, n_iter=opts.n_iter, img_res=opts.img_res,
                   mean_params=opts.mean_params)


def hmr_tiny(**overrides) -> HMR:
    """A tiny HMR (CNN with a residual and a depthwise block, hidden 64) for tests; prunable."""
    opts = _options("hmr_tiny", overrides, defaults={"hidden": 64}, exclude=("encoder_head",))
    if opts.pretrained:
        raise UserError("hmr_tiny has no ImageNet weights; use pretrained=false")
    encoder = encoders.TinyEncoder(width=16, out_dim=32)
    encoders.spin_init(encoder)
    return HMR(OrderedDict(encoder=encoder), feat_dim=32, pool=False, **_regressor_kwargs(opts))


# ----------------------------------------------------------------------------------------------- registry

_MODELS: dict[str, Callable[..., IEFModel]] = {}


def register_model(fn: Callable[..., IEFModel], name: str | None = None) -> None:
    """Add a builder to the registry under its function name; a duplicate name is a programming error."""
    name = name or fn.__name__
    if name in _MODELS:
        raise ValueError(f"model {name!r} is already registered")
    _MODELS[name] = fn


for _fn in (hmr_resnet50, hmr_densenet121, hmr_densenet169, hmr_densenet201, hmr_mobilenet_v2, hmr_mobilenet_v3_large,
            hmr_mobilenet_v3_small, hmr_shufflenet_v2_x0_5, hmr_shufflenet_v2_x1_0, hmr_shufflenet_v2_x1_5,
            hmr_shufflenet_v2_x2_0, hmr_efficientnet_b0, hmr_regnet_y_400mf, hmr_seed_mobilenet_v2, hmr_tiny):
    register_model(_fn)


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **overrides) -> IEFModel:
    """Build a zoo model; `model.config = {"name", "overrides"}` records exactly what the caller passed."""
    if name not in _MODELS:
        hint = difflib.get_close_matches(name, list(_MODELS), n=1)
        did_you_mean = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UserError(f"unknown model {name!r}{did_you_mean}; valid: {', '.join(list_models())}")
    model = _MODELS[name](**overrides)
    model.config = {"name": name, "overrides": dict(overrides)}
    return model


def regressor_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The parameters of the modules named in `model.regressor_names` (each once); the rest is the encoder."""
    seen: dict[int, nn.Parameter] = {}
    for name in getattr(model, "regressor_names", []):
        module = getattr(model, name, None)
        for p in module.parameters() if module is not None else ():
            seen.setdefault(id(p), p)
    return list(seen.values())


def parameter_split(model: nn.Module) -> dict[str, int]:
    """Parameter counts {"encoder", "regressor", "total"}; the regressor is `model.regressor_names`."""
    total = sum(p.numel() for p in model.parameters())
    regressor = sum(p.numel() for p in regressor_parameters(model))
    return {"encoder": total - regressor, "regressor": regressor, "total": total}
