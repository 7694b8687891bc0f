"""The study's training loop, shared by both methods (notebooks 03 and 04).

It runs the step the course teaches (:func:`helpers.course.ddpm_inpainting.training_step`: forward
under autocast, backward through a grad scaler for fp16, clip, AdamW step) and adds what a long run
needs: Accelerate for several processes (``accelerate launch``: data sharded, gradients averaged),
a progress bar with the loss, validation callbacks, atomic checkpoints and exact resume.

Resume is exact because nothing depends on hidden state: the data order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, and the noise, timesteps and dropout of step ``s`` are drawn
from generators seeded with ``(seed, s)``. A run killed after a checkpoint and started again
continues from that checkpoint's weights, optimizer and scaler state, on the same batches.
A run lives in its own folder, named by what changes its trajectory (:mod:`.runs`).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.study.config import Config
from helpers.study.files import torch_save_atomic
from helpers.study.models.runs import CHECKPOINT
from helpers.study.runtime import count_parameters, peak_memory_bytes, progress, resolve_dtype

log = logging.getLogger(__name__)




LOG_EVERY = 10   # steps between reading the loss back from the GPU (each read waits for the GPU)


# loss_fn(model, batch, generator) -> scalar loss. ``generator`` is seeded per step (device-side).
LossFn = Callable[[torch.nn.Module, dict, torch.Generator], torch.Tensor]


class EpochSampler(torch.utils.data.Sampler):
    """A permutation of range(n) fixed by (seed, epoch): the same batches after a resume."""

    def __init__(self, n: int, seed: int):
        self.n, self.seed, self.epoch = n, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


@dataclass
class TrainResult:
    history: list            # [{"step", "epoch", "loss", "grad_norm", "lr"}]
    steps: int
    seconds: float           # wall time of the steps run in this call (checkpoints, validation excluded)
    images_per_s: float
    peak_memory_bytes: int | None
    trainable_params: int
    total_params: int
    resumed_from: int        # step of the checkpoint this call started from (0 = fresh)

    def summary(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "history"}


def _trainable_state(model: torch.nn.Module) -> dict:
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k in names}


class CheckpointMismatchError(RuntimeError):
    """A checkpoint that does not belong to the model being trained; the message names the file."""


def load_checkpoint(path: Path, model: torch.nn.Module) -> dict:
    """Read a training checkpoint safely and check it belongs to ``model``.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers (a planted
    pickle cannot run code); the stored weights must be exactly the model's trainable
    parameters (for a LoRA U-Net: the adapter's own keys), with the same shapes. Anything else
    raises :class:`CheckpointMismatchError` naming the file, instead of half-loading it."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:   # UnpicklingError for foreign objects, RuntimeError/EOFError for broken files
        raise CheckpointMismatchError(
            f"checkpoint {path} cannot be loaded safely (weights_only=True: {type(e).__name__}: {e}). "
            f"It was not written by helpers.study.models.training, or is damaged: "
            f"move it away to start this run afresh.") from e
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "history"} <= set(state):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointMismatchError(f"checkpoint {path} is not a study training checkpoint (it holds {keys}); "
                                      "move it away to start this run afresh")
    expected = {n: p.shape for n, p in model.named_parameters() if p.requires_grad}
    got = {k: tuple(v.shape) for k, v in state["model"].items()}
    missing, extra = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    shapes = sorted(k for k in set(expected) & set(got) if tuple(expected[k]) != got[k])
    if missing or extra or shapes:
        def few(keys):
            return ", ".join(keys[:3]) + (f" (+{len(keys) - 3} more)" if len(keys) > 3 else "")
        parts = [f"{len(missing)} trainable parameter(s) missing: {few(missing)}" if missing else "",
                 f"{len(extra)} unknown key(s): {few(extra)}" if extra else "",
                 f"{len(shapes)} shape mismatch(es): {few(shapes)}" if shapes else ""]
        raise CheckpointMismatchError(
            f"checkpoint {path} does not match the model being trained ({'; '.join(p for p in parts if p)}): "
            "it belongs to another architecture or adapter. Move it away to start this run afresh.")
    return state


def make_accelerator(cpu: bool):
    """The ``Accelerator`` of a run: processes only (``accelerate launch`` shards the data and averages
    the gradients). Precision is the training step's own autocast and grad scaler, so the accelerator
    always runs in full precision, and a second training in the same kernel reuses Accelerate's
    process-wide state as it is (nothing of Accelerate's private state is touched)."""
    from accelerate import Accelerator

    return Accelerator(cpu=cpu)


def _batch_size_of(batch) -> int:
    """Images in a batch (the last one of an epoch may be short): the first dimension of its first tensor."""
    leaves = [v for v in (batch.values() if isinstance(batch, dict) else batch) if torch.is_tensor(v)]
    return len(leaves[0]) if leaves else 0


@dataclass
class _Loop:
    """What the loop carries between steps, and writes into a checkpoint."""
    accelerator: object
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: object
    loader: object
    params: list
    ckpt_path: Path
    step: int = 0
    history: list = field(default_factory=list)
    pending: list = field(default_factory=list)   # (step, epoch, loss, grad_norm) still on the device

    def save(self) -> None:
        self.flush()
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            torch_save_atomic({"model": _trainable_state(self.accelerator.unwrap_model(self.model)),
                               "optimizer": self.optimizer.state_dict(),
                               "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                               "step": self.step, "history": self.history}, self.ckpt_path)

    def resume(self) -> None:
        if not self.ckpt_path.is_file():
            return
        state = load_checkpoint(self.ckpt_path, self.accelerator.unwrap_model(self.model))
        # strict=False only because the frozen weights are not stored: every stored key was checked above
        self.accelerator.unwrap_model(self.model).load_state_dict(state["model"], strict=False)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step, self.history = state["step"], state["history"]
        log.info("resumed from %s at step %d", self.ckpt_path, self.step)

    def flush(self) -> None:
        """Move the pending losses into the history: one device read for several steps."""
        for s, e, loss, g in self.pending:
            self.history.append({"step": s, "epoch": e, "loss": float(loss), "grad_norm": float(g)})
        self.pending.clear()


def _setup(model, dataset, spec: Config, ckpt_dir: Path, seed: int, device: torch.device, collate_fn,
           fused_adamw: bool) -> _Loop:
    """Accelerator (processes only: precision is the step's own autocast and scaler), AdamW over the
    trainable parameters, the grad scaler for fp16, and the seeded data order."""
    on_gpu = device.type == "cuda"
    accelerator = make_accelerator(cpu=not on_gpu)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.get("weight_decay", 0.01),
                            **({"fused": True} if on_gpu and fused_adamw else {}))
    fp16 = resolve_dtype(spec.mixed_precision, device) == torch.float16
    scaler = torch.amp.GradScaler(device.type) if fp16 else None
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.batch_size, sampler=EpochSampler(len(dataset), seed),
                                         collate_fn=collate_fn, num_workers=loader_workers(spec.get("num_workers", 0)),
                                         drop_last=len(dataset) >= spec.batch_size, pin_memory=on_gpu)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    return _Loop(accelerator, model, opt, scaler, loader, params, Path(ckpt_dir) / CHECKPOINT)


def loader_workers(wanted: int) -> int:
    """The preset's ``num_workers``, at most the CPUs this process may use (more only make PyTorch warn
    and the processes compete: the masks are seeded by (seed, epoch, index), so the batches are the same)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:                      # macOS, Windows
        cpus = os.cpu_count() or 1
    return max(0, min(int(wanted), cpus))


def train(model: torch.nn.Module, loss_fn: LossFn, dataset: torch.utils.data.Dataset, spec: Config,
          ckpt_dir: Path, seed: int, device: torch.device, collate_fn=None, fused_adamw: bool = True,
          on_validate: Callable[[int], None] | None = None, desc: str = "training",
          max_steps: int | None = None, step_fn: Callable | None = None) -> TrainResult:
    """Train ``model``'s parameters that require grad with ``step_fn`` (default: the course's
    ``training_step``). ``spec``: a preset section with batch_size, lr, weight_decay, num_epochs,
    max_steps, max_grad_norm, mixed_precision, checkpoint_every, val_every, num_workers.
    ``max_steps`` (argument) stops this call early (a crash, simulated); the schedule follows ``spec``."""
    from helpers.course.ddpm_inpainting import training_step

    # 1. set up, resume from the last checkpoint if any
    run = _setup(model, dataset, spec, ckpt_dir, seed, device, collate_fn, fused_adamw)
    step_fn, acc = step_fn or training_step, run.accelerator
    steps_per_epoch = len(run.loader)
    total = min(spec.num_epochs * steps_per_epoch, spec.get("max_steps") or math.inf)
    trainable, n_total = count_parameters(acc.unwrap_model(run.model))
    run.resume()
    resumed_from, stop_at = run.step, min(total, max_steps or math.inf)
    _say_if_longer(ckpt_dir, run.step, total)
    dtype = resolve_dtype(spec.mixed_precision, device)
    bar = progress(total=total, initial=run.step, desc=desc, disable=not acc.is_local_main_process)
    images, start, paused = 0, time.perf_counter(), 0.0       # paused: checkpoints and validation, not timed
    run.model.train()
    try:
        # 2. the loop: epoch e's batches are fixed by (seed, e); a resume skips those already seen
        while run.step < stop_at:
            epoch, skip = divmod(run.step, steps_per_epoch)
            run.loader.set_epoch(epoch)            # Accelerate passes it on to our EpochSampler
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for i, batch in enumerate(run.loader):
                if i < skip:
                    continue
                if run.step >= stop_at:
                    break
                torch.manual_seed(seed * 7919 + run.step)          # dropout etc. of this step
                g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + run.step * 64 + acc.process_index)
                loss, grad_norm = step_fn(run.model, batch, loss_fn, run.optimizer, g, spec.max_grad_norm,
                                          dtype, run.scaler)
                run.step += 1
                images += _batch_size_of(batch) * acc.num_processes
                # the logged loss is the mean over every process's share of the global batch
                run.pending.append((run.step, epoch, acc.reduce(loss, "mean") if acc.num_processes > 1 else loss,
                                    grad_norm))
                bar.update(1)
                paused += _between_steps(run, spec, bar, on_validate)
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: checkpoint saved to %s", run.step, run.ckpt_path)
        run.save()
        raise
    finally:
        bar.close()
    # 3. the last checkpoint, the run's numbers
    seconds = time.perf_counter() - start - paused
    run.save()
    run.model.eval()
    return TrainResult(history=run.history, steps=run.step, seconds=seconds,
                       images_per_s=images / seconds if images else 0.0, peak_memory_bytes=peak_memory_bytes(device),
                       trainable_params=trainable, total_params=n_total, resumed_from=resumed_from)


def _say_if_longer(ckpt_dir: Path, done: int, asked: float) -> None:
    """The run's length is not in its fingerprint (a longer run resumes a shorter one): a finished run longer than
    the budget asked is used as it is, and the warning says so."""
    if done > asked:
        log.warning("%s has trained %d steps, more than the %d asked: its weights are those of %d steps (a shorter "
                    "run needs a folder of its own: move this one away)", ckpt_dir, done, asked, done)


def _between_steps(run: _Loop, spec: Config, bar, on_validate) -> float:
    """Logging, checkpoint and validation after a step; returns the seconds they took (not timed)."""
    t0 = time.perf_counter()
    if run.step % LOG_EVERY == 0:
        run.flush()
        bar.set_postfix(loss=f"{run.history[-1]['loss']:.4f}", epoch=run.history[-1]["epoch"])
    if spec.get("checkpoint_every") and run.step % spec.checkpoint_every == 0:
        run.save()
    if on_validate is not None and spec.get("val_every") and run.step % spec.val_every == 0:
        run.model.eval()
        on_validate(run.step)
        run.model.train()
    return time.perf_counter() - t0


def finish_run(result: TrainResult, ckpt: Path, max_steps: int | None, extra: dict | None = None) -> dict:
    """The statistics of a training call, saved as <run folder>/train_stats.json; a call that found the
    run finished returns the statistics of the call that did the steps."""
    from accelerate import PartialState

    from helpers.study.files import load_json, save_json

    stats_path = Path(ckpt) / "train_stats.json"
    if result.steps > result.resumed_from or not stats_path.is_file():
        stats = {**result.summary(), **(extra or {}), "history": result.history,
                 "note": ((f"resumed at step {result.resumed_from}; speed measured on the remaining steps"
                           if result.resumed_from else "one uninterrupted call")
                          + (f"; stopped at step {result.steps} by max_steps={max_steps}: run again to continue"
                             if max_steps is not None and result.steps >= max_steps else ""))}
        if PartialState().is_main_process:
            save_json(stats, stats_path)
        return stats
    stats = load_json(stats_path)
    stats["note"] = f"loaded: training had already finished ({stats['steps']} steps) in an earlier run"
    stats["reused"] = True
    stats["history"] = result.history
    return stats
