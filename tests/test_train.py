"""The training loop: sync-BN switch, RNG round trip, fit/log/checkpoint, exact resume, non-finite stop."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from torch import nn

from fakes import EPOCH, RES, FakeSMPL, ToyData

from compress.errors import UserError
from compress.models import create_model
from compress.distributed import DistInfo, rng_state, set_rng_state, set_sync_batchnorm
from compress.runs import LAST
from compress.recipe import TrainSpec
from compress.train import (FitOptions, LRFactor, amp_dtype, fit, load_train_state, loader_factory, make_state,
                            train_one_epoch)

_EPOCH = EPOCH


def _loader_factory(data, batch=4):
    def make(epoch):
        _EPOCH[0] = epoch
        g = torch.Generator().manual_seed(100 + epoch)
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=g, drop_last=True)
    return make


def _spec(**kw) -> TrainSpec:
    return TrainSpec(**{"lr": 1e-3, "amp": False, **kw})


def _state(seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model("hmr_tiny", img_res=RES)
    return make_state(model, FakeSMPL(), _spec(**kw), img_res=RES, device=torch.device("cpu"), info=DistInfo())


@pytest.mark.parametrize("cuda", [False, True])
def test_sync_batchnorm_switch_keeps_state_and_output(cuda):
    """gloo: our all-reduce BatchNorm; CUDA (NCCL): torch.nn.SyncBatchNorm. Both switch back to plain BatchNorm."""
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=RES).train()
    x = torch.randn(4, 3, RES, RES)
    keys = list(model.state_dict())
    torch.manual_seed(1)
    ref = model(x)["cam"]
    n = set_sync_batchnorm(model, True, cuda=cuda)
    assert n > 0 and list(model.state_dict()) == keys
    synced = [m for m in model.modules() if "BatchNorm" in type(m).__name__]
    assert all(isinstance(m, nn.SyncBatchNorm if cuda else nn.BatchNorm2d) for m in synced)
    assert all(isinstance(m, nn.SyncBatchNorm) == cuda for m in synced)
    torch.manual_seed(1)
    assert torch.equal(model(x)["cam"], ref)  # no process group: plain BatchNorm behaviour
    assert set_sync_batchnorm(model, False) == n
    assert {type(m) for m in model.modules() if "BatchNorm" in type(m).__name__} == {nn.BatchNorm2d}


def test_rng_state_round_trip_through_weights_only_file(tmp_path):
    import random

    import numpy as np

    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = rng_state()
    draws = (torch.rand(3), np.random.rand(3), random.random())
    torch.save(state, tmp_path / "rng.pt")
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(draws[0], again[0]) and np.array_equal(draws[1], again[1]) and draws[2] == again[2]


def test_train_one_epoch_lowers_the_loss():
    state = _state()
    loader = [ToyData(4)[i] for i in range(4)]
    batch = torch.utils.data.default_collate(loader)
    first = train_one_epoch(state, [batch], max_steps=1)["total"]
    for _ in range(4):
        stats = train_one_epoch(state, [batch] * 3, max_steps=2)
    assert stats["steps"] == 2 and state.step == 9
    assert stats["total"] < 0.75 * first
    assert set(stats) >= {"kp2d", "kp3d", "pose", "betas", "cam", "total", "images_per_s", "time_s"}


def test_fit_writes_log_and_epoch_checkpoint(tmp_path):
    state = _state()
    calls = []
    opts = FitOptions(epochs=2, steps_per_epoch=3, log_every=2, run_dir=tmp_path, phase="finetune", stage="FT(2)")
    summary = fit(state, _loader_factory(ToyData(16)), opts, progress=lambda d, t, info: calls.append((d, t)))
    assert summary["epochs"] == 2 and summary["steps"] == 6
    assert calls[-1] == (6, 6) and len(calls) == 6
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    assert [r["step"] for r in steps] == [2, 4, 6] and [r["epoch"] for r in epochs] == [1, 2]
    assert all({"total", "kp2d", "lr", "images_per_s", "phase"} <= set(r) for r in records)
    saved = torch.load(tmp_path / LAST, weights_only=True)
    assert saved["epoch"] == 2 and saved["step"] == 6 and saved["stage"] == "FT(2)"
    assert saved["sampler"] == {"seed": 0, "epoch": 2}


def test_resume_from_epoch_checkpoint_is_exact(tmp_path):
    data = ToyData(16)
    full = _state()
    fit(full, _loader_factory(data), FitOptions(epochs=3, steps_per_epoch=3))

    part = _state()
    fit(part, _loader_factory(data), FitOptions(epochs=1, steps_per_epoch=3, run_dir=tmp_path, stage="x"))
    torch.manual_seed(123)  # a different process state: resume must not depend on it
    resumed = _state(seed=5)
    load_train_state(resumed, tmp_path / LAST, phase="train", stage="x")
    assert resumed.epoch == 1 and resumed.step == 3
    fit(resumed, _loader_factory(data), FitOptions(epochs=3, steps_per_epoch=3))
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    with pytest.raises(UserError, match="stage"):
        load_train_state(_state(), tmp_path / LAST, phase="train", stage="FT(3)")


def test_resume_reads_the_epoch_checkpoint_to_the_cpu_first(tmp_path):
    """A run on CUDA resumes through the CPU: the saved RNG ByteTensors must stay CPU tensors (torch.set_rng_state
    rejects CUDA ones), and the weights and optimizer state follow the model's device when loaded into it. The state
    claims a CUDA device here; a map_location=state.device load would fail on this machine or, on a GPU host, in
    set_rng_state."""
    fit(_state(), _loader_factory(ToyData(16)), FitOptions(epochs=1, steps_per_epoch=2, run_dir=tmp_path, stage="x"))
    resumed = _state()
    resumed.device = torch.device("cuda", 0)
    load_train_state(resumed, tmp_path / LAST, phase="train", stage="x")
    assert resumed.epoch == 1 and resumed.step == 2
    assert all(p.device.type == "cpu" for p in resumed.model.parameters())
    assert all(t.device.type == "cpu" for s in resumed.optimizer.state.values() for t in s.values()
               if isinstance(t, torch.Tensor))


@pytest.mark.parametrize("section", ["train", "finetune"])
def test_a_set_smaller_than_one_batch_names_the_sections_key(section):
    with pytest.raises(UserError) as err:
        loader_factory(ToyData(3), batch_size=8, workers=0, seed=0, info=DistInfo(), section=section)
    other = {"train": "finetune", "finetune": "train"}[section]
    assert f"--set {section}.batch_size=" in str(err.value) and f"{other}.batch_size" not in str(err.value)


def test_amp_dtype_choice():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert amp_dtype(_spec(amp=True, amp_dtype="fp16"), cpu) is None  # fp32 on the CPU
    assert amp_dtype(_spec(amp=False, amp_dtype="fp16"), cuda) is None
    assert amp_dtype(_spec(amp=True, amp_dtype="fp16"), cuda) == torch.float16
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        assert amp_dtype(_spec(amp=True, amp_dtype="bf16"), cuda) == torch.bfloat16


def test_encoder_lr_gives_the_encoder_its_own_rate():
    from compress.models import parameter_split

    state = _state(encoder_lr=5e-2)
    head, body = state.optimizer.param_groups
    assert head["lr"] == 1e-3 and body["lr"] == 5e-2
    split = parameter_split(state.model)
    assert sum(p.numel() for p in head["params"]) == split["regressor"] > 0
    assert sum(p.numel() for p in body["params"]) == split["encoder"] > 0
    (single,) = _state().optimizer.param_groups
    assert sum(p.numel() for p in single["params"]) == split["total"]


def test_lr_warmup_and_cosine_factors():
    warm = LRFactor(warmup_steps=4)
    assert [warm(i) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    cos = LRFactor(warmup_steps=0, schedule="cosine")
    assert cos(5) == 1.0  # no total yet: constant
    cos.total_steps = 10
    assert cos(0) == 1.0 and cos(5) == pytest.approx(0.5) and cos(10) == pytest.approx(0.0)
    assert cos(12) == pytest.approx(0.0)


def test_cosine_schedule_resumes_exactly_after_an_interrupted_epoch(tmp_path):
    """A run killed after epoch 1 of 3 and resumed ends bitwise where an uninterrupted one does (the schedule's
    length and position come back from last.pt), and the rate reaches 0 at the last step."""
    data = ToyData(16)
    opts = dict(epochs=3, steps_per_epoch=3)
    full = _state(lr_schedule="cosine", warmup_steps=2)
    fit(full, _loader_factory(data), FitOptions(**opts))
    assert full.optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)

    make = _loader_factory(data)

    def killed_in_epoch_2(epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return make(epoch)

    part = _state(lr_schedule="cosine", warmup_steps=2)
    with pytest.raises(KeyboardInterrupt):
        fit(part, killed_in_epoch_2, FitOptions(**opts, run_dir=tmp_path, stage="x"))
    resumed = _state(seed=5, lr_schedule="cosine", warmup_steps=2)
    load_train_state(resumed, tmp_path / LAST, phase="train", stage="x")
    fit(resumed, _loader_factory(data), FitOptions(**opts))
    for (k, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_with_another_optimizer_layout_is_a_user_error(tmp_path):
    data = ToyData(8)
    fit(_state(), _loader_factory(data), FitOptions(epochs=1, steps_per_epoch=1, run_dir=tmp_path, stage="x"))
    with pytest.raises(UserError, match="another optimizer layout"):
        load_train_state(_state(encoder_lr=1e-2), tmp_path / LAST, phase="train", stage="x")


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    state = _state()
    opts = FitOptions(epochs=3, steps_per_epoch=2, run_dir=tmp_path, stage="s")
    with pytest.raises(UserError, match="non-finite loss at epoch 2, step 3"):
        fit(state, _loader_factory(ToyData(16, nan_from=1)), opts)
    saved = torch.load(tmp_path / LAST, weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == 2
    # no optimizer step was taken on the bad batch (its forward did update BatchNorm running statistics)
    assert all(torch.equal(saved["state_dict"][k], p) for k, p in state.model.named_parameters())


# ----------------------------------------------------------------------------------------------- real pipeline
# hmr_tiny on the small synthetic root (real datasets, SMPL, evaluate, checkpoints), CPU-sized.

import os  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import textwrap  # noqa: E402
from pathlib import Path  # noqa: E402

from compress.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from compress.recipe import (DataSpec, DistillSpec, EvalSpec, ModelSpec, Recipe, save_recipe)
from compress.train import run_finetune, run_train  # noqa: E402

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def root(synth_root):
    return synth_root


def _recipe(root, *, epochs=2, steps=2, workers=0, distill=None, eval_sets=("h36m-p1",)) -> Recipe:
    spec = TrainSpec(epochs=epochs, steps_per_epoch=steps, batch_size=2, lr=1e-3, log_every=1, amp=False,
                     distill=distill)
    data = DataSpec(root=str(root), workers=workers)
    return Recipe(name="t", model=ModelSpec(name="hmr_tiny", img_res=32), data=data, train=spec, finetune=spec,
                  eval=EvalSpec(datasets=list(eval_sets), batch_size=4, subset=4, workers=0))



def test_run_train_writes_a_complete_run(root, tmp_path):
    calls = []
    result = run_train(_recipe(root, eval_sets=("h36m-p1", "3dpw")), out_dir=tmp_path / "run",
                       progress=lambda d, t, info: calls.append((d, t)))
    run = tmp_path / "run"
    assert calls[-1] == (4, 4) and result["steps"] == 4 and result["epochs"] == 2
    assert {p.name for p in run.iterdir()} >= {"recipe.yaml", "trained.pt", "last.pt", "log.jsonl", "metrics"}
    model, meta = load_checkpoint(run / "trained.pt")
    assert meta["stage"] == "trained" and meta["parent"] is None and meta["epochs"] == 2
    assert set(meta["metrics"]) == {"h36m-p1", "3dpw"} and meta["metrics"]["3dpw"]["n"] == 4
    assert meta["metrics"]["h36m-p1"]["mpjpe_mm"] > 0
    saved = json.loads((run / "metrics" / "trained.json").read_text())
    assert saved["stage"] == "trained" and saved["metrics"] == result["metrics"]
    steps = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in steps if r["kind"] == "step"] == [1, 2, 3, 4]


def test_snapshot_every_keeps_the_model_of_every_nth_epoch(root, tmp_path):
    recipe = _recipe(root, epochs=3, steps=1, eval_sets=("3dpw",))
    spec = dataclasses.replace(recipe.train, snapshot_every=2)
    run_train(dataclasses.replace(recipe, train=spec), out_dir=tmp_path / "run")
    snaps = sorted((tmp_path / "run" / "snapshots").glob("*.pt"))
    assert [p.name for p in snaps] == ["epoch_0002.pt"]  # epochs 1 and 3 are not multiples of 2
    model, meta = load_checkpoint(snaps[0])
    assert meta["steps"] == 2 and meta["epochs"] == 2 and meta["stage"] == "trained@2"
    final, _ = load_checkpoint(tmp_path / "run" / "trained.pt")
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), final.state_dict().values()))


KILL_SCRIPT = textwrap.dedent('''
    import os, signal, sys
    import torch
    torch.set_num_threads(1)
    from compress.recipe import load_recipe
    from compress.train import run_train

    mode, recipe, out = sys.argv[1:4]

    def progress(done, total, info):
        if mode == "kill" and done == 4:  # after the first step of epoch 2 (3 steps per epoch)
            os.kill(os.getpid(), signal.SIGKILL)

    run_train(load_recipe(recipe), out_dir=out, resume=mode == "resume", progress=progress)
''')


def test_sigkill_mid_epoch_then_resume_ends_like_an_uninterrupted_run(root, tmp_path):
    save_recipe(_recipe(root, epochs=3, steps=3, workers=1), tmp_path / "r.yaml")
    (tmp_path / "kill.py").write_text(KILL_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("COMPRESS_DATA_ROOT", "RANK", "WORLD_SIZE")}
    env.update(PYTHONPATH=str(PROJECT), OMP_NUM_THREADS="1")

    def run(mode, out):
        return subprocess.run([sys.executable, str(tmp_path / "kill.py"), mode, str(tmp_path / "r.yaml"),
                               str(tmp_path / out)], env=env, cwd=tmp_path, capture_output=True, text=True,
                              timeout=300)

    full = run("full", "full")
    assert full.returncode == 0, full.stderr[-2000:]
    killed = run("kill", "killed")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "trained.pt").exists()
    assert torch.load(tmp_path / "killed" / LAST, weights_only=True)["epoch"] == 1
    resumed = run("resume", "killed")
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    a = torch.load(tmp_path / "full" / "trained.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "trained.pt", weights_only=True)
    assert a["train"]["steps"] == b["train"]["steps"] == 9
    for key, value in a["state_dict"].items():
        assert torch.equal(value, b["state_dict"][key]), key
    assert a["metrics"] == b["metrics"]
    # the killed epoch's log lines were dropped on resume: every step is logged once
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()
             if json.loads(line)["kind"] == "step"]
    assert steps == list(range(1, 10))


def _pruned_run(root, tmp_path, *, distill) -> Path:
    """A baseline checkpoint and a run directory whose pruned.pt (here: same widths) names it as parent."""
    torch.manual_seed(0)
    base = tmp_path / "base"
    save_checkpoint(create_model("hmr_tiny", img_res=32), base / "trained.pt", stage="trained")
    run = tmp_path / "p1"
    torch.manual_seed(1)
    save_checkpoint(create_model("hmr_tiny", img_res=32), run / "pruned.pt", parent=str(base / "trained.pt"),
                    stage="P1")
    save_recipe(_recipe(root, epochs=3, steps=2, distill=distill), run / "recipe.yaml")
    return run


def test_run_finetune_distils_from_the_chain_root(root, tmp_path):
    run = _pruned_run(root, tmp_path, distill=DistillSpec(teacher="", rotmat=1.0, joints=1.0, features=1.0))
    result = run_finetune(run, epochs=1)
    assert result["stage"] == "FT(1)" and result["distill"] and result["steps"] == 2
    _, meta = load_checkpoint(run / "finetuned.pt")
    assert meta["stage"] == "FT(1)" and meta["parent"] == str(run / "pruned.pt") and meta["distill"]
    assert (run / "metrics" / "finetuned.json").is_file() and "h36m-p1" in meta["metrics"]
    record = json.loads((run / "log.jsonl").read_text().splitlines()[-1])
    assert record["kind"] == "epoch" and record["phase"] == "finetune"
    # same widths here, so the feature term is active too
    assert {"distill_rotmat", "distill_joints", "distill_features", "distill_cam"} <= set(record)
    # --set finetune.distill=null turns it off; the recipe's epochs are the default length
    result = run_finetune(run, overrides=["finetune.distill=null"])
    assert result["stage"] == "FT(3)" and not result["distill"] and result["steps"] == 6


def test_finetune_into_another_directory_keeps_the_runs_own(root, tmp_path):
    """--out: a second fine-tuning of the same pruned.pt (here without the teacher) beside the run's own."""
    from compress.report import collect_rows

    run = _pruned_run(root, tmp_path, distill=DistillSpec(teacher=""))
    run_finetune(run, epochs=1)
    first = (run / "finetuned.pt").read_bytes()
    other = tmp_path / "p1_nokd"
    result = run_finetune(run, epochs=1, overrides=["finetune.distill=null"], out_dir=other)
    assert not result["distill"] and (run / "finetuned.pt").read_bytes() == first
    _, meta = load_checkpoint(other / "finetuned.pt")
    assert meta["parent"] == str(run / "pruned.pt") and not meta["distill"]
    assert (other / "metrics" / "finetuned.json").is_file() and (other / "log.jsonl").is_file()
    rows = collect_rows([run, other], runs_dir=tmp_path)
    assert sorted(r["stage"] for r in rows) == ["P1", "P1+FT(1)", "P1+FT(1)+KD", "baseline"]
    assert {r["run"] for r in rows if r["stage"].startswith("P1+")} == {"p1", "p1_nokd"}


def test_run_finetune_errors_are_user_errors(root, tmp_path):
    run = _pruned_run(root, tmp_path, distill=DistillSpec(teacher=str(tmp_path / "nope.pt")))
    with pytest.raises(UserError, match="teacher not found"):
        run_finetune(run, epochs=1)
    with pytest.raises(UserError, match="no recipe.yaml"):
        run_finetune(tmp_path / "base", epochs=1)
    (tmp_path / "base" / "recipe.yaml").write_text((run / "recipe.yaml").read_text())
    with pytest.raises(UserError, match="no pruned.pt"):
        run_finetune(tmp_path / "base", epochs=1)


def test_static_fits_fill_samples_without_smpl(tmp_path):
    from compress.data.crop import augment_pose
    from compress.data.fits import StaticFits

    (tmp_path / "static_fits").mkdir()
    fits = np.random.default_rng(0).normal(0, 0.5, (5, 82)).astype(np.float32)
    fits[3, 75] = 4.0  # |beta| > 3: betas zeroed (SPIN)
    np.save(tmp_path / "static_fits" / "coco_fits.npy", fits)
    sf = StaticFits(tmp_path, ["coco", "mpii"])
    assert list(sf.fits) == ["coco"]
    batch = {"dataset_name": ["coco", "coco", "mpii"], "sample_index": torch.tensor([3, 1, 0]),
             "rot_angle": torch.tensor([30.0, 0.0, 0.0]), "is_flipped": torch.tensor([1, 0, 0])}
    targets = {"pose": torch.zeros(3, 72), "betas": torch.zeros(3, 10), "has_smpl": torch.tensor([0.0, 1.0, 0.0])}
    sf.apply(batch, targets)
    assert targets["has_smpl"].tolist() == [1.0, 1.0, 0.0]  # GT kept, no fit for mpii
    assert torch.allclose(targets["pose"][0], torch.from_numpy(augment_pose(fits[3, :72], 30.0, flip=True)))
    assert targets["betas"][0].abs().sum() == 0 and targets["pose"][1:].abs().sum() == 0


def test_joints_only_smpl_matches_the_full_model(root):
    from compress.geometry import batch_rodrigues
    from compress.smpl import SMPL
    from compress.smpl import SMPLJoints

    smpl = SMPL(root)
    fast = SMPLJoints(smpl)
    g = torch.Generator().manual_seed(0)
    rot = batch_rodrigues(torch.randn(3 * 24, 3, generator=g) * 0.5).view(3, 24, 3, 3).requires_grad_()
    betas = torch.randn(3, 10, generator=g).requires_grad_()
    full, joints = smpl(rot, betas).joints, fast(rot, betas).joints
    assert joints.shape == (3, 49, 3) and fast(rot, betas).vertices is None
    assert torch.allclose(joints, full, atol=1e-5)
    g_full = torch.autograd.grad(full.square().sum(), [rot, betas])
    g_fast = torch.autograd.grad(joints.square().sum(), [rot, betas])
    assert all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_full, g_fast))


def test_gpu_reference_plans_the_epochs_that_fit_the_deadline():
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_reference.py"
    spec = importlib.util.spec_from_file_location("gpu_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # 400 s left, 40 s of fixed cost, 20 ms per step, 200 steps per epoch, 90% of it: 324 s / 4 s = 81 epochs
    assert module.plan_epochs(400, 40, 0.02, 200, 0.9) == 81
    assert module.plan_epochs(30, 40, 0.02, 200, 0.9) == 1  # never less than one epoch
