"""Model cost: parameters (encoder / regressor), MACs, per-stage widths; latency and memory (see below)."""
from __future__ import annotations

import copy
import logging
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

MACS_COUNTER = "torch-pruning count_ops_and_params; regressor counted once per IEF iteration"


def load_any(target: str, **overrides) -> tuple[nn.Module, dict]:
    """A zoo model name or a checkpoint path -> (model, meta)."""
    from compress.models import create_model

    if Path(target).suffix in (".pt", ".pth") or Path(target).is_dir() or Path(target).exists():
        from compress.checkpoint import load_checkpoint, resolve_checkpoint

        return load_checkpoint(resolve_checkpoint(target), **overrides)
    return create_model(target, **overrides), {}


def count_macs(model: nn.Module, img_res: int) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (Torch-Pruning's counter, on a deep copy)."""
    import torch_pruning as tp

    example = torch.zeros(1, 3, img_res, img_res, device=next(model.parameters()).device)
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(probe, example)
    return int(macs)


def stage_widths(model: nn.Module) -> dict[str, int]:
    """Output width of the last Conv2d/Linear in each stage (top-level child; encoder children one level down)."""
    widths: dict[str, int] = {}
    for name, child in _stages(model):
        last = None
        for m in child.modules():
            if isinstance(m, nn.Conv2d):
                last = m.out_channels
            elif isinstance(m, nn.Linear):
                last = m.out_features
        if last is not None:
            widths[name] = last
    return widths


def _stages(model: nn.Module):
    for name, child in model.named_children():
        if name == "encoder":
            inner = dict(child.named_children())
            body = inner.get("features", child)  # torchvision keeps the trunk in `features` for most models
            prefix = "encoder.features" if "features" in inner else "encoder"
            for sub, m in body.named_children():
                yield f"{prefix}.{sub}", m
            for sub, m in inner.items():
                if sub != "features" and body is not child:
                    yield f"encoder.{sub}", m
        else:
            yield name, child


def model_info(target: str, **overrides) -> dict:
    """Everything `compress info` prints, as the JSON contract of DESIGN.md."""
    from compress.models import parameter_split

    model, meta = load_any(target, **overrides)
    split = parameter_split(model)
    img_res = int(getattr(model, "img_res", 224))
    return {
        "model": model.config["name"],
        "source": str(target),
        "img_res": img_res,
        "params_total": split["total"],
        "params_encoder": split["encoder"],
        "params_regressor": split["regressor"],
        "macs": count_macs(model, img_res),
        "macs_counter": MACS_COUNTER,
        "widths": stage_widths(model),
    }
