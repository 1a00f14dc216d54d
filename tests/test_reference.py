"""Constant reference predictors: `mean` is exactly where a fresh model starts, and closer to the data than `rest`."""
import json

import pytest
import torch

from compress.cli import main
from compress.eval.protocols import evaluate
from compress.eval.reference import reference_model
from compress.models import create_model

SETS = ["3dpw", "h36m-p1", "mpi-inf-3dhp"]


@pytest.fixture
def root(synth_root):
    return synth_root


def test_mean_reference_equals_a_model_that_outputs_its_start(root):
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=64, mean_params=str(root / "smpl_mean_params.npz")).eval()
    for head in (model.decpose, model.decshape, model.deccam):  # zero updates: the IEF loop keeps the start
        torch.nn.init.zeros_(head.weight)
        torch.nn.init.zeros_(head.bias)
    start = evaluate(model, root, datasets=SETS, img_res=64)
    ref = evaluate(reference_model("mean", root), root, datasets=SETS, img_res=64)
    for key in SETS:
        assert ref[key]["pa_mpjpe_mm"] == pytest.approx(start[key]["pa_mpjpe_mm"], rel=1e-5)
        assert ref[key]["mpjpe_mm"] == pytest.approx(start[key]["mpjpe_mm"], rel=1e-5)
    rest = evaluate(reference_model("rest", root), root, datasets=SETS, img_res=64)
    for key in SETS:  # the data's mean pose is much nearer every sample than the T-pose
        assert ref[key]["pa_mpjpe_mm"] < 0.8 * rest[key]["pa_mpjpe_mm"]


def test_cli_reference_and_its_errors(root, tmp_path, capsys):
    assert main(["eval", "--reference", "mean", "--data", str(root), "--datasets", "3dpw", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["3dpw"]["pa_mpjpe_mm"] > 0
    assert main(["eval", "--data", str(root)]) == 2
    assert "needs a checkpoint or --reference" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["eval", "--reference", "mean", "--data", str(empty), "--datasets", "3dpw"]) == 2
    assert "smpl_mean_params.npz" in capsys.readouterr().err
