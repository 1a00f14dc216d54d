"""SPIN's released checkpoint uses torch 1.1's legacy (non-zip) serialization with an Adam state and a
dataset permutation; a file of that shape must load with weights_only=True, strictly, and reproduce outputs."""
import torch

from compress.checkpoint import load_checkpoint
from compress.models import create_model


def test_legacy_spin_file_with_optimizer_loads_strictly(tmp_path):
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=64)
    opt = torch.optim.Adam(model.parameters(), lr=3e-5, weight_decay=1e-4)
    model(torch.randn(2, 3, 64, 64))["betas"].sum().backward()
    opt.step()
    blob = {"model": {f"module.{k}": v for k, v in model.state_dict().items()}, "optimizer": opt.state_dict(),
            "epoch": 3, "batch_idx": 1175, "batch_size": 64, "dataset_perm": list(range(50)),
            "total_step_count": 264323}
    path = tmp_path / "model_checkpoint.pt"
    torch.save(blob, path, _use_new_zipfile_serialization=False)
    loaded, meta = load_checkpoint(path, name="hmr_tiny", img_res=64)
    x = torch.randn(3, 3, 64, 64)
    model.eval(), loaded.eval()
    with torch.no_grad():
        assert torch.equal(model(x)["rotmat"], loaded(x)["rotmat"])
    assert meta["batch_idx"] == 1175
