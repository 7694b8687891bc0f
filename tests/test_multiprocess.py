"""Several training processes without GPUs: ``accelerate launch --multi_gpu --num_processes 2`` on a machine
without CUDA starts two torchrun workers, and the helpers' command lines join them in one gloo group on the
CPU (``PartialState(cpu=True)``). Accelerate 1.x's ``--cpu`` flag starts a single process unless MPI is set
up, so ``--multi_gpu`` is the launcher that exercises the data-parallel code paths here.

Checked, in the smoke preset:

* only the main process writes checkpoints, fine-tuned weights, LoRA files and stats (every file a
  process writes under the output root is recorded by tests/_mp_worker.py, per rank);
* a two-process run killed after its first checkpoint resumes from it and ends with exactly the history
  of an uninterrupted two-process run;
* the loss curve of two processes at batch b equals, within the tolerance below, that of one process at
  batch 2b (the same global batch: Accelerate gives process i the batches i, i + 2, ... of the same seeded
  order, so each step sees the same images). The processes draw their own t and eps, so the curves are not
  identical. Tolerance: each step's loss (the mean over both processes) within 10 % of the one-process
  loss; the curves' means within 3 standard errors of their difference; and, for the DDPM, whose loss
  follows the images and masks of each batch, a correlation of the two curves above 0.9 (the tiny LoRA's
  loss barely depends on the images, so there the curve shape is noise and is not compared).
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import helpers as H

pytestmark = [pytest.mark.multiprocess, pytest.mark.slow]
WORKER = Path(__file__).resolve().parent / "_mp_worker.py"
REL_TOL, MIN_CORR = 0.10, 0.9


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(n: int, which: str, *args: str) -> list[str]:
    if n == 1:
        return [sys.executable, str(WORKER), which, "--preset", "smoke", *args]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(n),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(_port()), str(WORKER), which, "--preset", "smoke", *args]


def _env(root: Path) -> dict:
    env = {**os.environ, "INPAINT_ROOT": str(root), "CUDA_VISIBLE_DEVICES": ""}
    env["PYTHONPATH"] = os.pathsep.join([str(WORKER.parent.parent), env.get("PYTHONPATH", "")])
    return env


def _run(root: Path, n: int, which: str, *args: str) -> None:
    out = subprocess.run(_command(n, which, *args), env=_env(root), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]


def _root(tmp_path: Path, name: str) -> Path:
    """An output root with the smoke data prepared and captioned once (in this process)."""
    root = tmp_path / name
    mp = pytest.MonkeyPatch()
    mp.setenv("INPAINT_ROOT", str(root))
    try:
        cfg = H.load_config("smoke")
        H.study.data.splits.prepare_dataset(cfg)
        H.study.data.captions.make_captions(cfg)
    finally:
        mp.undo()
    return root


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc: torchrun starts its workers in sessions of their own)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the launcher and all its workers at once: a crash, not a shutdown."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def _writes(root: Path, rank: int) -> list[str]:
    f = root / f"writes.rank{rank}.txt"
    return f.read_text().split() if f.is_file() else []


def _history(root: Path, kind: str) -> list[float]:
    """The logged loss per step, from the run's last checkpoint."""
    import torch
    sub = {"ddpm": "ddpm_inpaint/ckpt-*", "sd": "sd_lora/ckpt-*"}[kind]
    ckpt = next((root / "reports" / "smoke" / "models").glob(f"{sub}/last.pt"))
    return [h["loss"] for h in torch.load(ckpt, map_location="cpu", weights_only=False)["history"]]


def _same_curve(two: list[float], one: list[float], same_shape: bool) -> None:
    a, b = np.array(two), np.array(one)
    pairs = list(zip(a.round(4), b.round(4)))
    assert len(a) == len(b) > 3
    assert np.all(np.abs(a - b) <= REL_TOL * b), pairs
    # the means differ by less than 3 standard errors of their difference (per-step draws independent)
    assert abs(a.mean() - b.mean()) < 3 * np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / len(a)), pairs
    if same_shape:
        assert np.corrcoef(a, b)[0, 1] > MIN_CORR, pairs


def test_ddpm_two_processes_main_writes_resume_and_loss_curve(tmp_path):
    half = "ddpm.batch_size=4"
    # 1. two processes, uninterrupted: only rank 0 writes
    two = _root(tmp_path, "two")
    _run(two, 2, "ddpm", "--set", half)
    written = _writes(two, 0)
    assert any(p.endswith("last.pt") for p in written) and any(p.endswith("train_stats.json") for p in written)
    assert any("/ddpm_inpaint/unet" in p for p in written)
    assert _writes(two, 1) == [], _writes(two, 1)
    # 2. the same run killed after its first checkpoint (step 6 of 12), then started again: it resumes
    killed = _root(tmp_path, "killed")
    proc = subprocess.Popen(_command(2, "ddpm", "--set", half), env=_env(killed),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt_glob = "reports/smoke/models/ddpm_inpaint/ckpt-*/last.pt"
    deadline = time.time() + 600
    while not list(killed.glob(ckpt_glob)) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    _kill_tree(proc)                                    # launcher and both workers, mid-run
    import torch
    step = torch.load(next(killed.glob(ckpt_glob)), map_location="cpu", weights_only=False)["step"]
    assert 0 < step < 12
    time.sleep(2)
    assert torch.load(next(killed.glob(ckpt_glob)), map_location="cpu", weights_only=False)["step"] == step  # all dead
    _run(killed, 2, "ddpm", "--set", half)
    stats = json.loads(next(killed.glob("reports/smoke/models/ddpm_inpaint/ckpt-*/train_stats.json")).read_text())
    assert stats["resumed_from"] == step and stats["steps"] == 12
    assert _history(killed, "ddpm") == _history(two, "ddpm")
    # 3. one process with the same global batch (8): the same curve within the stated tolerance
    one = _root(tmp_path, "one")
    _run(one, 1, "ddpm", "--set", "ddpm.batch_size=8")
    _same_curve(_history(two, "ddpm"), _history(one, "ddpm"), same_shape=True)


def test_lora_two_processes_main_writes_and_loss_curve(tmp_path):
    two = _root(tmp_path, "two")
    _run(two, 2, "sd", "--set", "sd.batch_size=1")
    written = _writes(two, 0)
    assert any(p.endswith(H.study.models.sd.LORA_WEIGHTS) for p in written)
    assert any(p.endswith("train_stats.json") for p in written)
    assert any(p.endswith("last.pt") for p in written)
    assert _writes(two, 1) == [], _writes(two, 1)
    one = _root(tmp_path, "one")
    _run(one, 1, "sd", "--set", "sd.batch_size=2")
    _same_curve(_history(two, "sd"), _history(one, "sd"), same_shape=False)
