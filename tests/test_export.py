"""ONNX export: dynamic batch, named outputs, onnxruntime matches PyTorch within 1e-4, pruned models included."""
from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime")

from compress.export import ExportMismatchError, export_onnx, onnx_latency  # noqa: E402

IMG_RES = 64


def _tiny(seed: int = 0) -> nn.Module:
    from compress.models import create_model

    torch.manual_seed(seed)
    model = create_model("hmr_tiny", img_res=IMG_RES)
    # Non-trivial BatchNorm statistics so the exported graph really folds them.
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
    return model.eval()


def _shrink_encoder_output(model: nn.Module, keep: list[int]) -> nn.Module:
    """A pruned-like model by hand: keep `keep` channels of the last encoder conv and the fc1 columns they feed."""
    conv, bn = model.encoder.down[0], model.encoder.down[1]
    idx = torch.tensor(keep)
    new_conv = nn.Conv2d(conv.in_channels, len(keep), conv.kernel_size, stride=conv.stride, padding=conv.padding,
                         bias=False)
    new_conv.weight.data = conv.weight.data[idx].clone()
    new_bn = nn.BatchNorm2d(len(keep))
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new_bn, name).data = getattr(bn, name).data[idx].clone()
    model.encoder.down[0], model.encoder.down[1] = new_conv, new_bn
    fc1 = model.fc1
    feat = conv.out_channels
    cols = torch.cat([idx, torch.arange(feat, fc1.in_features)])  # keep SPIN's [features, pose, shape, cam] order
    new_fc1 = nn.Linear(len(cols), fc1.out_features)
    new_fc1.weight.data = fc1.weight.data[:, cols].clone()
    new_fc1.bias.data = fc1.bias.data.clone()
    model.fc1 = new_fc1
    return model


def test_hmr_tiny_exports_and_matches_pytorch(tmp_path):
    model = _tiny()
    info = export_onnx(model, tmp_path / "tiny.onnx", img_res=IMG_RES)
    assert (tmp_path / "tiny.onnx").stat().st_size > 0 and not (tmp_path / "tiny.onnx.tmp").exists()
    assert info["outputs"] == {"rotmat": ["batch", 24, 3, 3], "betas": ["batch", 10], "cam": ["batch", 3]}
    assert info["inputs"] == {"img": ["batch", 3, IMG_RES, IMG_RES]}
    assert info["max_abs_diff_all"] <= 1e-4 and set(info["max_abs_diff"]) == {"rotmat", "betas", "cam"}
    assert info["checked_batches"] == [1, 3]

    # An independent check at a batch size the export never saw.
    import onnxruntime as ort

    session = ort.InferenceSession(info["path"], providers=["CPUExecutionProvider"])
    x = torch.randn(5, 3, IMG_RES, IMG_RES, generator=torch.Generator().manual_seed(1))
    rotmat, betas, cam = session.run(["rotmat", "betas", "cam"], {"img": x.numpy()})
    with torch.no_grad():
        ref = model(x)
    assert rotmat.shape == (5, 24, 3, 3)
    torch.testing.assert_close(torch.from_numpy(rotmat), ref["rotmat"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(betas), ref["betas"], atol=1e-4, rtol=0)
    torch.testing.assert_close(torch.from_numpy(cam), ref["cam"], atol=1e-4, rtol=0)


def test_pruned_like_model_exports(tmp_path):
    model = _shrink_encoder_output(_tiny(), keep=[0, 3, 5, 8, 13, 21, 30])
    with torch.no_grad():
        assert model(torch.zeros(2, 3, IMG_RES, IMG_RES))["rotmat"].shape == (2, 24, 3, 3)
    full = sum(p.numel() for p in _tiny().parameters())
    info = export_onnx(model, tmp_path / "pruned.onnx", img_res=IMG_RES)
    assert info["params"] < full
    assert info["max_abs_diff_all"] <= 1e-4


@pytest.mark.parametrize("pruned", [False, True])
def test_checkpoint_path_exports(tmp_path, pruned):
    checkpoint = pytest.importorskip("compress.checkpoint")
    model = _shrink_encoder_output(_tiny(), keep=[1, 2, 4, 9, 16]) if pruned else _tiny()
    path = tmp_path / "model.pt"
    checkpoint.save_checkpoint(model, path)
    info = export_onnx(path, tmp_path / "from_ckpt.onnx")
    assert info["img_res"] == IMG_RES and info["max_abs_diff_all"] <= 1e-4
    assert info["params"] == sum(p.numel() for p in model.parameters())


def test_mismatch_fails_loudly_and_leaves_no_file(tmp_path):
    model = _tiny()
    with pytest.raises(ExportMismatchError, match="differs from PyTorch"):
        export_onnx(model, tmp_path / "bad.onnx", img_res=IMG_RES, atol=0.0 - 1.0)  # impossible tolerance
    assert not (tmp_path / "bad.onnx").exists() and not (tmp_path / "bad.onnx.tmp").exists()


def test_onnx_latency_stats(tmp_path, monkeypatch):
    """The statistics of known run times: a clock that advances 3, 1, 2, 9, 5, 4, 8, 6, 7 ms per timed run."""
    import compress.export as export

    info = export_onnx(_tiny(), tmp_path / "tiny.onnx", img_res=IMG_RES)
    runs = []
    real = export.session(info["path"], threads=1)

    class Counting:
        def run(self, names, feeds):
            runs.append(feeds["img"].shape)
            return real.run(names, feeds)

        def get_providers(self):
            return real.get_providers()

    ticks = iter(t for i, ms in enumerate([3, 1, 2, 9, 5, 4, 8, 6, 7]) for t in (10.0 * i, 10.0 * i + ms / 1000))
    monkeypatch.setattr(export, "session", lambda path, threads=None, device=None: Counting())
    monkeypatch.setattr(export.time, "perf_counter", lambda: next(ticks))
    stats = onnx_latency(info["path"], img_res=IMG_RES, batch=2, repeats=9, warmup=2, threads=1)
    assert runs == [(2, 3, IMG_RES, IMG_RES)] * 11  # warm-up runs are not timed
    assert stats["repeats"] == 9 and stats["batch"] == 2 and stats["threads"] == 1
    assert stats["median_ms"] == pytest.approx(5.0) and stats["p10_ms"] == pytest.approx(1.0)
    assert stats["p90_ms"] == pytest.approx(9.0)


def test_onnx_latency_on_cuda_never_passes_a_cpu_figure_off(tmp_path, monkeypatch):
    """Asked for CUDA, an onnxruntime without the CUDA provider (onnxruntime-gpu) is an error, not a CPU timing."""
    import onnxruntime as ort

    info = export_onnx(_tiny(), tmp_path / "tiny.onnx", img_res=IMG_RES)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(RuntimeError, match="not CUDA .install onnxruntime-gpu"):
        onnx_latency(info["path"], img_res=IMG_RES, repeats=2, warmup=0, device=torch.device("cuda"))


def test_cli_export(tmp_path, capsys):
    import json

    from compress.checkpoint import save_checkpoint
    from compress.cli import main

    path = save_checkpoint(_tiny(), tmp_path / "tiny.pt")
    assert main(["export", str(path), "--onnx", str(tmp_path / "out" / "tiny.onnx"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["path"] == str(tmp_path / "out" / "tiny.onnx") and info["max_abs_diff_all"] <= 1e-4
    assert main(["export", str(tmp_path / "nope.pt"), "--onnx", str(tmp_path / "x.onnx")]) == 2
