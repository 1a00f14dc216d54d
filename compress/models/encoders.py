"""Image encoders for the zoo: torchvision backbones, SPIN's ResNet-50 trunk, a tiny test encoder.

Nothing here downloads: ImageNet weights are read from the local torch hub cache or refused with a message
saying which file to put where.
"""
from __future__ import annotations

import logging
import re
from collections import OrderedDict
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import shufflenetv2

from compress.errors import UserError

log = logging.getLogger(__name__)

# Torchvision builders the zoo wraps, and the attribute holding each one's ImageNet classifier.
TORCHVISION_ENCODERS = {
    "densenet121": "classifier",
    "densenet169": "classifier",
    "densenet201": "classifier",
    "mobilenet_v2": "classifier",
    "mobilenet_v3_large": "classifier",
    "mobilenet_v3_small": "classifier",
    "shufflenet_v2_x0_5": "fc",
    "shufflenet_v2_x1_0": "fc",
    "shufflenet_v2_x1_5": "fc",
    "shufflenet_v2_x2_0": "fc",
    "efficientnet_b0": "classifier",
    "regnet_y_400mf": "fc",
}
ENCODER_HEADS = ("features", "logits")


# ----------------------------------------------------------------------------------------------- weights


def _weights_enum(arch: str, tag: str | None):
    weights = torchvision.models.get_model_weights(arch)
    return weights[tag] if tag else weights.DEFAULT


def cached_imagenet_state_dict(arch: str, *, tag: str | None = None) -> dict[str, torch.Tensor]:
    """ImageNet state_dict of a torchvision architecture, only if its file is already in the torch hub cache."""
    weights = _weights_enum(arch, tag)
    filename = Path(weights.url).name
    path = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not path.is_file():
        raise UserError(
            f"ImageNet weights for {arch} are not in the local cache: download {weights.url} "
            f"and put it at {path} (no network access here), or use pretrained=false"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated download, wrong file
        raise UserError(f"cannot read ImageNet weights {path}: {exc}; delete the file and download it again") from exc
    if arch.startswith("densenet"):
        state = _rename_legacy_densenet_keys(state)
    log.info("loaded ImageNet weights %s for %s", path, arch)
    return state


def _rename_legacy_densenet_keys(state: dict) -> dict:
    # The released DenseNet files name layers "norm.1" / "conv.2"; current modules are "norm1" / "conv2".
    pattern = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")
    out = OrderedDict()
    for key, value in state.items():
        match = pattern.match(key)
        out[match.group(1) + match.group(2) if match else key] = value
    return out


def load_weights_checked(module: nn.Module, state: dict, *, skip_prefixes: tuple[str, ...] = (), what: str) -> None:
    """Load `state` into `module` strictly, except keys under `skip_prefixes` (e.g. an unused classifier)."""
    state = {k: v for k, v in state.items() if not k.startswith(skip_prefixes)}
    result = module.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise UserError(f"ImageNet weights do not fit {what}: missing {result.missing_keys[:5]}, "
                        f"unexpected {result.unexpected_keys[:5]}")


# ----------------------------------------------------------------------------------------------- ShuffleNetV2


class ChannelShuffle(nn.Module):
    """ShuffleNet's channel shuffle as a module holding its permutation: `out[:, j] = x[:, perm[j]]`.

    torchvision's free function (view/transpose/view) cannot be traced by Torch-Pruning. Here the shuffle is one
    `index_select` with an explicit permutation buffer, so structured pruning can remove channels across it and
    store the resulting (shorter) permutation; loading a state_dict adopts the stored permutation's length.
    """

    def __init__(self, channels: int, groups: int = 2) -> None:
        super().__init__()
        if channels % groups == 0:
            # out[k * groups + g] = in[g * per_group + k]: the classic view(g, c/g) -> transpose -> flatten
            perm = torch.arange(channels).view(groups, channels // groups).t().reshape(-1)
        else:  # a pruned size being rebuilt; its permutation comes from the state_dict
            perm = torch.arange(channels)
        self.register_buffer("perm", perm)
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.index_select(x, 1, self.perm)  # (B, C, H, W), channels permuted

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        stored = state_dict.get(prefix + "perm")
        if stored is not None and stored.shape != self.perm.shape:
            self.perm = torch.empty_like(stored, device=self.perm.device)  # a pruned model's shorter permutation
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        return f"channels={self.perm.numel()}, groups={self.groups}"


class ShuffleBlock(nn.Module):
    """torchvision's ShuffleNetV2 InvertedResidual with the same parameter names and a `shuffle` submodule."""

    def __init__(self, block: shufflenetv2.InvertedResidual) -> None:
        super().__init__()
        self.stride = block.stride
        self.branch1 = block.branch1
        self.branch2 = block.branch2
        first = block.branch1[2].out_channels if self.stride > 1 else block.branch2[0].in_channels
        self.shuffle = ChannelShuffle(first + block.branch2[5].out_channels, groups=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 1:
            # Equal halves in torchvision; after pruning the branch input width says where to split.
            keep = self.branch2[0].in_channels
            x1, x2 = torch.split(x, [x.shape[1] - keep, keep], dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return self.shuffle(out)


def _modularise_shufflenet(model: nn.Module) -> None:
    for stage_name in ("stage2", "stage3", "stage4"):
        stage = getattr(model, stage_name)
        for i, block in enumerate(stage):
            stage[i] = ShuffleBlock(block)


# ----------------------------------------------------------------------------------------------- builders


def torchvision_encoder(arch: str, *, encoder_head: str, pretrained: bool) -> tuple[nn.Module, int]:
    """A torchvision classifier as an encoder -> (module, feature width F).

    `features`: the classifier is replaced by Identity, so the module returns the global-pooled features.
    `logits`: the whole model including its 1000-class classifier (what the original study fed into fc1).
    """
    if arch not in TORCHVISION_ENCODERS:
        raise UserError(f"unknown encoder {arch!r}; valid: {', '.join(TORCHVISION_ENCODERS)}")
    if encoder_head not in ENCODER_HEADS:
        raise UserError(f"encoder_head must be one of {ENCODER_HEADS}, got {encoder_head!r}")
    model = torchvision.models.get_model(arch, weights=None)
    if pretrained:
        load_weights_checked(model, cached_imagenet_state_dict(arch), what=arch)
    if arch.startswith("shufflenet"):
        _modularise_shufflenet(model)
    head_attr = TORCHVISION_ENCODERS[arch]
    head = getattr(model, head_attr)
    if encoder_head == "logits":
        return model, 1000
    first_linear = head if isinstance(head, nn.Linear) else next(m for m in head.modules() if isinstance(m, nn.Linear))
    setattr(model, head_attr, nn.Identity())
    return model, first_linear.in_features


def spin_resnet50_trunk(*, pretrained: bool) -> "OrderedDict[str, nn.Module]":
    """ResNet-50 v1.5 modules under SPIN's root names (conv1, bn1, relu, maxpool, layer1..4), F = 2048."""
    resnet = torchvision.models.resnet50(weights=None)
    trunk = OrderedDict((n, getattr(resnet, n)) for n in
                        ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"))
    spin_init(nn.ModuleList(trunk.values()))
    if pretrained:
        # SPIN used torchvision's original ImageNet weights (IMAGENET1K_V1); the classifier `fc` is unused.
        state = cached_imagenet_state_dict("resnet50", tag="IMAGENET1K_V1")
        load_weights_checked(nn.Sequential(trunk), state, skip_prefixes=("fc.",), what="the SPIN ResNet-50 trunk")
    return trunk


def spin_init(module: nn.Module) -> None:
    """SPIN's backbone init: conv weights N(0, sqrt(2/(k*k*out))), BN weight 1 / bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
            nn.init.normal_(m.weight, 0.0, (2.0 / n) ** 0.5)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def mobilenet_v2_trunk(*, pretrained: bool) -> nn.Module:
    """torchvision MobileNetV2 with its classifier removed; `.features` maps (B,3,R,R) -> (B,1280,R/32,R/32)."""
    model, _ = torchvision_encoder("mobilenet_v2", encoder_head="features", pretrained=pretrained)
    return model


# ----------------------------------------------------------------------------------------------- tiny


def _conv_bn(cin: int, cout: int, *, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinyResidual(nn.Module):
    """conv-BN-ReLU-conv-BN plus identity: exercises Torch-Pruning's residual coupling."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


class TinyEncoder(nn.Module):
    """A few-thousand-parameter CNN (stem, residual block, depthwise-separable block) for fast tests."""

    def __init__(self, *, width: int = 16, out_dim: int = 32) -> None:
        super().__init__()
        self.stem = _conv_bn(3, width, stride=2)
        self.res = TinyResidual(width)
        self.dw = _conv_bn(width, width, stride=2, groups=width)  # depthwise
        self.pw = _conv_bn(width, out_dim, k=1)
        self.down = _conv_bn(out_dim, out_dim, stride=2)
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(self.pw(self.dw(self.res(self.stem(x)))))  # (B, out_dim, R/8, R/8)
        return self.pool(x).flatten(1)  # (B, out_dim)
