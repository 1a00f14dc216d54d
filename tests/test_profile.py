"""Profiling: the memory estimate worked out by hand, measured memory that follows it, the cache, latency stats."""
import json

import pytest
import torch

from compress import profile
from compress.checkpoint import save_checkpoint
from compress.models import create_model


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prof") / "tiny.pt"
    save_checkpoint(create_model("hmr_tiny", img_res=64), path)
    return path


def test_training_estimate_exceeds_inference_and_scales_with_batch():
    model = create_model("hmr_tiny", img_res=64)
    infer = profile.estimate_memory_mb(model, img_res=64, batch_size=1, train=False)
    train4 = profile.estimate_memory_mb(model, img_res=64, batch_size=4, train=True)
    train16 = profile.estimate_memory_mb(model, img_res=64, batch_size=16, train=True)
    params_mb = sum(p.numel() * 4 for p in model.parameters()) / 2**20
    assert infer > params_mb
    assert train4 > 4 * params_mb  # params + grads + two Adam moments, plus activations
    assert train16 > train4


def test_memory_estimate_of_one_convolution_worked_out_by_hand():
    """Conv2d(3 -> 8, 3x3) on (2, 3, 16, 16): 224 parameters = 896 bytes; the input is 6,144 bytes, the output
    16,384. Inference: weights + the input/output pair. Training: weights, gradients and two Adam moments (4x),
    plus what autograd saves for backward (the input and the weight)."""
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1))
    assert profile.estimate_memory_mb(conv, img_res=16, batch_size=2, train=False) * 2**20 == 896 + 6144 + 16384
    assert profile.estimate_memory_mb(conv, img_res=16, batch_size=2, train=True) * 2**20 == 4 * 896 + 6144 + 864


def test_measured_training_peak_grows_with_the_batch_like_the_estimate(tiny_ckpt):
    """The measured peak (a training step in a fresh process) grows from batch 1 to 32 by about what the estimate's
    activations grow (measured here: 23-29 MB against 16.7 MB estimated; RSS also holds allocator slack)."""
    measured = {b: profile.measured_peak_memory_mb(str(tiny_ckpt), img_res=64, batch_size=b, train=True)
                for b in (1, 32)}
    model = create_model("hmr_tiny", img_res=64)
    estimate = {b: profile.estimate_memory_mb(model, img_res=64, batch_size=b, train=True) for b in (1, 32)}
    grown, expected = measured[32] - measured[1], estimate[32] - estimate[1]
    assert 0.5 * expected < grown < 4 * expected, (measured, estimate)


def test_interleaved_latency_passes_the_ab_timer_through(monkeypatch):
    """The A/B timer's statistics come back per model, without the raw samples, with the context of the timing."""
    calls = []

    def fake_ab(models, **kw):
        calls.append((list(models), kw))
        return {k: {"median_ms": 2.0 + i, "p10_ms": 1.0, "p90_ms": 9.0, "repeats": kw["repeats"],
                    "samples_ms": [1.0, 2.0, 9.0]} for i, k in enumerate(models)}

    monkeypatch.setattr(profile, "ab_latency", fake_ab)
    monkeypatch.setattr(profile.torch, "get_num_threads", lambda: 7)
    stats = profile.interleaved_latency({"a": None, "b": None}, img_res=32, batch_size=2, warmup=1, repeats=3)
    assert calls == [(["a", "b"], {"img_res": 32, "batch": 2, "device": "cpu", "warmup": 1, "repeats": 3})]
    assert stats == {k: {"median_ms": m, "p10_ms": 1.0, "p90_ms": 9.0, "repeats": 3, "batch": 2, "threads": 7,
                         "device": "cpu"} for k, m in (("a", 2.0), ("b", 3.0))}


def test_interleaved_latency_times_real_models():
    models = {"a": create_model("hmr_tiny", img_res=32), "b": create_model("hmr_tiny", img_res=32)}
    stats = profile.interleaved_latency(models, img_res=32, batch_size=2, warmup=1, repeats=3)
    assert set(stats) == {"a", "b"} and all(s["median_ms"] > 0 and s["repeats"] == 3 for s in stats.values())


def test_profile_is_cached_until_the_checkpoint_changes(tiny_ckpt, monkeypatch):
    calls = []
    real = profile._profile_model
    monkeypatch.setattr(profile, "_profile_model", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(profile, "measured_peak_memory_mb", lambda *a, **k: 1.0)  # no subprocess here
    first = profile.profile_checkpoint(tiny_ckpt, batch_sizes=(1,), repeats=2)
    second = profile.profile_checkpoint(tiny_ckpt, batch_sizes=(1,), repeats=2)
    assert calls == [1] and first == second
    assert first["params_total"] == 41_693
    cache = json.loads(tiny_ckpt.with_name(tiny_ckpt.name + ".profile.cpu.json").read_text())
    assert cache["profile"]["macs"] == first["macs"]
    profile.profile_checkpoint(tiny_ckpt, batch_sizes=(1,), repeats=2, retime=True)
    assert calls == [1, 1]


def test_one_cache_key_for_the_profile_and_the_onnx_latency(tmp_path):
    """The file's identity plus the settings stored with it; a reader compares the settings it names."""
    ckpt = tmp_path / "m.pt"
    torch.save({"w": torch.zeros(2)}, ckpt)
    settings = {"img_res": 64, "device": "cpu", "batch_sizes": [1, 32], "threads": 1}
    profile.write_cache(ckpt, profile.PROFILE_CACHE, {"macs": 7}, **settings)
    st = ckpt.stat()
    stored = json.loads((tmp_path / "m.pt.profile.cpu.json").read_text())
    assert stored == {"key": {"size": st.st_size, "mtime_ns": st.st_mtime_ns, **settings}, "profile": {"macs": 7}}
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, **settings) == {"macs": 7}
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cpu") == {"macs": 7}  # what the report asks
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cuda") is None
    # one file per device kind: a CUDA profile written next to it leaves the CPU one readable (no thrash)
    profile.write_cache(ckpt, profile.PROFILE_CACHE, {"macs": 8}, **(settings | {"device": "cuda"}))
    assert (tmp_path / "m.pt.profile.cuda.json").is_file()
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cpu") == {"macs": 7}
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cuda") == {"macs": 8}
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, **(settings | {"threads": 2})) is None
    assert profile.read_cache(ckpt, profile.ONNX_LATENCY_CACHE) is None  # a file of its own
    profile.write_cache(ckpt, profile.ONNX_LATENCY_CACHE, {"median_ms": 1.5})
    assert json.loads((tmp_path / "m.pt.onnx-latency.json").read_text())["key"] == {"size": st.st_size,
                                                                                    "mtime_ns": st.st_mtime_ns}
    assert profile.read_cache(ckpt, profile.ONNX_LATENCY_CACHE) == {"median_ms": 1.5}
    torch.save({"w": torch.zeros(1000)}, ckpt)  # a rewritten checkpoint (another size) is measured again
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cpu") is None
    assert profile.read_cache(ckpt, profile.ONNX_LATENCY_CACHE) is None
    (tmp_path / "m.pt.profile.cpu.json").write_text('{"key": ')  # half a file: a miss, not an error
    assert profile.read_cache(ckpt, profile.PROFILE_CACHE, device="cpu") is None
