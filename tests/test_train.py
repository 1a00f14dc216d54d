"""The training loop: sync-BN switch, RNG round trip, fit/log/checkpoint, exact resume, non-finite stop."""
from __future__ import annotations

import json
import types

import pytest
import torch
from torch import nn

from compress.errors import UserError
from compress.models import create_model
from compress.train import (LAST, FitOptions, DistInfo, fit, load_train_state, make_state, rng_state,
                            set_rng_state, set_sync_batchnorm, train_one_epoch)

RES = 32


class FakeSMPL(nn.Module):
    """A fixed linear map (rotmat, betas) -> 49 joints, standing in for SMPL in loop tests."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.register_buffer("w", torch.randn(24 * 9 + 10, 49 * 3, generator=g) * 0.02)

    def forward(self, rotmat, betas):
        joints = (torch.cat([rotmat.flatten(1), betas], 1) @ self.w).view(-1, 49, 3)  # (B, 49, 3)
        return types.SimpleNamespace(vertices=joints, joints=joints)


class ToyData(torch.utils.data.Dataset):
    def __init__(self, n: int = 16, *, nan_from: int | None = None) -> None:
        g = torch.Generator().manual_seed(1)
        self.img = torch.randn(n, 3, RES, RES, generator=g)
        self.kp = torch.rand(n, 49, 3, generator=g) * 2 - 1
        self.kp[:, :, 2] = 1
        self.p3 = torch.randn(n, 24, 4, generator=g) * 0.2
        self.p3[:, :, 3] = 1
        self.pose = torch.randn(n, 72, generator=g) * 0.2
        self.nan_from = nan_from

    def __len__(self) -> int:
        return len(self.img)

    def __getitem__(self, i):
        kp = self.kp[i].clone()
        if self.nan_from is not None and _EPOCH[0] >= self.nan_from:  # a bad sample from that epoch on
            kp[25, 0] = float("nan")
        return {"img": self.img[i], "keypoints": kp, "pose_3d": self.p3[i], "has_pose_3d": torch.tensor(1.0),
                "pose": self.pose[i], "betas": torch.zeros(10), "has_smpl": torch.tensor(float(i % 2))}


_EPOCH = [0]


def _loader_factory(data, batch=4):
    def make(epoch):
        _EPOCH[0] = epoch
        g = torch.Generator().manual_seed(100 + epoch)
        return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=True, generator=g, drop_last=True)
    return make


def _spec(**kw):
    base = dict(lr=1e-3, weight_decay=0.0, amp=False, channels_last=False, compile=False, kp2d=5.0, kp3d=5.0,
                pose=1.0, betas=0.001, shape=0.0, cam=1.0, openpose_weight=0.0, gt_weight=1.0, loss_scale=60.0,
                distill=None)
    return types.SimpleNamespace(**{**base, **kw})


def _state(seed=0, **kw):
    torch.manual_seed(seed)
    model = create_model("hmr_tiny", img_res=RES)
    return make_state(model, FakeSMPL(), _spec(**kw), img_res=RES, device=torch.device("cpu"), info=DistInfo())


def test_sync_batchnorm_switch_keeps_state_and_output():
    torch.manual_seed(0)
    model = create_model("hmr_tiny", img_res=RES).train()
    x = torch.randn(4, 3, RES, RES)
    keys = list(model.state_dict())
    torch.manual_seed(1)
    ref = model(x)["cam"]
    n = set_sync_batchnorm(model, True)
    assert n > 0 and list(model.state_dict()) == keys
    assert all(isinstance(m, nn.BatchNorm2d) for m in model.modules() if "BatchNorm" in type(m).__name__)
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
    for _ in range(15):
        stats = train_one_epoch(state, [batch] * 2)
    assert stats["steps"] == 2 and state.step == 31
    assert stats["total"] < 0.7 * first
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


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    state = _state()
    opts = FitOptions(epochs=3, steps_per_epoch=2, run_dir=tmp_path, stage="s")
    with pytest.raises(UserError, match="non-finite loss at epoch 2, step 3"):
        fit(state, _loader_factory(ToyData(16, nan_from=1)), opts)
    saved = torch.load(tmp_path / LAST, weights_only=True)
    assert saved["epoch"] == 1 and saved["step"] == 2
    # no optimizer step was taken on the bad batch (its forward did update BatchNorm running statistics)
    assert all(torch.equal(saved["state_dict"][k], p) for k, p in state.model.named_parameters())
