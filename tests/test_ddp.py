"""DDP on the CPU (gloo): 2 processes under torchrun end with identical weights, equal to one process at the same
global batch.

Why they can match: the global batch is split evenly (DistributedSampler over the same seeded permutation), DDP
averages gradients, BatchNorm is synchronised over the processes (compress.train.set_sync_batchnorm), every sample
has SMPL and 3D ground truth (SPIN's masked means are per-process means otherwise) and dropout is 0 (its masks
come from per-rank RNG streams).

Teardown (compress.distributed.distributed_job): the work runs in a function, so the DDP wrapper is gone before
the teardown; every rank meets in a final barrier before the process group is destroyed (in a finally), so no rank
exits while another still communicates. A process that aborts at exit ("terminate called without an active
exception") fails these tests even when torchrun's exit code hides it.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent('''
    import sys
    import torch
    from torch import nn
    sys.path.insert(0, sys.argv[2])  # tests/, for the stand-ins shared with test_train.py
    from fakes import RES, FakeSMPL, ToyData
    from compress.models import create_model
    from compress.distributed import distributed_job, set_sync_batchnorm
    from compress.recipe import TrainSpec
    from compress.train import FitOptions, fit, loader_factory, make_state

    torch.set_num_threads(1)


    def main(info):
        spec = TrainSpec(lr=1e-3, amp=False)
        torch.manual_seed(0)
        model = create_model("hmr_tiny", img_res=RES)
        for m in model.modules():
            if isinstance(m, nn.Dropout):
                m.p = 0.0
        state = make_state(model, FakeSMPL(), spec, img_res=RES, device=torch.device("cpu"), info=info)
        # every item has SMPL targets: the pose and betas losses average over the samples that have them, and
        # with masks that differ between ranks a mean of per-rank means is not the global batch's mean
        make_loader = loader_factory(ToyData(24, all_smpl=True), batch_size=8, workers=0, seed=0, info=info)
        summary = fit(state, make_loader, FitOptions(epochs=2, steps_per_epoch=2))
        set_sync_batchnorm(state.model, False)
        torch.save({"state_dict": state.model.state_dict(), "loss": summary["total"], "steps": state.step},
                   f"{sys.argv[1]}/rank{info.rank}_of{info.world}.pt")


    with distributed_job() as info:  # final barrier, then destroy_process_group (in a finally)
        main(info)  # the DDP state is local to main: released before the teardown
''')

TEARDOWN = textwrap.dedent('''
    import sys
    import time
    import torch
    from torch import nn
    from compress.distributed import distributed_job

    torch.set_num_threads(1)


    def main(info):
        net = nn.parallel.DistributedDataParallel(nn.Linear(4, 4))
        for _ in range(2):
            net(torch.randn(2, 4)).sum().backward()
        if info.rank == 1:
            time.sleep(2.0)  # rank 1 finishes its work last
        with open(f"{sys.argv[1]}/arrive{info.rank}", "w") as f:
            f.write(repr(time.time()))


    with distributed_job() as info:
        main(info)
    with open(f"{sys.argv[1]}/leave{info.rank}", "w") as f:
        f.write(repr(time.time()))
''')


def _run(args: list[str], tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for text in (proc.stdout, proc.stderr):
        assert "terminate called" not in text and "Aborted" not in text, text[-3000:]


@pytest.mark.slow
def test_teardown_waits_for_every_rank(tmp_path):
    """No rank leaves the job (destroys the group and exits) before the last rank has finished its work."""
    script = tmp_path / "teardown_worker.py"
    script.write_text(TEARDOWN)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
          str(tmp_path)], tmp_path)
    arrive1 = float((tmp_path / "arrive1").read_text())
    leave0, leave1 = (float((tmp_path / f"leave{r}").read_text()) for r in (0, 1))
    assert leave0 >= arrive1 and leave1 >= arrive1, (leave0, arrive1)


@pytest.mark.slow
def test_two_process_ddp_matches_single_process(tmp_path):
    script = tmp_path / "ddp_worker.py"
    script.write_text(SCRIPT)
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script),
          str(tmp_path), str(TESTS)], tmp_path)
    _run([sys.executable, str(script), str(tmp_path), str(TESTS)], tmp_path)
    r0, r1, single = (torch.load(tmp_path / name, weights_only=True)
                      for name in ("rank0_of2.pt", "rank1_of2.pt", "rank0_of1.pt"))
    assert r0["steps"] == r1["steps"] == single["steps"] == 4
    for key, a in r0["state_dict"].items():
        assert torch.equal(a, r1["state_dict"][key]), f"ranks differ in {key}"
    moved = 0
    for key, a in r0["state_dict"].items():
        b = single["state_dict"][key]
        if a.is_floating_point():
            # the summation order of the all-reduce differs from one process's: float rounding only (README: the
            # largest difference measured is 1.4e-6)
            assert torch.allclose(a, b, rtol=0, atol=5e-6), f"{key}: max diff {(a - b).abs().max():.3g}"
            moved += 1
        else:
            assert torch.equal(a, b), key
    assert moved > 10
    assert abs(r0["loss"] - single["loss"]) < 1e-5 * max(1.0, abs(single["loss"]))


@pytest.mark.slow
def test_torchrun_compress_finetune_end_to_end(tmp_path, synth_root):
    """The real entry point: `torchrun --nproc_per_node=2 -m compress -- finetune --run DIR` (the `--` keeps
    torchrun's own option parser from reading `--run` as an abbreviation of its `--run-path`)."""
    from compress.checkpoint import save_checkpoint
    from compress.models import create_model
    from compress.recipe import DataSpec, EvalSpec, ModelSpec, Recipe, TrainSpec, save_recipe

    root = synth_root
    run = tmp_path / "run"
    torch.manual_seed(0)
    save_checkpoint(create_model("hmr_tiny", img_res=32), run / "pruned.pt", stage="P1")
    spec = TrainSpec(epochs=1, steps_per_epoch=2, batch_size=2, lr=1e-3, amp=False, log_every=1)
    recipe = Recipe(name="ddp", model=ModelSpec(name="hmr_tiny", img_res=32), data=DataSpec(root=str(root), workers=0),
                    finetune=spec, eval=EvalSpec(datasets=["h36m-p1"], batch_size=4, subset=2, workers=0))
    save_recipe(recipe, run / "recipe.yaml")
    _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "compress", "--",
          "finetune", "--run", str(run)], tmp_path)
    meta = torch.load(run / "finetuned.pt", weights_only=True)
    assert meta["stage"] == "FT(1)" and meta["train"]["steps"] == 2 and "h36m-p1" in meta["metrics"]
    lines = (run / "log.jsonl").read_text().splitlines()
    assert len(lines) == 3  # rank 0 alone writes: 2 step records and 1 epoch record
