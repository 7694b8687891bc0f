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


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models on a shared 2-core CPU: one intra-op thread is faster and steadier (no OpenMP spinning).
    Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    return smoke_cfg, H.study.data.splits.prepare_dataset(smoke_cfg)


# the test run of the smoke series shortens the one long step: notebook 02's digits DDPM trains for
# digits.budget (5 CPU-minutes in the preset, what `make report` runs); the tests check the pipeline
SMOKE_TEST_OVERRIDES = {"digits.budget": 40, "digits.checkpoints": [0, 20, 40], "digits.compare_budget": 10}


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
    """One smoke execution of the whole series through the report runner, in a temporary root,
    shared by every test that reads its outputs (notebooks, exported report and slides):
    (manifest, paths)."""
    root = tmp_path_factory.mktemp("smoke_root")
    mp = pytest.MonkeyPatch()
    mp.setenv("INPAINT_ROOT", str(root))
    try:
        manifest = H.report.export.run("smoke", overrides=SMOKE_TEST_OVERRIDES)
        yield manifest, H.study.files.paths(H.load_config("smoke"))
    finally:
        mp.undo()


CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    """Debian's chromium (``.ci/run`` installs it); Playwright's own browser downloads are not used."""
    import shutil
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="session")
def browser():
    """A headless Chromium driven by Playwright; skipped, saying why, where either is missing."""
    path = chromium_path()
    if not path:
        pytest.skip("no chromium on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (it is in requirements.txt)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=path, headless=True, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()
