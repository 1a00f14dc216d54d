"""The one MAC and parameter counter (pruning, `compress info`, the profile and the report all use it), and widths.

MACs are Torch-Pruning's counter at batch 1 on a deep copy of the model in eval mode; the regressor runs once per
IEF iteration and is counted as often. Parameters are split into encoder and regressor by `parameter_split`.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Union

import torch
import torch_pruning as tp
from torch import nn

from compress.models import parameter_split

MACS_COUNTER = "Torch-Pruning's counter at batch 1, model.img_res; the regressor is counted once per IEF iteration"
MACS_NOTE = f"MACs: {MACS_COUNTER}"  # the first note of every prune summary


@dataclasses.dataclass(frozen=True)
class Cost:
    """Parameters and MACs of a model at one input size (batch 1), and the width of its encoder's features."""

    params_total: int
    params_encoder: int
    params_regressor: int
    macs: int
    macs_encoder: int
    macs_regressor: int
    features: int


def is_depthwise(m: nn.Module) -> bool:
    """A depthwise convolution: one filter per channel, so its input and output channels are one axis."""
    return isinstance(m, nn.Conv2d) and 1 < m.groups == m.in_channels == m.out_channels


def count_macs(model: nn.Module, img_res: Union[int, tuple[int, int]]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 and img_res (or (H, W)), counted on a deep copy."""
    h, w = (img_res, img_res) if isinstance(img_res, int) else img_res
    example = torch.zeros(1, 3, h, w, device=next(model.parameters()).device)
    probe = copy.deepcopy(model).eval()
    with torch.no_grad():
        macs, _ = tp.utils.count_ops_and_params(probe, example)
    return int(macs)


def _regressor_macs(model: nn.Module) -> int:
    n_iter = int(getattr(model, "n_iter", 1))
    total = 0
    for name in getattr(model, "regressor_names", []):
        for m in getattr(model, name).modules() if hasattr(model, name) else []:
            if isinstance(m, nn.Linear):
                total += m.in_features * m.out_features
    return total * n_iter


def cost(model: nn.Module, example: torch.Tensor) -> Cost:
    """Params (encoder / regressor / total) and MACs at the example's size (batch 1)."""
    split = parameter_split(model)
    macs = count_macs(model, (int(example.shape[-2]), int(example.shape[-1])))
    reg = _regressor_macs(model)
    probe = copy.deepcopy(model).eval()  # eval: the probe's forward must not update BatchNorm statistics
    with torch.no_grad():
        features = int(probe.extract_features(example[:1]).shape[1])
    return Cost(params_total=split["total"], params_encoder=split["encoder"], params_regressor=split["regressor"],
                macs=macs, macs_encoder=macs - reg, macs_regressor=reg, features=features)


def prunable_layers(model: nn.Module) -> dict[str, nn.Module]:
    """{name: module} of every Conv2d and Linear layer."""
    return {n: m for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def layer_widths_of(m: nn.Module) -> tuple[int, int]:
    """(in, out) channels of a Conv2d or Linear layer."""
    if isinstance(m, nn.Conv2d):
        return m.in_channels, m.out_channels
    return m.in_features, m.out_features


def layer_widths(model: nn.Module) -> dict[str, list[int]]:
    """{name: [in, out]} of every Conv2d and Linear layer."""
    return {name: list(layer_widths_of(m)) for name, m in prunable_layers(model).items()}
