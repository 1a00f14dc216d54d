"""Checkpoints: bitwise round trips, pruned widths rebuilt, SPIN files, strict key checks, hostile files."""
import os

import pytest
import torch
from torch import nn

from compress.io import atomic_torch_save, atomic_write_text
from compress.runs import resolve_checkpoint
from compress.checkpoint import (
    FORMAT_VERSION, LAYER_SIZES, REBUILDERS, apply_widths, load_checkpoint, model_widths, save_checkpoint,
)
from compress.errors import UserError
from compress.models import create_model


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(1)


def _tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return create_model("hmr_tiny", **overrides).eval()


def _randomise_bn(model):
    """Non-trivial running statistics so a lost buffer would show in the outputs."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _outputs(model, img):
    with torch.no_grad():
        return model.eval()(img)


def _assert_same(a, b):
    assert set(a) == set(b)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _img(res=64, seed=3):
    return torch.randn(2, 3, res, res, generator=torch.Generator().manual_seed(seed))


def test_round_trip_bitwise(tmp_path):
    model = _tiny(img_res=64)
    _randomise_bn(model)
    path = save_checkpoint(model, tmp_path / "m.pt", parent="base.pt", metrics={"pa_mpjpe_mm": 50.0},
                           recipe={"name": "r"}, epoch=3)
    raw = torch.load(path, weights_only=True)
    assert raw["format_version"] == FORMAT_VERSION
    assert raw["model"]["name"] == "hmr_tiny" and raw["model"]["overrides"] == {"img_res": 64}
    assert raw["model"]["widths"]["fc1"] == {"type": "Linear", "in": 189, "out": 64}
    loaded, meta = load_checkpoint(path)
    _assert_same(_outputs(model, _img()), _outputs(loaded, _img()))
    assert meta["parent"] == "base.pt" and meta["metrics"] == {"pa_mpjpe_mm": 50.0} and meta["epoch"] == 3
    assert meta["recipe"] == {"name": "r"} and "state_dict" not in meta
    assert not loaded.training
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def _shrink(model):
    """Hand-prune: fewer channels in encoder.pw (conv + bn) and fc1/fc2, with weights sliced consistently."""
    pw_conv, pw_bn, down = model.encoder.pw[0], model.encoder.pw[1], model.encoder.down[0]
    keep = torch.arange(0, 32, 2)  # 16 of 32 channels
    new_conv = nn.Conv2d(16, 16, 1, bias=False)
    new_conv.weight.data = pw_conv.weight.data[keep].clone()
    new_bn = nn.BatchNorm2d(16)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, name).data = getattr(pw_bn, name).data[keep].clone()
    new_down = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
    new_down.weight.data = down.weight.data[:, keep].clone()
    model.encoder.pw[0], model.encoder.pw[1], model.encoder.down[0] = new_conv, new_bn, new_down
    hidden = torch.arange(48)
    fc1, fc2 = nn.Linear(189, 48), nn.Linear(48, 64)
    fc1.weight.data, fc1.bias.data = model.fc1.weight.data[hidden].clone(), model.fc1.bias.data[hidden].clone()
    fc2.weight.data, fc2.bias.data = model.fc2.weight.data[:, hidden].clone(), model.fc2.bias.data.clone()
    model.fc1, model.fc2 = fc1, fc2
    return model


def test_pruned_model_rebuilds_from_widths(tmp_path):
    model = _shrink(_tiny(img_res=64))
    _randomise_bn(model)
    widths = model_widths(model)
    assert widths["encoder.pw.0"] == {"type": "Conv2d", "in": 16, "out": 16, "groups": 1}
    assert widths["encoder.pw.1"] == {"type": "BatchNorm2d", "num_features": 16}
    assert widths["encoder.dw.0"]["groups"] == 16
    loaded, _ = load_checkpoint(save_checkpoint(model, tmp_path / "pruned.pt"))
    assert model_widths(loaded) == widths
    assert loaded.encoder.down[0].stride == (2, 2) and loaded.encoder.down[0].padding == (1, 1)
    _assert_same(_outputs(model, _img()), _outputs(loaded, _img()))
    assert sum(p.numel() for p in loaded.parameters()) < sum(p.numel() for p in _tiny().parameters())


def test_apply_widths_keeps_hyper_parameters_and_custom_rebuilders():
    class Scaled(nn.Module):
        def __init__(self, n):
            super().__init__()
            self.scale = nn.Parameter(torch.ones(n))

    net = nn.Sequential(nn.Conv2d(8, 8, 3, stride=2, padding=1, dilation=1, groups=8, bias=True),
                        nn.BatchNorm2d(8, eps=1e-3, momentum=0.01), nn.GroupNorm(4, 8, eps=1e-4),
                        nn.LayerNorm([8], eps=1e-6), nn.PReLU(8))
    widths = {"0": {"type": "Conv2d", "in": 4, "out": 4, "groups": 4}, "1": {"type": "BatchNorm2d", "num_features": 4},
              "2": {"type": "GroupNorm", "num_groups": 2, "num_channels": 4},
              "3": {"type": "LayerNorm", "normalized_shape": [4]}, "4": {"type": "PReLU", "num_parameters": 4}}
    apply_widths(net, widths)
    conv, bn, gn, ln, _ = net
    assert (conv.in_channels, conv.out_channels, conv.groups, conv.stride, conv.padding) == (4, 4, 4, (2, 2), (1, 1))
    assert conv.bias is not None and (bn.eps, bn.momentum, bn.num_features) == (1e-3, 0.01, 4)
    assert (gn.num_groups, gn.num_channels, gn.eps) == (2, 4, 1e-4) and ln.eps == 1e-6
    assert {k: v for k, v in model_widths(net).items()} == widths

    with pytest.raises(UserError, match="layer '1' is a Conv2d in the checkpoint but a BatchNorm2d"):
        apply_widths(net, {"1": {"type": "Conv2d", "in": 4, "out": 4, "groups": 1}})
    with pytest.raises(UserError, match="has a layer 'fc9'"):
        apply_widths(net, {"fc9": {"type": "Linear", "in": 4, "out": 4}})

    custom = nn.Sequential(Scaled(8))
    with pytest.raises(UserError, match="REBUILDERS"):
        from compress.checkpoint import _rebuilder
        _rebuilder(custom[0])
    REBUILDERS[Scaled] = lambda m, s: Scaled(s["n"])
    LAYER_SIZES[Scaled] = lambda m: {"n": m.scale.numel()}
    try:
        assert model_widths(custom) == {"0": {"type": "Scaled", "n": 8}}
        apply_widths(custom, {"0": {"type": "Scaled", "n": 3}})
        assert custom[0].scale.numel() == 3
    finally:
        del REBUILDERS[Scaled], LAYER_SIZES[Scaled]


def test_overrides_merge_over_stored(tmp_path):
    path = save_checkpoint(_tiny(img_res=64), tmp_path / "m.pt")
    loaded, _ = load_checkpoint(path, img_res=96)
    assert loaded.img_res == 96 and loaded.config["overrides"] == {"img_res": 96}


def test_spin_format_loads_strictly_with_and_without_module_prefix(tmp_path):
    torch.manual_seed(0)
    model = create_model("hmr_resnet50").eval()
    state = model.state_dict()
    plain = {"model": state, "optimizer": {"state": {}, "param_groups": []}, "epoch": 7, "total_step_count": 10}
    prefixed = {"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 1}
    torch.save(plain, tmp_path / "spin.pt")
    torch.save(prefixed, tmp_path / "spin_dp.pt")
    torch.save(state, tmp_path / "bare.pt")
    for name in ("spin.pt", "spin_dp.pt", "bare.pt"):
        loaded, meta = load_checkpoint(tmp_path / name, name="hmr_resnet50")
        for key, value in loaded.state_dict().items():
            assert torch.equal(value, state[key]), (name, key)
    _, meta = load_checkpoint(tmp_path / "spin.pt", name="hmr_resnet50")
    assert meta["format"] == "spin" and meta["epoch"] == 7
    with pytest.raises(UserError, match="pass the model name"):
        load_checkpoint(tmp_path / "spin.pt")


def test_missing_and_unexpected_keys_named(tmp_path):
    state = _tiny().state_dict()
    del state["fc2.bias"]
    state["fc9.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "spin.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "spin.pt", name="hmr_tiny")
    msg = str(info.value)
    assert "1 missing key (fc2.bias)" in msg and "1 unexpected key (fc9.weight)" in msg
    assert str(tmp_path / "spin.pt") in msg and "\n" not in msg


def test_other_architecture_and_shape_mismatch(tmp_path):
    torch.save({"model": _tiny().state_dict()}, tmp_path / "tiny.pt")
    with pytest.raises(UserError) as info:
        load_checkpoint(tmp_path / "tiny.pt", name="hmr_resnet50")
    assert "does not match hmr_resnet50" in str(info.value) and "+" in str(info.value)
    state = _tiny().state_dict()
    state["fc1.weight"] = torch.zeros(10, 189)
    torch.save(state, tmp_path / "shape.pt")
    with pytest.raises(UserError, match=r"shape mismatch at fc1.weight: checkpoint \(10, 189\), model \(64, 189\)"):
        load_checkpoint(tmp_path / "shape.pt", name="hmr_tiny")
    path = save_checkpoint(_tiny(), tmp_path / "ours.pt")
    with pytest.raises(UserError, match="holds a hmr_tiny model, not hmr_resnet50"):
        load_checkpoint(path, name="hmr_resnet50")


def test_truncated_corrupt_and_non_dict_files(tmp_path):
    path = save_checkpoint(_tiny(), tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint" * 8)
    (tmp_path / "empty.pt").write_bytes(b"")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    for name, pattern in [("trunc.pt", "corrupted or truncated"), ("junk.pt", "corrupted or truncated"),
                          ("empty.pt", "corrupted or truncated"), ("list.pt", "not a checkpoint")]:
        with pytest.raises(UserError) as info:
            load_checkpoint(tmp_path / name)
        assert pattern in str(info.value) and str(tmp_path / name) in str(info.value)
        assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"model": {"w": torch.zeros(1)}, "payload": _Evil(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UserError, match="refused: the file asks for (posix|os|nt).system"):
        load_checkpoint(tmp_path / "evil.pt", name="hmr_tiny")
    import pickle

    with open(tmp_path / "evil_plain.pt", "wb") as f:  # a bare pickle, as legacy (non-zip) files are
        pickle.dump({"payload": _Evil(marker)}, f, protocol=2)
    with pytest.raises(UserError, match="refused"):
        load_checkpoint(tmp_path / "evil_plain.pt", name="hmr_tiny")
    assert not marker.exists()


def test_resolve_checkpoint_run_dir(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(UserError, match="no checkpoint in run directory"):
        resolve_checkpoint(run)
    atomic_write_text(run / "trained.pt", "x")
    assert resolve_checkpoint(run) == run / "trained.pt"
    atomic_write_text(run / "pruned.pt", "x")
    assert resolve_checkpoint(run) == run / "pruned.pt"
    atomic_torch_save({"a": 1}, run / "finetuned.pt")
    assert resolve_checkpoint(run) == run / "finetuned.pt"
    assert resolve_checkpoint(run / "pruned.pt") == run / "pruned.pt"


def test_meta_is_made_weights_only_safe(tmp_path):
    import numpy as np

    path = save_checkpoint(_tiny(), tmp_path / "m.pt", metrics={"a": np.float32(1.5)}, rng=np.arange(3),
                           note=("x", tmp_path))
    _, meta = load_checkpoint(path)
    assert meta["metrics"] == {"a": 1.5} and type(meta["metrics"]["a"]) is float
    assert torch.equal(meta["rng"], torch.arange(3)) and meta["note"] == ["x", str(tmp_path)]


def test_save_rejects_objects_in_meta(tmp_path):
    with pytest.raises(TypeError, match="plain data"):
        save_checkpoint(_tiny(), tmp_path / "m.pt", metrics={"x": object()})
    assert not (tmp_path / "m.pt").exists()


@pytest.mark.parametrize("name", ["hmr_tiny", "hmr_mobilenet_v2", "hmr_shufflenet_v2_x0_5"])
def test_model_pruned_by_prune_model_rebuilds_bitwise(tmp_path, name):
    from compress.prune import prune_model
    from compress.recipe import PruneSpec

    torch.manual_seed(0)
    model = create_model(name, img_res=64).eval()
    pruned, _ = prune_model(model, PruneSpec(ratio=0.3), _img()[:1])
    pruned.eval()
    assert model_widths(pruned) != model_widths(model)
    loaded, _ = load_checkpoint(save_checkpoint(pruned, tmp_path / "pruned.pt"))
    assert model_widths(loaded) == model_widths(pruned)
    _assert_same(_outputs(pruned, _img()), _outputs(loaded, _img()))
