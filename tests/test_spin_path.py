"""The user's real path: SPIN's own checkpoint (`{'model': state_dict, 'optimizer': ...}`, no model name) through
prune, fine-tune (distilled from it), report and sensitivity, with the model name given once (the recipe's
model.name, where prune.from brings the file in) and never again."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from compress import profile as profiler
from compress.cli import main
from compress.models import create_model

RECIPES = Path(__file__).resolve().parent.parent / "recipes"
SPIN_PARAMS = 26_977_501  # SPIN's HMR (ResNet-50 + IEF regressor), DESIGN.md / seed_study.md


def _spin_file(path: Path) -> Path:
    """A checkpoint in SPIN's own layout: its 331 state_dict keys under 'model', an optimizer state, counters."""
    torch.manual_seed(0)
    model = create_model("hmr_resnet50", img_res=64)
    state = model.state_dict()
    assert len(state) == 331
    assert sum(p.numel() for p in model.parameters()) == SPIN_PARAMS
    optimizer = {"state": {}, "param_groups": [{"lr": 5e-5, "params": list(range(10))}]}
    torch.save({"model": state, "optimizer": optimizer, "epoch": 0, "batch_idx": 4500, "batch_size": 64,
                "total_step_count": 4500}, path)
    return path


@pytest.mark.slow
def test_spin_checkpoint_through_prune_finetune_report_sensitivity(synth_root, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(2)
    spin = _spin_file(tmp_path / "model_checkpoint.pt")
    small = ["--set", "model.img_res=64", "--set", "finetune.batch_size=4", "--set", "finetune.steps_per_epoch=2",
             "--set", "eval.subset=4", "--set", "eval.datasets=[3dpw]", "--set", "data.workers=0"]
    assert main(["prune", str(RECIPES / "resnet50_p1.yaml"), "--data", str(synth_root),
                 "--set", f"prune.from={spin}", *small]) == 0
    pruned = torch.load(tmp_path / "runs/resnet50_p1/pruned.pt", weights_only=True)
    assert pruned["parent"] == {"path": str(spin.resolve()),
                                "model": {"name": "hmr_resnet50", "overrides": {"img_res": 64}}}

    # No name again: the teacher is SPIN's file, loaded as the model the run recorded.
    assert main(["finetune", "--epochs", "1"]) == 0
    finetuned = torch.load(tmp_path / "runs/resnet50_p1/finetuned.pt", weights_only=True)
    assert finetuned["distill"] is True and finetuned["stage"] == "FT(1)"

    # SPIN's file records no metrics: `compress eval` on it (no name: the run recorded it) gives the baseline row its
    assert main(["eval", str(spin), "--data", str(synth_root), "--datasets", "3dpw", "--subset", "4",
                 "--device", "cpu"]) == 0

    # Profiling times ResNet-50 at batch 1 only, twice (batch 32 x 15 would take minutes on two cores); the memory
    # probe still runs in its own process, which must load SPIN's file by the recorded name too.
    real = profiler.profile_checkpoint
    monkeypatch.setattr(profiler, "profile_checkpoint", lambda *a, **k: real(*a, batch_sizes=(1,), repeats=2, **k))
    capsys.readouterr()
    assert main(["report", "--json", "--device", "cpu"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(1)+KD"]
    base = rows[0]
    assert base["checkpoint"] == str(spin.resolve()) and base["model"] == "hmr_resnet50"
    assert base["params_total"] == SPIN_PARAMS
    assert base["latency_ms"] > 0 and base["macs"] > 0  # profiled, not a "not profiled" note
    assert "params" not in base["notes"] and base["peak_mem_mb"]["train_measured"] > 0
    assert base["metrics"]["3dpw"]["n"] == 4 and base["metrics_source"]["3dpw"].endswith("summary.json")
    ft_delta = rows[2]["delta"]["metrics"]["3dpw"]["mpjpe_mm"]["abs"]
    assert ft_delta == pytest.approx(rows[2]["metrics"]["3dpw"]["mpjpe_mm"] - base["metrics"]["3dpw"]["mpjpe_mm"])
    assert rows[1]["params_total"] < SPIN_PARAMS
    assert rows[1]["delta"]["params_total"]["abs"] == rows[1]["params_total"] - SPIN_PARAMS

    # Sensitivity of SPIN's file itself: the name comes from the run that recorded it.
    out = tmp_path / "sens"
    assert main(["sensitivity", str(spin), "--data", str(synth_root), "--subset", "4", "--datasets", "3dpw",
                 "--ratios", "0.2", "--units", "fc1", "--device", "cpu", "--out", str(out), "--json"]) == 0
    result = json.loads((out / "sensitivity.json").read_text())
    assert result["model"] == "hmr_resnet50" and result["baseline"]["params_total"] == SPIN_PARAMS
    assert [r["unit"] for r in result["rows"]] == ["fc1"] and "error" not in result["rows"][0]


def test_a_foreign_file_without_a_record_still_asks_for_its_name(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    spin = _spin_file(tmp_path / "model_checkpoint.pt")
    assert main(["info", str(spin)]) == 2
    assert "does not say which model it holds" in capsys.readouterr().err
