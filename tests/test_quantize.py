"""INT8 in ONNX Runtime: `compress eval model.onnx` scores an exported model like its checkpoint, and
`compress quantize` writes a QDQ model calibrated on training crops (every layer by default; --keep-fp32 names
layers kept in fp32)."""
from __future__ import annotations

import json

import onnx
import pytest
import torch

from compress.checkpoint import load_checkpoint, save_checkpoint
from compress.cli import main
from compress.eval.protocols import evaluate_checkpoint
from compress.export import export_onnx
from compress.models import create_model
from compress.quantize import QuantSpec, run_quantize

RES = 32


@pytest.fixture
def tiny_ckpt(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(create_model("hmr_tiny", img_res=RES), tmp_path / "run" / "trained.pt", stage="trained")


def test_eval_of_the_onnx_file_equals_the_checkpoints(synth_root, tiny_ckpt, tmp_path):
    onnx_file = export_onnx(tiny_ckpt, tmp_path / "m.onnx")["path"]
    kw = dict(root=synth_root, datasets=["3dpw", "h36m-p2"], device="cpu")
    ours = evaluate_checkpoint(tiny_ckpt, **kw)
    ort = evaluate_checkpoint(onnx_file, **kw)
    for ds in ours:
        assert ort[ds]["n"] == ours[ds]["n"] > 0
        for k in ("mpjpe_mm", "pa_mpjpe_mm"):
            assert ort[ds][k] == pytest.approx(ours[ds][k], abs=1e-3), (ds, k)


def test_quantize_writes_a_calibrated_qdq_model(synth_root, tiny_ckpt):
    summary = run_quantize(tiny_ckpt, spec=QuantSpec(calib=4), data=str(synth_root), datasets=["3dpw"])
    run = tiny_ckpt.parent
    assert (run / "quantized.onnx").is_file() and (run / "model.onnx").is_file()
    assert json.loads((run / "quantized.json").read_text())["int8"] == str(run / "quantized.onnx")
    graph = onnx.load(str(run / "quantized.onnx")).graph
    ops = [n.op_type for n in graph.node]
    assert ops.count("QuantizeLinear") > 10 and ops.count("DequantizeLinear") > 10
    assert summary["kept_fp32"] == [] and summary["method"] == "percentile"  # defaults: every layer, percentile
    assert summary["calibration_images"] == 4
    assert summary["size_mb"]["int8"] < summary["size_mb"]["fp32"]
    m = summary["metrics"]
    assert m["int8"]["3dpw"]["n"] == m["fp32"]["3dpw"]["n"] > 0
    assert abs(m["int8"]["3dpw"]["mpjpe_mm"] - m["fp32"]["3dpw"]["mpjpe_mm"]) < 50  # same model, 8-bit


def test_quantize_command_prints_size_latency_and_accuracy(synth_root, tiny_ckpt, capsys):
    assert main(["quantize", str(tiny_ckpt.parent), "--calib", "4", "--data", str(synth_root),
                 "--datasets", "3dpw", "--keep-fp32", "decpose,decshape,deccam", "--method", "minmax"]) == 0
    out = capsys.readouterr().out
    assert "size MB" in out and "ORT ms b1" in out and "3dpw MPJPE mm" in out
    from compress.devices import cpu_info, describe_cpu

    assert f"CPU: {describe_cpu(cpu_info())}" in " ".join(out.split())  # what the speed-up was measured on
    summary = json.loads((tiny_ckpt.parent / "quantized.json").read_text())
    heads = [n for n in summary["kept_fp32"] if "dec" in n]
    assert heads and len(heads) == len(summary["kept_fp32"])  # decpose/decshape/deccam of each IEF iteration
    assert summary["method"] == "minmax" and "samples_ms" not in summary["latency_ms"]["b1"]["int8"]
    assert set(summary["cpu"]) == {"model", "int8_isa", "vnni"}


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_and_calibration_errors_are_one_line_exit_2(synth_root, tiny_ckpt, tmp_path, capsys):
    data = ["--data", str(synth_root)]
    assert main(["eval", str(tmp_path / "missing.onnx"), *data]) == 2
    assert "ONNX file not found" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"\x00not a protobuf\xff" * 10)
    assert main(["eval", str(tmp_path / "junk.onnx"), *data]) == 2
    assert "not an ONNX file" in capsys.readouterr().err
    linear = tmp_path / "linear.onnx"
    torch.onnx.export(torch.nn.Linear(10, 3), (torch.zeros(1, 10),), str(linear), dynamo=False)
    assert main(["eval", str(linear), *data]) == 2
    assert "not an HMR image model" in capsys.readouterr().err
    assert main(["quantize", str(tiny_ckpt), "--calib", "1000", "--no-eval", *data]) == 2
    assert "calibration set too small" in capsys.readouterr().err
    assert not (tiny_ckpt.parent / "quantized.onnx").exists()


def test_report_shows_the_int8_model_after_its_source(synth_root, tiny_ckpt, monkeypatch):
    import compress.profile

    monkeypatch.setattr(compress.profile, "measured_peak_memory_mb", lambda *a, train, **k: 2.0 if train else 1.0)
    model = load_checkpoint(tiny_ckpt)[0]
    metrics = evaluate_checkpoint(tiny_ckpt, root=synth_root, datasets=["3dpw"])
    save_checkpoint(model, tiny_ckpt, stage="trained", metrics=metrics)  # a baseline with its own metrics
    summary = run_quantize(tiny_ckpt, spec=QuantSpec(calib=4), data=str(synth_root), datasets=["3dpw"])
    from compress.report import collect_rows

    rows = collect_rows(runs_dir=tiny_ckpt.parent.parent, device="cpu", onnx=True)
    assert [r["stage"] for r in rows] == ["baseline", "baseline+INT8"]
    base, int8 = rows
    assert int8["checkpoint"] == summary["int8"] and int8["parent"] == base["checkpoint"]
    assert int8["params_total"] == base["params_total"] and int8["macs"] == base["macs"]
    assert int8["metrics"]["3dpw"] == summary["metrics"]["int8"]["3dpw"]
    assert int8["onnx_latency_ms"] > 0 and int8["onnx_latency_b32_ms"] > 0 and base["onnx_latency_ms"] > 0
    assert int8["latency_ms"] is None and "ONNX Runtime only" in int8["notes"]["latency_ms"]
    want = int8["metrics"]["3dpw"]["mpjpe_mm"] - base["metrics"]["3dpw"]["mpjpe_mm"]
    assert int8["delta"]["metrics"]["3dpw"]["mpjpe_mm"]["abs"] == pytest.approx(want)


def test_reduce_range_auto_follows_vnni_and_bad_values_are_refused(monkeypatch):
    import compress.quantize as q
    from compress.errors import UserError

    for vnni, seven in ((False, True), (True, False)):
        monkeypatch.setattr(q, "cpu_info", lambda vnni=vnni: {"model": "x", "int8_isa": ["avx2"], "vnni": vnni})
        assert QuantSpec().seven_bit() is seven
        assert QuantSpec(reduce_range="on").seven_bit() and not QuantSpec(reduce_range="off").seven_bit()
    with pytest.raises(UserError, match="--reduce-range 'some'"):
        QuantSpec(reduce_range="some").check()


def test_seven_bit_weights_span_at_most_plus_minus_63(synth_root, tiny_ckpt, tmp_path):
    import numpy as np
    from onnx import numpy_helper

    from compress.quantize import quantize_onnx

    model, _ = load_checkpoint(tiny_ckpt)
    fp32 = tmp_path / "m.onnx"
    export_onnx(model, fp32, img_res=RES)
    images = np.random.default_rng(0).standard_normal((4, 3, RES, RES)).astype(np.float32)
    spans = {}
    for mode in ("on", "off"):
        done = quantize_onnx(fp32, tmp_path / f"{mode}.onnx", images, QuantSpec(reduce_range=mode, keep_fp32=()))
        weights = [numpy_helper.to_array(t) for t in onnx.load(str(tmp_path / f"{mode}.onnx")).graph.initializer
                   if t.name.endswith("_quantized") and t.data_type == onnx.TensorProto.INT8]
        spans[mode] = max(int(np.abs(w.astype(int)).max()) for w in weights)
        assert done["weights"].startswith("int7" if mode == "on" else "int8")
    assert spans["on"] <= 64 < spans["off"]


def test_calibration_crops_depend_on_the_seed_only(synth_root):
    from compress.quantize import calibration_images
    from compress.recipe import DataSpec

    data = DataSpec(root=str(synth_root), workers=0)
    torch.manual_seed(1)
    a = calibration_images(data, img_res=RES, n=6, seed=0)
    torch.manual_seed(2)  # the mixed set's own draw follows torch's global RNG; the calibration must not
    b = calibration_images(data, img_res=RES, n=6, seed=0)
    c = calibration_images(data, img_res=RES, n=6, seed=1)
    assert a.shape == (6, 3, RES, RES) and (a == b).all() and not (a == c).all()


def test_op_profile_sums_kernel_time_by_layer_kind(tmp_path):
    """bench_runtime --ops: a MobileNetV2's convolutions sort into one first conv, depthwise and pointwise layers, and
    every profiled run's kernel time lands in some kind."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "bench_runtime", Path(__file__).resolve().parent.parent / "benchmarks" / "bench_runtime.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    torch.manual_seed(0)
    path = export_onnx(create_model("hmr_mobilenet_v2", img_res=RES), tmp_path / "m.onnx", img_res=RES)["path"]
    kinds = list(bench.layer_kinds(path).values())
    assert kinds.count("first conv") == 1 and kinds.count("depthwise") == 17 and kinds.count("pointwise") == 34
    assert kinds.count("fully connected") == 15  # fc1, fc2 and three heads, three IEF iterations
    ms = bench.kernel_ms(path, RES, runs=3)
    assert set(ms) == set(bench.KINDS) and all(v >= 0 for v in ms.values()) and ms["pointwise"] > 0
