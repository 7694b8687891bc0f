"""Running the notebook series: which notebooks, papermill in a kernel of this environment, the
manifest's base (preset, config, packages, commit, device)."""
from __future__ import annotations

import datetime as dt
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from helpers.study.config import ROOT
from helpers.study.files import shown_path

NOTEBOOK_DIR = ROOT / "notebooks"


HIDDEN_TAGS = {"parameters", "injected-parameters"}


PACKAGES = ("torch", "torchvision", "diffusers", "transformers", "peft", "accelerate", "torchmetrics",
            "torch-fidelity", "lpips", "scikit-image", "opencv-python-headless", "numpy", "papermill",
            "nbconvert")


class NotebookFailed(RuntimeError):
    """A notebook of the series raised: carries the notebook, the cell and the error."""


# Notebooks that serve an interactive app and never run unattended (papermill would start a server
# that nobody uses): 07_demo opens the Gradio demo (helpers.apps.demo); `make demo` serves the same app.
INTERACTIVE = ("07_demo",)


def list_notebooks(notebook_dir: Path = NOTEBOOK_DIR) -> list[Path]:
    """The series, in order: notebooks/NN_*.ipynb sorted by name, without the INTERACTIVE ones."""
    nbs = sorted(p for p in Path(notebook_dir).glob("[0-9][0-9]_*.ipynb") if p.stem not in INTERACTIVE)
    if not nbs:
        raise FileNotFoundError(f"no notebooks NN_*.ipynb in {notebook_dir}")
    return nbs


def _match(nbs: list[Path], key: str) -> int:
    """Index of the notebook named by ``key``: its number ("03"), its stem, or a unique substring."""
    hits = [i for i, p in enumerate(nbs) if p.stem == key or p.stem.split("_", 1)[0] == key.zfill(2)]
    hits = hits or [i for i, p in enumerate(nbs) if key in p.stem]
    if len(hits) != 1:
        raise ValueError(f"{key!r} names {'no' if not hits else 'several'} notebooks; "
                         f"choose from {[p.stem for p in nbs]}")
    return hits[0]


def select(nbs: list[Path], only: str | None = None, start: str | None = None) -> list[Path]:
    if only and start:
        raise ValueError("give --only or --from, not both")
    if only:
        return [nbs[_match(nbs, only)]]
    if start:
        return nbs[_match(nbs, start):]
    return nbs


def manifest_base(cfg) -> dict:
    """What reproduces a run: preset and config, seeds, versions, git commit, device."""
    def version(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10,
                                  check=True).stdout.strip()
        except Exception:
            return None

    import torch
    device = {"cuda": torch.cuda.is_available(), "cpu": platform.processor() or platform.machine(),
              "cpu_count": os.cpu_count()}
    if torch.cuda.is_available():
        device["gpu"] = torch.cuda.get_device_name(0)
        device["gpu_count"] = torch.cuda.device_count()
    return {"preset": cfg.preset, "config": cfg.to_dict(), "seeds": {"seed": cfg.seed},
            "packages": {p: version(p) for p in PACKAGES}, "python": sys.version.split()[0],
            "platform": platform.platform(),
            "git": {"commit": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
            "device": device, "started": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
            "notebooks": []}


def kernel_env() -> None:
    """Kernels start with this interpreter: put its bin folder first on PATH."""
    os.environ["INPAINT_TEXT_PROGRESS"] = "1"      # progress bars as text: they land in the logs
    # kernels import the helpers of the checkout that runs them (not another editable install)
    parts = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != str(ROOT)]
    os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    bindir = str(Path(sys.executable).parent)
    if not os.environ.get("PATH", "").startswith(bindir):
        os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")


def ipc_kernel_manager():
    """The kernel manager of the runner: the kernel talks to it over local IPC sockets, not TCP (no
    port opened on the machine, and ipykernel's "running over TCP without encryption" warning, once
    per notebook on the terminal, has nothing to warn about)."""
    from jupyter_client.manager import AsyncKernelManager

    class IPCKernelManager(AsyncKernelManager):
        transport = "ipc"

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            # the sockets in a folder of their own: jupyter_client's default ("kernel-ipc-N" in the working
            # directory, notebooks/) collides when two runs start at once ("Invalid Signature")
            self._ipc_dir = Path(tempfile.mkdtemp(prefix="inpaint-kernel-"))
            self.ip = str(self._ipc_dir / "k")

        def cleanup_connection_file(self) -> None:
            """On the kernel's final shutdown (not on a restart, which reuses them), the socket folder goes too."""
            super().cleanup_connection_file()
            if getattr(self, "_ipc_dir", None):
                shutil.rmtree(self._ipc_dir, ignore_errors=True)

    return IPCKernelManager


def shown_papermill_paths(path: Path) -> None:
    """papermill records the notebook's input and output paths in its metadata: shown as
    :func:`helpers.study.files.shown_path` shows them, so an executed notebook names no machine path."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    meta = nb.metadata.get("papermill", {})
    for key in ("input_path", "output_path"):
        if meta.get(key):
            meta[key] = shown_path(meta[key])
    nbformat.write(nb, path)


def run_notebook(src: Path, dst: Path, log_path: Path, preset: str, overrides: dict | None) -> None:
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    dst.parent.mkdir(parents=True, exist_ok=True)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w") as log:
        try:
            pm.execute_notebook(str(src), str(dst), parameters={"preset": preset, "overrides": overrides or {}},
                                kernel_name="python3", progress_bar=False, stdout_file=log, stderr_file=log,
                                cwd=str(src.parent), request_save_on_cell_execute=True,
                                kernel_manager_class=ipc_kernel_manager())
        except PapermillExecutionError as e:
            shown_papermill_paths(dst)
            cell_src = (e.source or "").strip().splitlines()
            first = cell_src[0] if cell_src else ""
            raise NotebookFailed(
                f"notebook {src.name} failed in cell {e.cell_index} (execution count {e.exec_count}, "
                f"starting {first!r}): {e.ename}: {e.evalue}\n"
                f"  executed notebook with the traceback: {dst}\n  cell output log: {log_path}") from None
    shown_papermill_paths(dst)
