"""The CLI contract: JSON figures, exit code 2 with one line for user errors, no traceback."""
import json
import subprocess
import sys

import pytest

from compress.cli import main

STUDY_COUNTS = {  # seed_study.md, encoder_head=logits; SPIN's HMR and the seed head with their defaults
    ("hmr_resnet50", ()): 26_977_501,
    ("hmr_seed_mobilenet_v2", ()): 3_131_853,
    ("hmr_densenet169", ("encoder_head=logits",)): 16_545_797,
    ("hmr_densenet201", ("encoder_head=logits",)): 22_410_245,
    ("hmr_mobilenet_v2", ("encoder_head=logits",)): 5_901_189,
    ("hmr_mobilenet_v3_large", ("encoder_head=logits",)): 7_879_349,
    ("hmr_shufflenet_v2_x1_0", ("encoder_head=logits",)): 4_674_921,
}


@pytest.mark.parametrize("name,sets", list(STUDY_COUNTS))
def test_info_json_reproduces_study_counts(name, sets, capsys):
    # the seed head's Linear sizes follow the feature map, so its count is pinned at 224 px
    argv = ["info", name, "--json"] + (["--img-res", "64"] if name != "hmr_seed_mobilenet_v2" else [])
    for s in sets:
        argv += ["--set", s]
    assert main(argv) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["params_total"] == STUDY_COUNTS[(name, sets)]
    if sets == ("encoder_head=logits",):  # the whole classifier's 1000 logits feed SPIN's regressor
        assert info["params_regressor"] == _spin_regressor_params(1000)
        assert info["params_encoder"] == info["params_total"] - _spin_regressor_params(1000)
    assert info["macs"] > 0


def _spin_regressor_params(features: int) -> int:
    """SPIN's regressor, worked out by hand: fc1 (features + 157 -> 1024), fc2 (1024 -> 1024), and the three
    decoders (1024 -> 144 pose, 10 shape, 3 cam), all with biases."""
    return (features + 157) * 1024 + 1024 + 1024 * 1024 + 1024 + 1025 * (144 + 10 + 3)


def test_spin_regressor_formula_matches_spin():
    assert _spin_regressor_params(2048) == 3_469_469  # SPIN's HMR: 26,977,501 - 23,508,032 (ResNet-50 trunk)


def test_info_spin_split(capsys):
    assert main(["info", "hmr_resnet50", "--json", "--img-res", "64"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["params_encoder"], info["params_regressor"]) == (23_508_032, 3_469_469)


def test_unknown_model_is_one_line_exit_2(capsys):
    assert main(["info", "hmr_resnet5"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "hmr_resnet50" in err[0] and "Traceback" not in err[0]


def test_missing_checkpoint_and_recipe_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope.pt")]) == 2
    assert main(["prune", str(tmp_path / "nope.yaml")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("compress: error:") for line in lines)


def test_finetune_without_run_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["finetune"]) == 2
    assert "compress prune" in capsys.readouterr().err


def test_help_is_fast_and_imports_no_torch():
    code = "import sys; from compress.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
