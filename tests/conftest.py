"""Shared fixtures: one small synthetic data root per session, a tiny model, and no data root from the environment.

Markers (registered in setup.cfg): `slow` (tens of seconds or more: training, torchrun, the demo) and `gpu` (needs
CUDA; skipped without it). `pytest -m "not slow"` runs the quick part.
"""
from __future__ import annotations

import pytest
import torch

from compress.data.synthetic import generate_root
from compress.models import create_model


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory):
    """A complete SPIN-layout root (`compress data synth --size small`, seed 0), shared by every test: read it,
    never write into it (a test that needs to change a root makes its own)."""
    return generate_root(tmp_path_factory.mktemp("synth") / "root", size="small", seed=0)


@pytest.fixture
def tiny_model():
    """`hmr_tiny` at 32 px with seeded weights, in eval mode."""
    torch.manual_seed(0)
    return create_model("hmr_tiny", img_res=32).eval()


@pytest.fixture(autouse=True)
def _no_env_data_root(monkeypatch):
    """Tests are hermetic: a user's $COMPRESS_DATA_ROOT never leaks into them."""
    monkeypatch.delenv("COMPRESS_DATA_ROOT", raising=False)


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
