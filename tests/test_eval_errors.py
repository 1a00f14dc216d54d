"""`compress eval` on a data root without evaluation files: exit code 2 and one line that names the missing files
and how to get them (not an empty table and exit 0)."""
from __future__ import annotations

import shutil

import pytest
import torch

from compress.checkpoint import save_checkpoint
from compress.cli import main
from compress.constants import EVAL_DATASETS, TRAIN_DATASETS
from compress.errors import UserError
from compress.models import create_model


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    return save_checkpoint(create_model("hmr_tiny", img_res=32), tmp_path / "ckpt" / "model.pt", stage="base")


def _one_error_line(capsys) -> str:
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, captured.err
    assert "Traceback" not in captured.err
    assert "MPJPE" not in captured.out  # no (empty) results table
    return err[0]


def test_eval_on_an_empty_root_is_a_user_error(tmp_path, checkpoint, capsys):
    root = tmp_path / "empty"
    root.mkdir()
    assert main(["eval", str(checkpoint), "--data", str(root)]) == 2
    line = _one_error_line(capsys)
    assert str(root / "dataset_extras" / "3dpw_test.npz") in line
    for stem in EVAL_DATASETS.values():
        assert f"{stem}.npz" in line
    assert f"compress data synth --out {root}" in line
    assert "docs/real-data.md" in line


def test_eval_on_a_root_with_only_training_files_is_a_user_error(tmp_path, synth_root, checkpoint, capsys):
    root = tmp_path / "train_only"
    (root / "dataset_extras").mkdir(parents=True)
    for stem in TRAIN_DATASETS.values():
        src = synth_root / "dataset_extras" / f"{stem}.npz"
        if src.is_file():
            shutil.copy(src, root / "dataset_extras" / src.name)
    assert any((root / "dataset_extras").iterdir())
    assert main(["eval", str(checkpoint), "--data", str(root), "--datasets", "h36m-p1,lsp"]) == 2
    line = _one_error_line(capsys)
    assert "h36m_valid_protocol1.npz" in line and "lsp_dataset_test.npz" in line
    assert "compress data synth" in line


def test_reference_eval_on_an_empty_root_is_a_user_error(tmp_path, capsys):
    assert main(["eval", "--reference", "rest", "--data", str(tmp_path)]) == 2
    assert "3dpw_test.npz" in _one_error_line(capsys)


def test_some_datasets_present_others_skipped_with_a_warning(synth_root, tmp_path, caplog):
    """Only 'none of the requested datasets has its files' is an error: present ones are evaluated, missing ones
    skipped with a warning (as before)."""
    from compress.eval.protocols import evaluate

    root = tmp_path / "partial"
    shutil.copytree(synth_root, root, symlinks=True)
    (root / "dataset_extras" / "3dpw_test.npz").unlink()
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=32).eval()
    with caplog.at_level("WARNING"):
        res = evaluate(model, root, datasets=["3dpw", "h36m-p1"], img_res=32, subset=2, batch_size=2)
    assert list(res) == ["h36m-p1"] and res["h36m-p1"]["n"] == 2
    assert "3dpw_test.npz" in caplog.text


def test_evaluate_with_none_present_raises_and_nothing_requested_is_empty(tmp_path):
    from compress.eval.protocols import evaluate

    model = torch.nn.Linear(1, 1)
    with pytest.raises(UserError, match="lsp_dataset_test.npz"):
        evaluate(model, tmp_path, datasets=["3dpw", "lsp"], img_res=64)
    assert evaluate(model, tmp_path, datasets=[], img_res=64) == {}
