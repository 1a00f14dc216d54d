"""The synthetic benchmark is learnable: a model fit for a few hundred steps beats the untrained one clearly
on the evaluation suite (issue 3's check; the evaluation sets are other samples than the training sets)."""
from pathlib import Path

import pytest
import torch

from compress.checkpoint import load_checkpoint
from compress.eval.protocols import evaluate
from compress.models import create_model
from compress.recipe import load_recipe
from compress.train import run_train

RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "mbv2_baseline.yaml"
SETS = ["3dpw", "h36m-p1", "mpi-inf-3dhp"]


@pytest.mark.slow
def test_a_few_hundred_steps_beat_the_untrained_model(tmp_path, synth_root):
    root = synth_root
    torch.manual_seed(0)
    # the same start as training: the regressor begins at the root's mean pose and shape (as SPIN)
    start = create_model("hmr_tiny", img_res=64, mean_params=str(root / "smpl_mean_params.npz"))
    untrained = evaluate(start, root, datasets=SETS, img_res=64, batch_size=8)
    recipe = load_recipe(RECIPE, [
        f"data.root={root}", "model.name=hmr_tiny", "model.img_res=64", "train.epochs=250", "train.batch_size=4",
        "train.lr=5e-4", "data.workers=0", "eval.workers=0", "train.checkpoint_every_epoch=false",
        f"eval.datasets=[{','.join(SETS)}]",
    ], env=False)
    run_train(recipe, out_dir=tmp_path / "run")
    trained, _ = load_checkpoint(tmp_path / "run" / "trained.pt")
    after = evaluate(trained, root, datasets=SETS, img_res=64, batch_size=8)
    for key in SETS:
        assert after[key]["mpjpe_mm"] < 0.85 * untrained[key]["mpjpe_mm"], (key, untrained[key], after[key])
        assert after[key]["pa_mpjpe_mm"] < untrained[key]["pa_mpjpe_mm"], (key, untrained[key], after[key])
