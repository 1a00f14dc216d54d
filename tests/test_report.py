"""The before/after report on hand-made run directories: numbers come from the files, deltas by construction."""
from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import pytest
import torch

from compress import report
from compress.report import collect_rows, compute_delta, pareto_front, render_csv, render_markdown, run_report
from compress.report.costs import noise_notes

# Hand-picked numbers so every delta is known: baseline 100 mm -> P1+FT 90 mm is -10 mm, -10 %.
BASE_METRICS = {
    "3dpw": {"n": 40, "mpjpe_mm": 100.0, "pa_mpjpe_mm": 60.0, "pve_mm": 120.0},
    "mpi-inf-3dhp": {"n": 30, "mpjpe_mm": 110.0, "pa_mpjpe_mm": 80.0},
    "h36m-p1": {"n": 20, "mpjpe_mm": 130.0, "pa_mpjpe_mm": 75.0},
    "h36m-p2": {"n": 20, "mpjpe_mm": 140.0, "pa_mpjpe_mm": 76.0},
    "lsp": {"n": 10, "fb_acc": 80.0, "fb_f1": 0.80, "parts_acc": 85.0, "parts_f1": 0.50},
}
FT1_METRICS = {
    "3dpw": {"n": 40, "mpjpe_mm": 90.0, "pa_mpjpe_mm": 66.0, "pve_mm": 120.0},
    "mpi-inf-3dhp": {"n": 30, "mpjpe_mm": 121.0, "pa_mpjpe_mm": 84.0},
    "h36m-p1": {"n": 20, "mpjpe_mm": 130.0, "pa_mpjpe_mm": 70.0},
    "h36m-p2": {"n": 20, "mpjpe_mm": 150.0, "pa_mpjpe_mm": 77.0},
    "lsp": {"n": 10, "fb_acc": 88.0, "fb_f1": 0.76, "parts_acc": 85.0, "parts_f1": 0.55},
}
FT2_METRICS = {  # no LSP and no H36M-P2: "not evaluated"
    "3dpw": {"n": 40, "mpjpe_mm": 95.0, "pa_mpjpe_mm": 63.0, "pve_mm": 118.0},
    "mpi-inf-3dhp": {"n": 30, "mpjpe_mm": 115.0, "pa_mpjpe_mm": 82.0},
    "h36m-p1": {"n": 20, "mpjpe_mm": 128.0, "pa_mpjpe_mm": 72.0},
}


def _profile(params: int, macs: int, latency: float, infer: float, train: float | None) -> dict:
    b1 = {"median_ms": latency, "p10_ms": latency * 0.9, "p90_ms": latency * 1.1, "repeats": 15}
    b32 = {"median_ms": latency * 20, "p10_ms": latency * 19, "p90_ms": latency * 22, "repeats": 15}
    return {
        "params_total": params, "params_encoder": params - 300, "params_regressor": 300, "macs": macs,
        "macs_counter": "test counter", "img_res": 64, "latency_ms": latency,
        "latency": {"b1": b1, "b32": b32, "threads": 1, "device": "cpu"},
        "peak_mem_mb": {"infer_measured": infer, "train_measured": train, "infer_estimate": infer * 0.8,
                        "train_estimate": 50.0, "train_batch": 8, "method": "peak RSS growth in a fresh process"},
    }


def _save(path: Path, *, parent: Path | None, metrics: dict | None, profile: dict, **meta) -> Path:
    """A checkpoint in our format (metadata is all the report reads) plus a valid profile cache beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ckpt = {"format_version": 1, "model": {"name": "hmr_tiny", "overrides": {}, "widths": {}},
            "state_dict": {"w": torch.zeros(3)}, "parent": str(parent) if parent else None, "recipe": {},
            "metrics": metrics or {}, "created": "2026-11-25T18:00:00"} | meta
    torch.save(ckpt, path)
    st = path.stat()
    key = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "img_res": 64, "device": "cpu", "batch_sizes": [1, 32],
           "threads": 1}
    path.with_name(path.name + ".profile.cpu.json").write_text(json.dumps({"key": key, "profile": profile}))
    return path


def no_retiming(monkeypatch) -> None:
    """The report must read every profile from the cache (a call to the profiler fails the test), and sees no CUDA
    (the same rows on a GPU host)."""
    import compress.profile

    def no_timing(*args, **kwargs):
        raise AssertionError("the report re-timed a model whose profile is cached")

    monkeypatch.setattr(compress.profile, "profile_checkpoint", no_timing)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def save_chain(r: Path, *, names=("base", "p1", "p2"), params=(1000, 800, 600), p1_metrics=None) -> dict:
    """baseline -> P1 -> P1+FT(20) -> P2 -> P2+FT(8) in three run directories under `r`, each with a cached profile;
    runs/latest -> the P2 run."""
    base_name, p1_name, p2_name = names
    base = _save(r / base_name / "trained.pt", parent=None, metrics=BASE_METRICS,
                 profile=_profile(params[0], 2_000_000_000, 10.0, 40.0, 200.0))
    p1 = _save(r / p1_name / "pruned.pt", parent=base, metrics=p1_metrics,
               profile=_profile(params[1], 1_500_000_000, 8.0, 30.0, 150.0))
    ft1 = _save(r / p1_name / "finetuned.pt", parent=p1, metrics=FT1_METRICS, stage="FT(20)",
                profile=_profile(params[1], 1_500_000_000, 12.5, 30.0, 150.0))
    p2 = _save(r / p2_name / "pruned.pt", parent=ft1, metrics=None,
               profile=_profile(params[2], 1_000_000_000, 6.0, 25.0, None))
    ft2 = _save(r / p2_name / "finetuned.pt", parent=p2, metrics=FT2_METRICS, stage="FT(8)",
                profile=_profile(params[2], 1_000_000_000, 6.0, 25.0, None))
    os.symlink(p2_name, r / "latest")
    return {"dir": r, "base": base, "p1": p1, "ft1": ft1, "p2": p2, "ft2": ft2}


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """baseline -> P1 -> P1+FT(20) -> P2 -> P2+FT(8) in three run directories; runs/latest -> p2."""
    no_retiming(monkeypatch)
    chain = save_chain(tmp_path / "runs")
    (chain["dir"] / "p2" / "metrics").mkdir()
    return chain


def test_cpu_and_cuda_profiles_are_cached_apart(runs, monkeypatch):
    """With CUDA present a report profiles each checkpoint on the CPU (its rows) and on CUDA (the GPU column); the
    two profiles live in their own cache files, so a second report times nothing (one shared file thrashed)."""
    import compress.profile as prof

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    calls = []

    def fake_profile(path, *, device="cpu", retime=False, **kwargs):
        calls.append((Path(path).parent.name, Path(path).name, device))
        figures = _profile(5, 5, 2.5 if device == "cuda" else 99.0, 1.0, 1.0)
        prof.write_cache(path, prof.PROFILE_CACHE, figures, device=device)
        return figures

    monkeypatch.setattr(prof, "profile_checkpoint", fake_profile)
    rows = collect_rows(runs_dir=runs["dir"], device="cpu")
    assert len(calls) == 5 and {c[2] for c in calls} == {"cuda"}  # the CPU profiles were cached already
    assert [r["gpu_latency_ms"] for r in rows] == [2.5] * 5
    assert [r["latency_ms"] for r in rows] == [10.0, 8.0, 12.5, 6.0, 6.0]
    again = collect_rows(runs_dir=runs["dir"], device="cpu")
    assert len(calls) == 5, calls[5:]
    assert [r["latency_ms"] for r in again] == [10.0, 8.0, 12.5, 6.0, 6.0]
    on_cuda = collect_rows(runs_dir=runs["dir"], device="cuda")  # profiled on CUDA: its own column, no re-timing
    assert len(calls) == 5 and [r["latency_ms"] for r in on_cuda] == [2.5] * 5


def test_rows_follow_the_chain_and_equal_the_files(runs):
    rows = json.loads(report.render_json(collect_rows(runs_dir=runs["dir"])))
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(20)", "P2", "P2+FT(8)"]
    assert [r["run"] for r in rows] == ["base", "p1", "p1", "p2", "p2"]
    for row, key in zip(rows, ["base", "p1", "ft1", "p2", "ft2"]):
        path = runs[key]
        assert row["checkpoint"] == str(path.resolve())
        meta = torch.load(path, weights_only=True)
        assert row["metrics"] == meta["metrics"]
        prof = json.loads(path.with_name(path.name + ".profile.cpu.json").read_text())["profile"]
        for field in ("params_total", "params_encoder", "params_regressor", "macs", "latency_ms"):
            assert row[field] == prof[field]
        assert row["latency_b32_ms"] == prof["latency"]["b32"]["median_ms"]
        for k, v in prof["peak_mem_mb"].items():
            assert row["peak_mem_mb"][k] == v
    assert rows[1]["parent"] == str(runs["base"].resolve())


def test_deltas_by_construction(runs):
    rows = collect_rows(runs_dir=runs["dir"])
    base, ft1 = rows[0], rows[2]
    assert base["delta"] == {}
    d = ft1["delta"]
    assert d["metrics"]["3dpw"]["mpjpe_mm"] == {"abs": -10.0, "pct": -10.0, "better": True}
    assert d["metrics"]["3dpw"]["pa_mpjpe_mm"] == {"abs": 6.0, "pct": pytest.approx(10.0), "better": False}
    assert d["metrics"]["3dpw"]["pve_mm"]["better"] is None  # equal: no direction
    assert d["metrics"]["lsp"]["fb_acc"] == {"abs": 8.0, "pct": 10.0, "better": True}  # higher is better
    assert d["metrics"]["lsp"]["fb_f1"]["better"] is False
    assert d["metrics"]["lsp"]["parts_f1"]["pct"] == pytest.approx(10.0)
    assert "n" not in d["metrics"]["3dpw"]
    assert "n_pve" not in compute_delta({"metrics": {"3dpw": {"n_pve": 3, "pve_mm": 1.0}}},
                                        {"metrics": {"3dpw": {"n_pve": 4, "pve_mm": 2.0}}})["metrics"]["3dpw"]
    assert d["params_total"] == {"abs": -200, "pct": -20.0, "better": True}
    assert d["macs"]["pct"] == -25.0
    assert d["latency_ms"] == {"abs": 2.5, "pct": 25.0, "better": False}
    assert d["peak_mem_mb"]["infer"] == {"abs": -10.0, "pct": -25.0, "better": True}  # measured in every row
    # P2 has no measured training peak, so the whole column shows estimates (never measured next to estimated).
    assert [r["peak_mem_mb"]["train"] for r in rows] == [50.0] * 5
    assert {r["peak_mem_mb"]["train_source"] for r in rows} == {"estimate"}
    assert d["peak_mem_mb"]["train"]["abs"] == 0.0
    assert rows[0]["notes"]["train_mem_mb"].startswith("device-independent estimate")
    header = next(line for line in render_markdown(rows).splitlines() if line.startswith("| stage |"))
    assert "mem train MB¹" in header and "mem infer MB |" in header  # a note shared by the column: on its header
    assert "lsp" not in rows[4]["delta"].get("metrics", {})


def test_compute_delta_zero_baseline_has_no_percent():
    d = compute_delta({"macs": 5, "metrics": {}}, {"macs": 0, "metrics": {}})
    assert d["macs"] == {"abs": 5, "pct": None, "better": False}


def test_missing_values_show_a_dash_and_a_footnote(runs):
    rows = collect_rows(runs_dir=runs["dir"])
    assert rows[1]["notes"]["3dpw_mpjpe_mm"] == "not evaluated"
    md = render_markdown(rows)
    p1_line = next(line for line in md.splitlines() if line.startswith("| P1 |"))
    cells = [c.strip() for c in p1_line.strip("|").split("|")]
    assert sum(c.startswith("–") for c in cells) == 13  # every metric column of the pruned model
    mark = cells[-1][1:]
    assert mark and f"- {mark} not evaluated" in md
    p2ft_line = next(line for line in md.splitlines() if line.startswith("| P2+FT(8) |"))
    assert p2ft_line.rstrip(" |").endswith("–" + mark)  # LSP parts F1 not evaluated for P2+FT(8)
    table = report.render_table(rows, width=120, color=False)
    assert "–" in table and "not evaluated" in table
    # Columns nobody has are dropped, and the footer says which and why.
    header = next(line for line in md.splitlines() if line.startswith("| stage |"))
    assert "3DPW PVE" in header and "MPI-INF-3DHP PVE" not in header and "GPU ms b1" not in header
    assert "MPI-INF-3DHP PVE" in md
    if not torch.cuda.is_available():
        assert "not shown (no CUDA): GPU ms b1" in md


def test_table_colours_only_direction(runs):
    rows = collect_rows(runs_dir=runs["dir"])
    text = report.render_table(rows, width=400, color=True)
    assert "\x1b[32m" in text and "\x1b[31m" in text  # green better, red worse
    plain = report.render_table(rows, width=400, color=False)
    assert "\x1b[" not in plain
    assert "−10.0 (−10.0%)" in plain  # 3DPW MPJPE of P1+FT(20)


def test_csv_has_units_and_the_same_numbers(runs):
    rows = collect_rows(runs_dir=runs["dir"])
    lines = list(csv.DictReader(io.StringIO(render_csv(rows))))
    header = list(lines[0])
    for key in ("params", "macs_g", "latency_ms", "infer_mem_mb", "train_mem_mb", "3dpw_mpjpe_mm",
                "3dpw_pa_mpjpe_mm", "mpi_inf_3dhp_mpjpe_mm", "h36m_p1_pa_mpjpe_mm", "h36m_p2_mpjpe_mm",
                "lsp_fb_acc_pct", "lsp_fb_f1", "lsp_parts_acc_pct", "lsp_parts_f1", "3dpw_mpjpe_mm_delta",
                "3dpw_mpjpe_mm_delta_pct"):
        assert key in header
    ft1 = lines[2]
    assert ft1["stage"] == "P1+FT(20)"
    assert int(ft1["params"]) == 800 and float(ft1["macs_g"]) == pytest.approx(1.5)
    assert float(ft1["3dpw_mpjpe_mm"]) == 90.0 and float(ft1["3dpw_mpjpe_mm_delta"]) == -10.0
    assert float(ft1["3dpw_mpjpe_mm_delta_pct"]) == -10.0
    assert lines[1]["3dpw_mpjpe_mm"] == ""  # not evaluated -> empty, not zero


def test_explicit_run_and_baseline(runs):
    rows = collect_rows([runs["dir"] / "p1"], runs_dir=runs["dir"])
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(20)"]
    rows = collect_rows([runs["p2"]], runs_dir=runs["dir"])  # a checkpoint file: it and its ancestors
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(20)", "P2"]
    assert [r["stage"] for r in collect_rows(["latest"], runs_dir=runs["dir"])][-1] == "P2+FT(8)"
    # Against P1+FT(20) as the baseline: its own row is the reference, P2+FT(8) is compared with it.
    rows = collect_rows(["p2"], baseline=runs["ft1"], runs_dir=runs["dir"])
    assert rows[0]["checkpoint"] == str(runs["ft1"].resolve()) and rows[0]["stage"] == "baseline"
    ft2 = next(r for r in rows if r["stage"] == "P2+FT(8)")
    assert ft2["delta"]["metrics"]["3dpw"]["mpjpe_mm"]["abs"] == pytest.approx(5.0)
    assert ft2["baseline"] == str(runs["ft1"].resolve())


def test_missing_parent_and_sample_mismatch_are_footnoted(tmp_path, monkeypatch):
    import compress.profile

    monkeypatch.setattr(compress.profile, "profile_checkpoint", lambda *a, **k: (_ for _ in ()).throw(OSError("x")))
    r = tmp_path / "runs"
    gone = tmp_path / "elsewhere" / "trained.pt"
    p1 = _save(r / "p1" / "pruned.pt", parent=gone, metrics={"3dpw": {"n": 5, "mpjpe_mm": 1.0, "pa_mpjpe_mm": 1.0}},
               profile=_profile(10, 10, 1.0, 1.0, 1.0))
    rows = collect_rows(runs_dir=r)
    assert [row["stage"] for row in rows] == ["baseline", "P1"] and rows[0]["checkpoint"] is None
    assert rows[0]["notes"]["row"] == f"baseline checkpoint {gone} not found"
    assert rows[1]["notes"]["row"].startswith("parent checkpoint") and rows[1]["delta"] == {}
    # a mismatch of sample counts is flagged next to the numbers it affects
    base = _save(r / "base" / "trained.pt", parent=None,
                 metrics={"3dpw": {"n": 7, "mpjpe_mm": 2.0, "pa_mpjpe_mm": 2.0}}, profile=_profile(20, 20, 2, 2, 2))
    _save(p1, parent=base, metrics={"3dpw": {"n": 5, "mpjpe_mm": 1.0, "pa_mpjpe_mm": 1.0}},
          profile=_profile(10, 10, 1.0, 1.0, 1.0))
    rows = collect_rows(["p1"], runs_dir=r)
    assert rows[1]["notes"]["3dpw_mpjpe_mm"] == "3DPW: 5 samples vs 7 for the baseline"
    # a checkpoint changed after profiling is profiled again (here: fails, and says so)
    p1.with_name("pruned.pt.profile.cpu.json").write_text("{}")
    rows = collect_rows(["p1"], runs_dir=r)
    assert rows[1]["params_total"] is None and rows[1]["notes"]["params"].startswith("not profiled (OSError")


def test_stale_cache_or_retime_calls_the_profiler(runs, monkeypatch):
    import compress.profile

    calls = []

    def fake_profile(path, *, device="cpu", retime=False, **kwargs):
        calls.append((Path(path).name, retime))
        return _profile(1, 1, 1.0, 1.0, 1.0)

    monkeypatch.setattr(compress.profile, "profile_checkpoint", fake_profile)
    collect_rows(["base"], runs_dir=runs["dir"], retime=True)
    assert calls == [("trained.pt", True)]


def test_run_report_md_writes_report_and_plots(runs, tmp_path):
    (runs["dir"] / "p1" / "log.jsonl").write_text(
        "\n".join(json.dumps({"step": s, "epoch": s // 10, "loss": 5.0 / (1 + s), "loss_keypoints": 1.0 / (1 + s)})
                  for s in range(0, 60, 3)) + "\n{half a line")
    plots = tmp_path / "plots"
    rows, out = run_report(fmt="md", plots=plots, runs_dir=runs["dir"])
    assert out == str(runs["dir"] / "report.md") and Path(out).read_text() == render_markdown(rows)
    files = sorted(p.name for p in plots.iterdir())
    assert files == ["curve_p1.png", "latency.png", "params_vs_pa_mpjpe.png"]  # no log.jsonl in p2: skipped
    for name in files:
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    _, text = run_report(fmt="json", runs_dir=runs["dir"])
    assert json.loads(text)[0]["stage"] == "baseline"


def test_training_curve_reads_the_training_loop_log(tmp_path):
    """Our loop logs kind=step records with "total" and the terms, plus kind=epoch means (not plotted)."""
    def step(s, total, kp2d):
        return json.dumps({"phase": "finetune", "kind": "step", "epoch": 1, "step": s, "kp2d": kp2d, "total": total,
                           "lr": 5e-5, "images_per_s": 99.0})

    log = tmp_path / "log.jsonl"
    log.write_text("\n".join([step(0, 3.0, 1.0), step(5, 2.0, 0.5),
                              json.dumps({"kind": "epoch", "epoch": 1, "step": 5, "total": 2.5}),
                              step(5, 1.9, 0.4),  # the step again after a resume: the last value counts
                              step(10, 1.0, 0.25), "not json", '{"kind": "step", "step": 1']) + "\n")
    series = report.training_curve(report.read_log(log))
    assert set(series) == {"loss", "kp2d"}
    assert series["loss"] == ([0, 5, 10], [3.0, 1.9, 1.0])
    assert series["kp2d"] == ([0, 5, 10], [1.0, 0.4, 0.25])
    other = report.training_curve([{"step": 1, "loss": 3.0, "losses": {"pose": 1.0}}])
    assert other == {"loss": ([1], [3.0]), "pose": ([1], [1.0])}


def test_pareto_front():
    pts = [(1.0, 80.0), (2.0, 70.0), (3.0, 75.0), (0.5, 90.0), (2.0, 72.0)]
    assert pareto_front(pts) == [3, 0, 1]


def test_no_runs_is_a_user_error(tmp_path):
    from compress.errors import UserError

    with pytest.raises(UserError, match="no runs under"):
        collect_rows(runs_dir=tmp_path / "runs")
    with pytest.raises(UserError, match="unknown report format"):
        run_report(fmt="xml", runs_dir=tmp_path)
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="no CUDA"):
            collect_rows(runs_dir=tmp_path, device="cuda")


def test_real_checkpoints_profiled_once_then_read_from_the_cache(tmp_path, monkeypatch):
    """End to end with save_checkpoint and the real profiler; the second report times nothing."""
    import compress.profile
    from compress.checkpoint import save_checkpoint
    from compress.models import create_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    # The measured peak runs in a fresh process (seconds); its stand-in keeps this test fast.
    monkeypatch.setattr(compress.profile, "measured_peak_memory_mb", lambda *a, train, **k: 20.0 if train else 10.0)
    r = tmp_path / "runs"
    model = create_model("hmr_tiny", img_res=32)
    base = save_checkpoint(model, r / "base" / "trained.pt", metrics={"3dpw": BASE_METRICS["3dpw"]})
    model.fc1 = torch.nn.Linear(model.fc1.in_features, 48)  # a regressor pruned by hand: hidden 64 -> 48
    for head in ("decpose", "decshape", "deccam"):
        setattr(model, head, torch.nn.Linear(48, getattr(model, head).out_features))
    model.fc2 = torch.nn.Linear(48, 48) if getattr(model, "fc2", None) is not None else None
    save_checkpoint(model, r / "p1" / "pruned.pt", parent=str(base))
    first = json.loads(run_report(fmt="json", runs_dir=r)[1])
    assert [row["stage"] for row in first] == ["baseline", "P1"]
    assert first[1]["params_total"] < first[0]["params_total"] and first[1]["delta"]["params_total"]["better"]
    for row in first:
        cache = json.loads(Path(row["checkpoint"] + ".profile.cpu.json").read_text())["profile"]
        assert row["macs"] == cache["macs"] and row["latency_ms"] == cache["latency"]["b1"]["median_ms"]
    monkeypatch.setattr(compress.profile, "profile_checkpoint", lambda *a, **k: pytest.fail("re-timed"))
    assert json.loads(run_report(fmt="json", runs_dir=r)[1]) == first
    # The optional onnxruntime column: exported, timed once, then cached beside the checkpoint.
    rows = collect_rows(runs_dir=r, onnx=True)
    assert all(row["onnx_latency_ms"] > 0 for row in rows) and "onnx_latency_ms" in rows[1]["delta"]
    assert Path(rows[1]["checkpoint"] + ".onnx-latency.json").is_file()
    assert collect_rows(runs_dir=r, onnx=True)[1]["onnx_latency_ms"] == rows[1]["onnx_latency_ms"]


def test_onnx_runtime_cuda_column(runs, monkeypatch):
    """On a CUDA machine whose onnxruntime has the CUDA provider, each row gets ONNX Runtime's CUDA latency (batch 1),
    timed once and cached; without the provider the column is hidden with the reason (install onnxruntime-gpu)."""
    import contextlib

    import onnxruntime as ort

    from compress import export
    from compress.report import costs

    timed = []

    def fake_latency(path, *, img_res, batch=1, device=torch.device("cpu"), **kwargs):
        timed.append(device.type)
        return {"median_ms": 1.5 if device.type == "cuda" else 7.0, "p10_ms": 1.0, "p90_ms": 2.0}

    monkeypatch.setattr(costs, "_export_for_timing", lambda *a: contextlib.nullcontext(("model.onnx", 64)))
    monkeypatch.setattr(export, "onnx_latency", fake_latency)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(costs, "_gpu_latency", lambda *a, **k: (None, "not profiled"))
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    rows = collect_rows(runs_dir=runs["dir"], onnx=True)
    assert timed == ["cpu"] * 10 and all(r["onnx_cuda_latency_ms"] is None for r in rows)
    assert rows[1]["notes"]["onnx_cuda_latency_ms"] == "onnxruntime has no CUDA provider; pip install onnxruntime-gpu"
    assert "ORT CUDA ms b1" in render_markdown(rows).split("not shown (onnxruntime has no CUDA provider")[1]

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    timed.clear()
    rows = collect_rows(runs_dir=runs["dir"], onnx=True)
    assert timed == ["cuda"] * 5  # the CPU figures came from their cache
    assert [r["onnx_cuda_latency_ms"] for r in rows] == [1.5] * 5 and "ORT CUDA ms b1" in render_markdown(rows)
    assert rows[1]["delta"]["onnx_cuda_latency_ms"]["abs"] == 0.0
    assert [r["onnx_cuda_latency_ms"] for r in collect_rows(runs_dir=runs["dir"], onnx=True)] == [1.5] * 5
    assert timed == ["cuda"] * 5  # cached beside each checkpoint


def test_cli_report(runs, capsys):
    from compress.cli import main

    assert main(["report", "--runs-dir", str(runs["dir"]), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(20)", "P2", "P2+FT(8)"]
    assert main(["report", "p1", "--runs-dir", str(runs["dir"]), "--format", "csv"]) == 0
    assert capsys.readouterr().out.startswith("run,stage,model,checkpoint,parent,params,")
    assert main(["report", "missing", "--runs-dir", str(runs["dir"])]) == 2
    assert "no run or checkpoint at missing" in capsys.readouterr().err


def test_a_trained_baseline_starts_the_chain_even_with_a_parent(tmp_path, monkeypatch):
    import compress.profile

    monkeypatch.setattr(compress.profile, "profile_checkpoint", lambda *a, **k: pytest.fail("re-timed"))
    r = tmp_path / "runs"
    init = _save(tmp_path / "checkpoints" / "init.pt", parent=None, metrics=None, profile=_profile(9, 9, 9, 9, 9))
    base = _save(r / "base" / "trained.pt", parent=init, metrics=BASE_METRICS, stage="trained",
                 profile=_profile(1000, 10, 1.0, 1.0, 1.0))
    _save(r / "p1" / "pruned.pt", parent=base, metrics=FT1_METRICS, profile=_profile(800, 8, 1.0, 1.0, 1.0))
    rows = collect_rows(["p1"], runs_dir=r)
    assert [(row["stage"], row["run"]) for row in rows] == [("baseline", "base"), ("P1", "p1")]
    assert rows[1]["delta"]["params_total"]["pct"] == -20.0


def test_noisy_timing_is_flagged():
    notes = {}
    noise_notes({"b1": {"median_ms": 10.0, "p10_ms": 9.0, "p90_ms": 13.0},
                 "b32": {"median_ms": 100.0, "p10_ms": 95.0, "p90_ms": 110.0}}, notes)
    assert set(notes) == {"latency_ms"} and notes["latency_ms"].startswith("noisy timing")


def test_interleave_times_all_rows_together(runs, monkeypatch):
    import compress.profile

    calls = []

    def fake_interleaved(models, *, img_res, batch_size, device="cpu", **kw):
        calls.append((sorted(Path(k).parent.name + "/" + Path(k).name for k in models), img_res, batch_size))
        return {k: {"median_ms": 100.0 / (i + 1) * batch_size, "p10_ms": 1.0, "p90_ms": 2.0, "repeats": 15}
                for i, k in enumerate(models)}

    monkeypatch.setattr(compress.profile, "interleaved_latency", fake_interleaved)
    monkeypatch.setattr(compress.profile, "load_any", lambda path, **kwargs: (object(), {}))
    rows = collect_rows(runs_dir=runs["dir"], interleave=True)
    assert [c[1:] for c in calls] == [(64, 1), (64, 32)] and len(calls[0][0]) == 5  # one timing of all five
    assert [r["latency_ms"] for r in rows] == [100.0, 50.0, 100.0 / 3, 25.0, 20.0]
    assert rows[1]["latency_b32_ms"] == 50.0 * 32 and rows[1]["latency"]["method"] == "interleaved"
    assert rows[1]["delta"]["latency_ms"] == {"abs": -50.0, "pct": -50.0, "better": True}
    assert "all rows timed in alternation" in render_markdown(rows)


def test_a_different_profiling_resolution_is_footnoted(runs):
    cache = runs["p1"].with_name("pruned.pt.profile.cpu.json")
    data = json.loads(cache.read_text())
    data["profile"]["img_res"] = 224
    cache.write_text(json.dumps(data))
    rows = collect_rows(["p1"], runs_dir=runs["dir"])
    assert rows[1]["notes"]["macs_g"] == "profiled at 224 px, the baseline at 64 px"
    assert "params" not in rows[1]["notes"] and "macs_g" not in rows[2]["notes"]


def test_speedups_next_to_the_macs_reduction(runs):
    rows = collect_rows(runs_dir=runs["dir"])
    assert rows[0]["ratio"] == {k: 1.0 for k in rows[0]["ratio"]} and rows[0]["ratio"]
    p2 = rows[3]["ratio"]
    assert p2["macs"] == 2.0 and p2["params"] == pytest.approx(1000 / 600)
    assert p2["latency_b1"] == pytest.approx(10.0 / 6.0) and p2["latency_b32"] == pytest.approx(200.0 / 120.0)
    md = render_markdown(rows)
    assert "| P2 | p2 | 1.67x | 2.00x | 1.67x | 1.67x | 1.60x | 1.00x |" in md


def test_an_unreadable_checkpoint_is_one_clear_error(tmp_path):
    from compress.errors import UserError

    bad = tmp_path / "runs" / "p1" / "pruned.pt"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="cannot read checkpoint .*pruned.pt"):
        collect_rows(runs_dir=tmp_path / "runs")


def test_moved_runs_still_find_their_parents(runs, tmp_path):
    """Parents recorded as absolute paths of the old location are found by their <run>/<file> tail."""
    import shutil

    moved = tmp_path / "elsewhere" / "runs"
    shutil.copytree(runs["dir"], moved, symlinks=True)
    shutil.rmtree(runs["dir"])
    rows = collect_rows(["p2"], runs_dir=moved)
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(20)", "P2", "P2+FT(8)"]
    assert all(r["checkpoint"].startswith(str(moved.resolve())) for r in rows)


def test_pruned_from_a_fresh_model_compares_with_its_prune_summary(tmp_path, monkeypatch):
    import compress.profile

    monkeypatch.setattr(compress.profile, "profile_checkpoint", lambda *a, **k: pytest.fail("re-timed"))
    r = tmp_path / "runs"
    before = {"params_total": 1000, "params_encoder": 700, "params_regressor": 300, "macs": 2_000_000_000}
    p1 = _save(r / "smoke" / "pruned.pt", parent=None, metrics=None, stage="pruned",
               prune={"before": before, "after": {}}, profile=_profile(800, 1_500_000_000, 8.0, 30.0, 150.0))
    _save(r / "smoke" / "finetuned.pt", parent=p1, metrics=FT1_METRICS, stage="FT(1)",
          profile=_profile(800, 1_500_000_000, 8.0, 30.0, 150.0))
    rows = collect_rows(runs_dir=r)
    assert [row["stage"] for row in rows] == ["baseline", "P1", "P1+FT(1)"]
    base = rows[0]
    assert base["checkpoint"] is None and base["params_total"] == 1000 and base["latency_ms"] is None
    assert "freshly initialised" in base["notes"]["row"]
    assert rows[1]["delta"]["params_total"] == {"abs": -200, "pct": -20.0, "better": True}
    assert rows[1]["delta"]["macs"]["pct"] == -25.0 and "latency_ms" not in rows[1]["delta"]
    md = render_markdown(rows)
    assert "no baseline checkpoint to measure" in md and "freshly initialised" in md
    assert "freshly initialised" in report.render_table(rows, color=False)
    assert report.make_plots(rows, tmp_path / "plots")  # the latency bars still draw, without a reference


def test_two_baselines_two_groups(tmp_path, monkeypatch):
    import compress.profile

    monkeypatch.setattr(compress.profile, "profile_checkpoint", lambda *a, **k: pytest.fail("re-timed"))
    r = tmp_path / "runs"
    a = _save(r / "a_base" / "trained.pt", parent=None, metrics=BASE_METRICS, profile=_profile(1000, 10, 1.0, 1, 1))
    b = _save(r / "b_base" / "trained.pt", parent=None, metrics=BASE_METRICS, profile=_profile(4000, 40, 4.0, 4, 4))
    _save(r / "a_p1" / "pruned.pt", parent=a, metrics=None, profile=_profile(500, 5, 0.5, 1, 1))
    _save(r / "b_p1" / "pruned.pt", parent=b, metrics=None, profile=_profile(1000, 10, 1.0, 4, 4))
    rows = collect_rows(["b_p1", "a_p1"], runs_dir=r)
    assert [(row["run"], row["stage"]) for row in rows] == [("b_base", "baseline"), ("b_p1", "P1"),
                                                            ("a_base", "baseline"), ("a_p1", "P1")]
    assert rows[1]["delta"]["params_total"]["pct"] == -75.0 and rows[3]["delta"]["params_total"]["pct"] == -50.0
    assert rows[1]["baseline"] == str(b.resolve()) and rows[3]["ratio"]["macs"] == 2.0
    assert render_markdown(rows).count("- baseline: ") == 2


def test_json_is_strict_even_with_a_nan_metric(runs):
    rows = collect_rows(["p1"], runs_dir=runs["dir"])
    rows[2]["metrics"]["3dpw"]["pve_mm"] = float("nan")
    assert json.loads(report.render_json(rows))[2]["metrics"]["3dpw"]["pve_mm"] is None


def test_training_curve_falls_back_to_epoch_means(tmp_path):
    records = [{"kind": "epoch", "epoch": e, "step": 3 * e, "total": 10.0 / e, "kp2d": 1.0 / e, "time_s": 5.0}
               for e in (1, 2, 3)]
    series = report.training_curve(records)
    assert series["loss"] == ([3, 6, 9], [10.0, 5.0, 10.0 / 3]) and set(series) == {"loss", "kp2d"}


def test_print_table_on_a_console(runs):
    from rich.console import Console

    console = Console(record=True, width=300, highlight=False)
    report.print_table(collect_rows(runs_dir=runs["dir"]), console=console)
    text = console.export_text()
    assert "P2+FT(8)" in text and "−10.0 (−10.0%)" in text and "not evaluated" in text


def test_deltas_within_the_baselines_noise_band_are_marked_not_coloured(runs):
    # FT(20) vs baseline: 3DPW MPJPE -10 mm, PA +6 mm; MPI-INF-3DHP MPJPE +11 mm. Band: sd 4 mm (2 sd = 8 mm).
    noise = {"stage": "P1+FT(20)+KD", "n": 3, "sd": {"3dpw": {"mpjpe_mm": 4.0, "pa_mpjpe_mm": 4.0},
                                                      "mpi-inf-3dhp": {"mpjpe_mm": 4.0}}}
    runs["base"].with_suffix(".json").write_text(json.dumps({"noise": noise}))
    rows = collect_rows(runs=None, runs_dir=runs["dir"])
    ft = next(r for r in rows if r["stage"] == "P1+FT(20)")
    d = ft["delta"]["metrics"]
    assert d["3dpw"]["pa_mpjpe_mm"]["within_noise"] and d["3dpw"]["pa_mpjpe_mm"]["better"] is None
    assert "within_noise" not in d["3dpw"]["mpjpe_mm"] and d["3dpw"]["mpjpe_mm"]["better"] is True  # -10 > 8
    assert "within_noise" not in d["mpi-inf-3dhp"]["mpjpe_mm"]  # +11 mm: beyond the band
    assert "within_noise" not in d["h36m-p1"]["pa_mpjpe_mm"]  # no band for this metric: not judged
    assert "within the noise: below 2 sd of the metric over 3 fine-tuning seeds" in render_markdown(rows)


def test_kd_table_pairs_the_same_stage_from_the_same_pruned_model():
    from compress.report.noise import kd_table

    def row(stage, parent, pa, noise=None):
        return {"stage": stage, "parent": parent, "noise": noise,
                "metrics": {"3dpw": {"pa_mpjpe_mm": pa}, "h36m-p1": {"pa_mpjpe_mm": pa + 10}}}

    band = {"sd": {"3dpw": {"pa_mpjpe_mm": 1.0}, "h36m-p1": {"pa_mpjpe_mm": 5.0}}}
    rows = [row("P1+FT(20)+KD", "p1/pruned.pt", 70.0, band), row("P1+FT(20)", "p1/pruned.pt", 74.0),
            row("P2+FT(8)+KD", "p2/pruned.pt", 80.0), row("P2+FT(8)", "elsewhere/pruned.pt", 70.0)]
    head, body = kd_table(rows)
    assert head == ["stage", "3DPW", "MPI-INF", "H36M-P1", "H36M-P2", "mean"]
    # -4 mm on both sets: beyond 2 sd (2 mm) on 3DPW, within it (10 mm) on H36M-P1; P2 has no pair
    assert body == [["P1+FT(20)+KD vs P1+FT(20)", "−4.0", "-", "−4.0 ≈", "-", "−4.0"]]
