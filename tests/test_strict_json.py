"""Every JSON file that evaluation and sensitivity write is strict JSON: a NaN or infinite metric becomes null, never
a bare NaN/Infinity (which json.loads accepts by default but strict parsers, browsers and jq refuse)."""
from __future__ import annotations

import json
import math

import torch

from compress.checkpoint import save_checkpoint
from compress.models import create_model
from compress.recipe import DataSpec, EvalSpec, ModelSpec, Recipe

NAN, INF = float("nan"), float("inf")


def _strict(text: str):
    def refuse(constant):
        raise AssertionError(f"non-strict JSON constant {constant!r} in:\n{text[:2000]}")

    return json.loads(text, parse_constant=refuse)


def test_eval_summary_json_writes_null_for_nan(tmp_path):
    from compress.eval.protocols import _save

    results = {"h36m-p1": {"n": 2, "mpjpe_mm": NAN, "pa_mpjpe_mm": 51.5, "pve_mm": INF}}
    _save(tmp_path, "h36m-p1", {"mpjpe_mm": torch.tensor([NAN, 1.0]).numpy()}, results)
    data = _strict((tmp_path / "summary.json").read_text())
    assert data == {"h36m-p1": {"n": 2, "mpjpe_mm": None, "pa_mpjpe_mm": 51.5, "pve_mm": None}}


def test_evaluate_into_run_metrics_file_writes_null_for_nan(tmp_path, monkeypatch):
    from compress.eval import protocols
    from compress.runs import metrics_file

    monkeypatch.setattr(protocols, "evaluate_checkpoint",
                        lambda *a, **k: {"3dpw": {"n": 3, "mpjpe_mm": NAN, "pa_mpjpe_mm": -INF}})
    recipe = Recipe(name="nan", model=ModelSpec(name="hmr_tiny", img_res=32), data=DataSpec(root=str(tmp_path)),
                    eval=EvalSpec(datasets=["3dpw"], batch_size=2, subset=3, workers=0))
    ckpt = tmp_path / "run" / "pruned.pt"
    ckpt.parent.mkdir()
    results = protocols.evaluate_into_run(ckpt, recipe)
    assert math.isnan(results["3dpw"]["mpjpe_mm"])  # the caller still gets the float
    data = _strict(metrics_file(ckpt.parent, ckpt.name).read_text())
    assert data["metrics"] == {"3dpw": {"n": 3, "mpjpe_mm": None, "pa_mpjpe_mm": None}}


def test_sensitivity_json_writes_null_for_nan(tmp_path, monkeypatch):
    from compress import sensitivity

    calls = []

    def fake_evaluate(model, root, *, datasets, **kwargs):
        calls.append(1)  # the baseline is finite, every pruned model's error is NaN (a diverged model)
        value = 50.0 if len(calls) == 1 else NAN
        return {k: {"n": 2, "mpjpe_mm": value, "pa_mpjpe_mm": value} for k in datasets}

    monkeypatch.setattr(sensitivity, "evaluate", fake_evaluate)
    torch.manual_seed(0)
    ckpt = save_checkpoint(create_model("hmr_tiny", img_res=32), tmp_path / "tiny.pt")
    result = sensitivity.run_sensitivity(ckpt, root=tmp_path, ratios=(0.2,), subset=2, datasets=("h36m-p1",),
                                         units=["fc2"], out_dir=tmp_path / "sens")
    assert len(calls) == 2
    data = _strict((tmp_path / "sens" / sensitivity.JSON_NAME).read_text())
    row = next(r for r in data["rows"] if r["unit"] == "fc2")
    assert row["pa_mpjpe_mm"] is None and row["delta_pa_mpjpe_mm"] is None
    assert data["baseline"]["pa_mpjpe_mm"] == 50.0
    assert result["json"] == str(tmp_path / "sens" / sensitivity.JSON_NAME)
