"""Model zoo: exact parameter counts (SPIN and the original study), SPIN's state_dict layout, shapes, errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision

from compress.errors import UserError
from compress.models import create_model, list_models, mean_params, parameter_split, register_model
from compress.models import encoders

torch.set_num_threads(1)

BIG = {"hmr_resnet50", "hmr_densenet121", "hmr_densenet169", "hmr_densenet201", "hmr_efficientnet_b0",
       "hmr_regnet_y_400mf", "hmr_shufflenet_v2_x1_5", "hmr_shufflenet_v2_x2_0"}


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, overrides, expected", [
    ("hmr_resnet50", {}, 26_977_501),
    ("hmr_densenet169", {"encoder_head": "logits"}, 16_545_797),
    ("hmr_densenet201", {"encoder_head": "logits"}, 22_410_245),
    ("hmr_mobilenet_v2", {"encoder_head": "logits"}, 5_901_189),
    ("hmr_mobilenet_v3_large", {"encoder_head": "logits"}, 7_879_349),
    ("hmr_shufflenet_v2_x1_0", {"encoder_head": "logits"}, 4_674_921),
    ("hmr_seed_mobilenet_v2", {}, 3_131_853),
    # features mode (torch_pruning_notes.md section 6: MobileNetV2 features-only = 4,906,909)
    ("hmr_mobilenet_v2", {}, 4_906_909),
])
def test_parameter_counts(name, overrides, expected):
    assert n_params(create_model(name, **overrides)) == expected


def test_spin_layout():
    model = create_model("hmr_resnet50")
    state = model.state_dict()
    keys = list(state)
    assert len(keys) == 331
    assert keys[:5] == ["init_pose", "init_shape", "init_cam", "conv1.weight", "bn1.weight"]
    assert keys[-10:] == [f"{m}.{p}" for m in ("fc1", "fc2", "decpose", "decshape", "deccam") for p in ("weight", "bias")]
    assert sum(1 for k in keys if k.endswith("num_batches_tracked")) == 53
    assert tuple(state["fc1.weight"].shape) == (1024, 2205)
    assert "layer4.2.bn3.num_batches_tracked" in state and "module." not in keys[0]
    split = parameter_split(model)
    assert split == {"encoder": 23_508_032, "regressor": 3_469_469, "total": 26_977_501}
    assert sum(v.numel() for v in state.values()) == 27_030_831
    # no nonlinearity between fc1 and fc2 in SPIN: the regressor is affine in its input (dropout off)
    model.eval()
    f = torch.randn(3, 2048)
    out_a, out_b = model.regress(f, n_iter=1), model.regress(2 * f, n_iter=1)
    base = model.regress(torch.zeros(1, 2048), n_iter=1)
    torch.testing.assert_close(out_b["pose6d"] - base["pose6d"], 2 * (out_a["pose6d"] - base["pose6d"]),
                               rtol=1e-4, atol=1e-5)


def test_spin_init_and_mean_params():
    model = create_model("hmr_resnet50")
    assert model.decpose.weight.abs().max() < 0.01  # xavier with gain 0.01
    std = model.layer1[0].conv2.weight.std().item()
    assert abs(std - (2 / (9 * 64)) ** 0.5) < 0.01
    assert torch.equal(model.bn1.weight, torch.ones(64))
    assert torch.allclose(model.init_cam, torch.tensor([[0.9, 0.0, 0.0]]))
    assert model.init_pose[0, :6].tolist() == [1, 0, 0, -1, 0, 0]
    assert model.init_pose[0, 6:12].tolist() == [1, 0, 0, 1, 0, 0]
    assert model.init_shape[0, 2].item() == pytest.approx(-0.350683)


def test_mean_params_file(tmp_path):
    pose = np.arange(144, dtype=np.float32)
    np.savez(tmp_path / "smpl_mean_params.npz", pose=pose, shape=np.ones(10, np.float64), cam=np.zeros(3, np.float32))
    params = mean_params(tmp_path / "smpl_mean_params.npz")
    assert params["pose"][5].item() == 5 and params["shape"].dtype == torch.float32
    model = create_model("hmr_tiny", mean_params=str(tmp_path / "smpl_mean_params.npz"))
    assert model.init_pose[0, 143].item() == 143
    np.savez(tmp_path / "bad.npz", pose=pose[:10], shape=np.ones(10), cam=np.zeros(3))
    with pytest.raises(UserError, match="pose"):
        mean_params(tmp_path / "bad.npz")
    with pytest.raises(UserError, match="not found"):
        create_model("hmr_tiny", mean_params=str(tmp_path / "missing.npz"))


def _check_output(out, batch, feat_dim=None):
    assert tuple(out["rotmat"].shape) == (batch, 24, 3, 3)
    assert tuple(out["betas"].shape) == (batch, 10)
    assert tuple(out["cam"].shape) == (batch, 3)
    assert tuple(out["pose6d"].shape) == (batch, 144)
    assert out["features"].shape[0] == batch
    if feat_dim is not None:
        assert out["features"].shape[1] == feat_dim
    rot = out["rotmat"].reshape(-1, 3, 3)
    eye = torch.eye(3).expand_as(rot)
    torch.testing.assert_close(rot @ rot.transpose(1, 2), eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(rot.shape[0]), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", list_models())
def test_forward_every_model(name):
    torch.manual_seed(0)
    sizes = (64,) if name in BIG else (64, 224)
    for res in sizes:
        model = create_model(name, img_res=res).eval()
        with torch.no_grad():
            out = model(torch.randn(1, 3, res, res))
        _check_output(out, 1)
        assert model.config == {"name": name, "overrides": {"img_res": res}}
        assert model.img_res == res
        assert set(model.head_names) <= {n for n, _ in model.named_children()}
        assert set(model.regressor_names) <= {n for n, _ in model.named_children()}
        feats = model.extract_features(torch.randn(1, 3, res, res))
        assert feats.shape == out["features"].shape


def test_forward_contract_kwargs():
    torch.manual_seed(0)
    model = create_model("hmr_tiny").eval()
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        zero = model(img, n_iter=0)
        torch.testing.assert_close(zero["pose6d"], model.init_pose.expand(2, -1))
        torch.testing.assert_close(zero["cam"], model.init_cam.expand(2, -1))
        cam0 = torch.tensor([[1.0, 0.2, -0.1]])
        moved = model(img, n_iter=0, init_cam=cam0)
        torch.testing.assert_close(moved["cam"], cam0.expand(2, -1))
        full = model(img)
        feats = model.extract_features(img)
        torch.testing.assert_close(model.regress(feats)["betas"], full["betas"])
    assert model.training is False


def test_seed_updates_shape_and_sizes_from_resolution():
    torch.manual_seed(0)
    model = create_model("hmr_seed_mobilenet_v2", img_res=96).eval()
    assert model.classifier2.in_features == 24 * 3 * 3  # ceil(96 / 32) = 3
    with torch.no_grad():
        torch.nn.init.normal_(model.decshape2.weight, std=0.1)
        out = model(torch.randn(1, 3, 96, 96))
    assert not torch.allclose(out["betas"], model.init_shape)  # the original study's bug kept the mean shape
    assert create_model("hmr_seed_mobilenet_v2", img_res=200).classifier2.in_features == 24 * 7 * 7


def test_regressor_variants_change_counts():
    base = create_model("hmr_mobilenet_v2")
    no_fc2 = create_model("hmr_mobilenet_v2", fc2=False)
    assert n_params(base) - n_params(no_fc2) == 1024 * 1024 + 1024
    assert not hasattr(no_fc2, "fc2") and "fc2" not in no_fc2.regressor_names
    # n_iter and ief_relu change compute, not parameters
    assert n_params(create_model("hmr_mobilenet_v2", n_iter=2, ief_relu=True)) == n_params(base)
    small = create_model("hmr_mobilenet_v2", hidden=256)
    fc1, fc2, heads = (1437 + 1) * 768, 1024 * 1024 - 256 * 256 + 768, 157 * 768
    assert n_params(base) - n_params(small) == fc1 + fc2 + heads
    split = parameter_split(no_fc2)
    assert split["regressor"] == (1280 + 157) * 1024 + 1024 + 157 * 1024 + 157
    assert split["encoder"] == 2_223_872


def test_ief_iterations_and_relu_are_used():
    torch.manual_seed(0)
    img = torch.randn(1, 3, 64, 64)
    model = create_model("hmr_tiny").eval()
    relu = create_model("hmr_tiny", ief_relu=True).eval()
    relu.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.nn.init.normal_(model.decpose.weight, std=0.05)
        relu.decpose.weight.copy_(model.decpose.weight)
        one, three = model(img, n_iter=1), model(img)
        assert not torch.allclose(one["pose6d"], three["pose6d"])
        assert not torch.allclose(relu(img)["pose6d"], three["pose6d"])


def test_unknown_name_and_overrides():
    with pytest.raises(UserError, match="did you mean 'hmr_mobilenet_v2'") as err:
        create_model("hmr_mobilenetv2")
    assert "hmr_resnet50" in str(err.value)
    with pytest.raises(UserError, match="unknown option 'fc3'.*did you mean 'fc2'.*Valid options"):
        create_model("hmr_mobilenet_v2", fc3=False)
    with pytest.raises(UserError, match="encoder_head"):  # not an option of SPIN's fixed ResNet-50
        create_model("hmr_resnet50", encoder_head="logits")
    with pytest.raises(UserError, match="n_iter must be >= 1"):
        create_model("hmr_tiny", n_iter=0)
    with pytest.raises(UserError, match="fc2 must be true or false"):
        create_model("hmr_tiny", fc2="no")
    with pytest.raises(UserError, match="encoder_head must be one of"):
        create_model("hmr_mobilenet_v2", encoder_head="pooled")


def test_duplicate_registration_raises():
    with pytest.raises(ValueError, match="already registered"):
        register_model(lambda **kw: None, name="hmr_tiny")


def test_pretrained_only_from_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(UserError, match="mobilenet_v3_small.*put it at"):
        create_model("hmr_mobilenet_v3_small", pretrained=True)
    torch.manual_seed(1)
    reference = torchvision.models.mobilenet_v3_small()
    weights = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / weights.url.rsplit("/", 1)[1])
    model = create_model("hmr_mobilenet_v3_small", pretrained=True)
    torch.testing.assert_close(model.encoder.features[0][0].weight, reference.features[0][0].weight)
    with pytest.raises(UserError, match="no ImageNet weights"):
        create_model("hmr_tiny", pretrained=True)


def test_legacy_densenet_keys_renamed():
    state = {"features.denseblock1.denselayer1.norm.1.weight": torch.zeros(1), "features.conv0.weight": torch.ones(1)}
    renamed = encoders._rename_legacy_densenet_keys(state)
    assert list(renamed) == ["features.denseblock1.denselayer1.norm1.weight", "features.conv0.weight"]


def test_shufflenet_block_matches_torchvision():
    torch.manual_seed(0)
    reference = torchvision.models.shufflenet_v2_x0_5().eval()
    model = create_model("hmr_shufflenet_v2_x0_5", encoder_head="logits").eval()
    missing = model.encoder.load_state_dict(reference.state_dict(), strict=False).missing_keys  # same names
    assert missing and all(k.endswith("shuffle.perm") for k in missing)
    img = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model.encoder(img), reference(img))
    assert isinstance(model.encoder.stage2[0].shuffle, encoders.ChannelShuffle)
