"""The shipped reference model: its file matches its card, it loads as fp32 and has learned more than the mean pose,
and the MobileNetV2 recipes start from it when no baseline run exists."""
import json
import shutil
from pathlib import Path

import pytest
import torch

from compress.checkpoint import load_checkpoint, read_checkpoint_file
from compress.cli import main
from compress.errors import UserError
from compress.eval.protocols import evaluate
from compress.eval.reference import reference_model
from compress.shipped import REFERENCE, REPO, load_prune_recipe, read_card, save_half, sha256

SETS = ["3dpw", "mpi-inf-3dhp", "h36m-p1"]


def test_reference_file_matches_its_card():
    card = read_card(REFERENCE)
    assert card["file"] == REFERENCE.name and card["bytes"] == REFERENCE.stat().st_size
    assert sha256(REFERENCE) == card["sha256"]
    assert REFERENCE.stat().st_size <= 12 * 2**20  # fits the repository's budget
    assert REFERENCE.with_suffix(".md").read_text().count(card["sha256"]) == 1  # the card for people agrees


def test_reference_loads_as_fp32_with_its_recorded_metrics():
    raw = read_checkpoint_file(REFERENCE)
    assert {v.dtype for v in raw["state_dict"].values() if v.is_floating_point()} == {torch.float16}
    model, meta = load_checkpoint(REFERENCE)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert meta["model"]["name"] == "hmr_mobilenet_v2" and meta["parent"] is None
    assert meta["metrics"] == read_card(REFERENCE)["metrics"]


def _pooled_pa(metrics: dict) -> float:
    return sum(metrics[d]["pa_mpjpe_mm"] * metrics[d]["n"] for d in SETS) / sum(metrics[d]["n"] for d in SETS)


@pytest.mark.slow
def test_reference_beats_the_mean_pose_on_a_small_root(synth_root):
    model, _ = load_checkpoint(REFERENCE)
    ours = evaluate(model, synth_root, datasets=SETS, img_res=64)
    mean = evaluate(reference_model("mean", synth_root, img_res=64), synth_root, datasets=SETS)
    assert _pooled_pa(ours) < 0.95 * _pooled_pa(mean)  # measured: 0.89 (83.0 vs 93.3 mm, 16 crops)


def test_info_describes_the_reference(capsys):
    assert main(["info", str(REFERENCE), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == 4_906_909


def test_card_of_a_model_trained_in_stages_names_each(tmp_path, tiny_model):
    from compress.checkpoint import save_checkpoint
    from compress.shipped import card_summary, training_stages, write_card

    default = {"path": "data/synthetic", "size": "default", "seed": 0}
    large = {"path": "data/synthetic_large", "size": "large", "seed": 0}
    stages = [{"steps": 8600, "wall_s": 360, "machine": "H200", "data": default, "settings": ["model.img_res=64"]},
              {"steps": 28_000, "wall_s": 6600, "machine": "x86_64, 2 threads", "data": default, "settings": []},
              {"steps": 20_000, "wall_s": 4800, "machine": "x86_64, 2 threads", "data": large, "settings": []}]
    path = save_checkpoint(tiny_model, tmp_path / "candidate.pt")
    write_card(path, {"stages": stages, "data_root": large, "metrics": {}, "ratios": {}})
    summary = card_summary(path)
    assert summary["trained"] == ("56,600 steps: 8,600 in 6 min on H200, then 28,000 in 110 min on x86_64, 2 threads, "
                                  "then 20,000 in 80 min on x86_64, 2 threads")
    assert summary["data"] == ("data/synthetic (default synthetic root, seed 0), then data/synthetic_large (large "
                               "synthetic root, seed 0)")
    assert "matches the file" in summary["sha256"] and "card" not in summary  # no .md beside it
    assert card_summary(REFERENCE)["card"].endswith("mbv2_reference.md")
    one = {"train_settings": ["model.img_res=64"], "data_root": default, "steps": 8600, "wall_s": 360,
           "machine": "H200"}
    assert training_stages(one) == [{**stages[0], "command": None}]  # a card of one stage, the older format


def test_save_half_halves_the_file_and_keeps_the_model(tmp_path, tiny_model):
    from compress.checkpoint import save_checkpoint

    full = save_checkpoint(tiny_model, tmp_path / "full.pt", parent="runs/x/trained.pt")
    half = save_half(full, tmp_path / "half.pt", metrics={"3dpw": {"mpjpe_mm": 1.0}})
    assert half.stat().st_size < 0.6 * full.stat().st_size
    model, meta = load_checkpoint(half)
    assert meta["parent"] is None and meta["metrics"] == {"3dpw": {"mpjpe_mm": 1.0}}
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = tiny_model(x)["rotmat"], model(x)["rotmat"]
    assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-2)  # fp16 rounding, nothing else


# ----------------------------------------------------------------------------------------------- fallback


def test_mbv2_p1_falls_back_to_the_reference_with_its_settings(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no runs/mbv2_baseline here
    recipe, start = load_prune_recipe(REPO / "recipes" / "mbv2_p1.yaml", [])
    assert Path(recipe.prune.from_) == REFERENCE and start.missing == "runs/mbv2_baseline"
    assert recipe.model.img_res == 64 and recipe.finetune.pose == 10 and recipe.finetune.distill.rotmat == 100
    assert "shipped reference model" in start.note() and "runs/mbv2_baseline not found" in start.note()
    recipe, _ = load_prune_recipe(REPO / "recipes" / "mbv2_p1.yaml", ["model.img_res=96"])
    assert recipe.model.img_res == 96  # the command line wins over the card


def test_an_existing_baseline_is_not_replaced(tmp_path, monkeypatch, tiny_model):
    from compress.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    save_checkpoint(tiny_model, tmp_path / "runs" / "mbv2_baseline" / "trained.pt", stage="trained")
    recipe, start = load_prune_recipe(REPO / "recipes" / "mbv2_p1.yaml", [])
    assert start is None and recipe.prune.from_ == "runs/mbv2_baseline" and recipe.model.img_res == 224


def test_a_descendant_of_the_reference_takes_its_settings(tmp_path, monkeypatch):
    from compress.checkpoint import save_checkpoint

    monkeypatch.chdir(tmp_path)
    model, _ = load_checkpoint(REFERENCE)
    save_checkpoint(model, tmp_path / "runs" / "mbv2_p1" / "finetuned.pt", parent=str(REFERENCE), stage="P1+FT(20)")
    recipe, start = load_prune_recipe(REPO / "recipes" / "mbv2_p2.yaml", [])
    assert recipe.prune.from_ == "runs/mbv2_p1" and recipe.model.img_res == 64
    assert start.missing == "" and "chain root" in start.note()


def test_missing_fallback_names_both_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model: {name: hmr_mobilenet_v2}\nprune: {from: runs/none, fallback: checkpoints/gone.pt}\n")
    with pytest.raises(UserError, match="runs/none.*checkpoints/gone.pt"):
        load_prune_recipe(recipe, [])


# ----------------------------------------------------------------------------------------------- default root


def test_default_root_is_generated_on_first_use_only(tmp_path, monkeypatch, synth_root, capsys):
    import compress.data.synthetic as synthetic

    made = []

    def fake_generate(root, **kw):  # the real one takes minutes: copy the small root instead
        made.append(kw["size"])
        shutil.copytree(synth_root, root)
        return Path(root)

    monkeypatch.setattr(synthetic, "generate_root", fake_generate)
    monkeypatch.chdir(tmp_path)
    assert main(["eval", "--reference", "mean", "--datasets", "3dpw", "--json"]) == 0
    assert made == ["default"] and (tmp_path / "data" / "synthetic" / "synthetic.json").is_file()
    assert main(["eval", "--reference", "mean", "--datasets", "3dpw", "--json"]) == 0
    assert made == ["default"]  # present now: not generated again
    capsys.readouterr()
    assert main(["eval", "--reference", "mean", "--data", "elsewhere", "--datasets", "3dpw"]) == 2
    assert "elsewhere" in capsys.readouterr().err and made == ["default"]  # an explicit root is never generated


def test_default_root_missing_rules(tmp_path, monkeypatch):
    from compress.data.synthetic import default_root_missing

    monkeypatch.chdir(tmp_path)
    assert default_root_missing("data/synthetic") and not default_root_missing("data/other")
    (tmp_path / "data" / "synthetic").mkdir(parents=True)
    assert default_root_missing("data/synthetic")  # empty
    (tmp_path / "data" / "synthetic" / "synthetic.json").write_text('{"complete": false}')
    assert default_root_missing("data/synthetic")  # interrupted
    (tmp_path / "data" / "synthetic" / "synthetic.json").unlink()
    (tmp_path / "data" / "synthetic" / "imgs").mkdir()
    assert not default_root_missing("data/synthetic")  # someone else's folder: never written over


@pytest.mark.slow
def test_the_studys_three_commands_work_on_a_fresh_clone(tmp_path, monkeypatch, synth_root, capsys):
    """prune -> finetune -> report from a directory with no runs and no data root: the shipped model and a
    generated default root (copied from the small one here; the real generation takes about 2 minutes)."""
    import compress.data.synthetic as synthetic

    monkeypatch.setattr(synthetic, "generate_root", lambda root, **kw: shutil.copytree(synth_root, root))
    monkeypatch.chdir(tmp_path)
    recipe = str(REPO / "recipes" / "mbv2_p1.yaml")
    assert main(["prune", recipe, "--set", "finetune.batch_size=4"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps at the console's width
    assert "shipped reference model" in out and "runs/mbv2_baseline not found" in out
    assert main(["finetune", "--epochs", "1", "--set", "finetune.steps_per_epoch=2"]) == 0
    capsys.readouterr()
    assert main(["report", "--json", "--no-onnx-latency"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["stage"] for r in rows] == ["baseline", "P1", "P1+FT(1)+KD"]
    assert Path(rows[0]["checkpoint"]) == REFERENCE and rows[0]["img_res"] == 64
    assert rows[2]["params_total"] < 0.7 * rows[0]["params_total"] and rows[2]["metrics"]["3dpw"]["n"] == 4
