"""prune.round_to rounds the KEPT channel count of every pruned layer to a multiple of round_to, to the nearest
multiple (ties keep more), never below round_to and never above the layer's width: a layer it cannot round (fewer
channels than round_to, or a nearest multiple that is not below the width) stays whole. It never empties a layer.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.models import create_model
from compress.prune import prune_model
from test_prune import _randomise_bn, assert_soft_mask_equivalent

RES = 64


@pytest.fixture(scope="module")
def img():
    return torch.randn(2, 3, RES, RES, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def mobilenet():
    torch.manual_seed(0)
    model = create_model("hmr_mobilenet_v2", img_res=RES).eval()
    _randomise_bn(model)
    return model


def _widths(model: nn.Module) -> dict[str, int]:
    return {n: (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
            for n, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}


def _check_rounded(model: nn.Module, pruned: nn.Module, round_to: int) -> int:
    """Every layer is unchanged or a (non-zero) multiple of round_to; returns how many layers were pruned."""
    before, after = _widths(model), _widths(pruned)
    assert before.keys() == after.keys()
    changed = {n: (before[n], after[n]) for n in before if after[n] != before[n]}
    bad = {n: w for n, w in changed.items() if w[1] % round_to}
    assert not bad, f"not multiples of {round_to} (before, after): {bad}"
    assert all(w[1] >= round_to for w in changed.values())
    assert all(w > 0 for w in after.values())
    return len(changed)


@pytest.mark.parametrize("round_to", [8, 16])
def test_mobilenet_v2_widths_are_multiples_of_round_to(mobilenet, img, round_to):
    pruned, summary = prune_model(mobilenet, {"ratio": 0.2, "round_to": round_to}, img, track_channels=True)
    n_changed = _check_rounded(mobilenet, pruned, round_to)
    assert n_changed > 10
    assert summary.after.params_total < summary.before.params_total
    # a 16-channel layer keeps int(16 * 0.8) = 12 -> 16 (nearest; 12 is a tie at round_to 8): whole, not emptied
    assert pruned.encoder.features[1].conv[1].out_channels == 16
    # the 32-channel stem keeps 25 -> 24 with round_to 8, and -> 32 (whole) with round_to 16
    assert pruned.encoder.features[0][0].out_channels == {8: 24, 16: 32}[round_to]
    assert_soft_mask_equivalent(mobilenet, pruned, summary, img)
    with torch.no_grad():
        out = pruned.eval()(img)
    assert out["rotmat"].shape == (2, 24, 3, 3)


def test_nearest_multiple_not_floor(mobilenet, img):
    """fc1/fc2 (1024) at ratio 0.3: int(1024 * 0.7) = 716 keeps 720 with round_to=16 (nearest), not 704 (floor)."""
    pruned, _ = prune_model(mobilenet, {"ratio": 0.3, "round_to": 16}, img)
    assert pruned.fc1.out_features == 720 and pruned.fc2.out_features == 720


def test_global_and_iterative_round_to(mobilenet, img):
    for spec in ({"ratio": 0.3, "round_to": 8, "global": True},
                 {"ratio": 0.3, "round_to": 8, "iterative_steps": 3}):
        pruned, summary = prune_model(mobilenet, spec, img, track_channels=True)
        assert _check_rounded(mobilenet, pruned, 8) > 0, spec
        assert summary.after.params_total < summary.before.params_total
        assert_soft_mask_equivalent(mobilenet, pruned, summary, img)


def test_round_to_16_on_a_16_channel_layer_keeps_it_instead_of_refusing(img):
    """hmr_tiny's stem has 16 channels: ratio 0.2 (or 0.3) with round_to 16 used to be refused ("would remove all
    16 output channels"); the stem now stays whole and the wider layers are rounded."""
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=RES).eval()
    for ratio in (0.2, 0.3):
        pruned, summary = prune_model(model, {"ratio": ratio, "round_to": 16}, img)
        assert pruned.encoder.stem[0].out_channels == 16
        assert _check_rounded(model, pruned, 16) > 0
        assert summary.after.params_total < summary.before.params_total


def test_round_keep_rule():
    from compress.prune.core import round_keep

    assert round_keep(16, 12, 16) == 16  # nearest multiple is the whole layer: unchanged
    assert round_keep(16, 12, 8) == 16  # 12 is a tie between 8 and 16: ties keep more
    assert round_keep(32, 25, 8) == 24
    assert round_keep(32, 0, 8) == 8  # never below round_to (never empties a layer)
    assert round_keep(12, 9, 16) == 12  # fewer channels than round_to: whole
    assert round_keep(24, 19, 16) == 16  # not a multiple: rounded like any other
    assert round_keep(28, 25, 16) == 28  # nearest (32) above the width: whole
    assert round_keep(1024, 716, 16) == 720
    assert round_keep(10, 7, 1) == 7  # round_to 1: as given
