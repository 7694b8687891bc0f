"""Shared fixtures. Tests never touch the repository's data/ and reports/: every test that
prepares data or writes outputs gets its own root through INPAINT_ROOT."""
from __future__ import annotations

import pytest
import torch

import helpers as H


def pytest_collection_modifyitems(config, items):
    """``gpu`` tests run only where CUDA is available (a lent GPU); elsewhere they are skipped, saying why."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none on this machine)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def tmp_root(tmp_path, monkeypatch):
    """An empty project root for outputs (data/<preset>, reports/<preset>)."""
    monkeypatch.setenv("INPAINT_ROOT", str(tmp_path))
    return tmp_path


@pytest.fixture
def smoke_cfg():
    return H.load_config("smoke")


@pytest.fixture
def prepared(tmp_root, smoke_cfg):
    """The smoke data set prepared in a temporary root: (cfg, index)."""
    return smoke_cfg, H.data.prepare_dataset(smoke_cfg)
