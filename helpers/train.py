"""One training loop for both methods (notebooks 03 and 04).

Accelerate (so ``accelerate launch`` spreads it over several GPUs), mixed precision from the
preset (fp16 with a grad scaler or bf16 on a GPU, fp32 on the CPU), AdamW on the trainable
parameters only, gradient-norm clipping, a progress bar with the loss, validation callbacks,
atomic checkpoints and exact resume.

Resume is exact because nothing depends on hidden state: the data order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, and the noise, timesteps and dropout of step ``s`` are
drawn from generators seeded with ``(seed, s)``. A run killed after a checkpoint and started
again continues from that checkpoint's weights, optimizer and scaler state, on the same batches.
"""
from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .common import count_parameters, peak_memory_bytes, progress, reset_peak_memory, torch_save_atomic
from .config import Config

log = logging.getLogger(__name__)
CHECKPOINT = "last.pt"
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
            f"It was not written by helpers.train, or is damaged: move it away to start this run afresh.") from e
    if not isinstance(state, dict) or not {"model", "optimizer", "step", "history"} <= set(state):
        keys = sorted(state) if isinstance(state, dict) else type(state).__name__
        raise CheckpointMismatchError(f"checkpoint {path} is not a helpers.train checkpoint (it holds {keys}); "
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


def make_accelerator(mixed_precision: str, cpu: bool):
    """An ``Accelerator`` with this precision and device, even when an earlier one in the same
    process (another training in the same notebook kernel) used different ones.

    Accelerate keeps its state in a process-wide singleton and refuses a second precision. In a
    single process nothing else holds on to that state between two trainings, so it is reset; under
    ``accelerate launch`` (several processes) it is left alone, as Accelerate requires."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    shared = AcceleratorState._shared_state
    if shared and shared.get("num_processes", 1) == 1:
        same_device = (shared["device"].type == "cpu") == cpu if "device" in shared else False
        if shared.get("_mixed_precision") != mixed_precision or not same_device:
            AcceleratorState._reset_state(reset_partial_state=True)
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _batch_size_of(batch) -> int:
    """Images in a batch (the last one of an epoch may be short): the first dimension of its first tensor."""
    leaves = [v for v in (batch.values() if isinstance(batch, dict) else batch) if torch.is_tensor(v)]
    return len(leaves[0]) if leaves else 0


def train(model: torch.nn.Module, loss_fn: LossFn, dataset: torch.utils.data.Dataset, spec: Config,
          ckpt_dir: Path, seed: int, device: torch.device, collate_fn=None, fused_adamw: bool = True,
          on_validate: Callable[[int], None] | None = None, desc: str = "training",
          max_steps: int | None = None) -> TrainResult:
    """Train ``model``'s parameters that require grad.

    ``spec`` is a preset section with batch_size, lr, weight_decay (optional), num_epochs,
    max_steps, max_grad_norm, mixed_precision, checkpoint_every, val_every (optional),
    num_workers. ``max_steps`` (argument) stops this call early, e.g. to simulate a crash; the
    schedule still follows ``spec``.
    """
    # 1. accelerator, optimizer over trainable parameters only, seeded data order
    on_gpu = device.type == "cuda"
    accelerator = make_accelerator(spec.mixed_precision if on_gpu else "no", cpu=not on_gpu)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no parameter with requires_grad=True: nothing to train")
    opt = torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.get("weight_decay", 0.01),
                            **({"fused": True} if on_gpu and fused_adamw else {}))
    sampler = EpochSampler(len(dataset), seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=spec.batch_size, sampler=sampler,
                                         collate_fn=collate_fn, num_workers=spec.get("num_workers", 0),
                                         drop_last=len(dataset) >= spec.batch_size, pin_memory=on_gpu)
    model, opt, loader = accelerator.prepare(model, opt, loader)
    steps_per_epoch = len(loader)
    total = spec.num_epochs * steps_per_epoch
    if spec.get("max_steps"):
        total = min(total, spec.max_steps)
    trainable, n_total = count_parameters(accelerator.unwrap_model(model))

    # 2. resume from the last checkpoint, if any
    ckpt_dir = Path(ckpt_dir)
    ckpt_path = ckpt_dir / CHECKPOINT
    step, history = 0, []
    if ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, accelerator.unwrap_model(model))
        # strict=False only because the frozen weights are not stored: every stored key was checked above
        accelerator.unwrap_model(model).load_state_dict(state["model"], strict=False)
        opt.load_state_dict(state["optimizer"])
        if accelerator.scaler is not None and state.get("scaler"):
            accelerator.scaler.load_state_dict(state["scaler"])
        step, history = state["step"], state["history"]
        log.info("resumed from %s at step %d", ckpt_path, step)
    resumed_from = step

    def save_checkpoint() -> None:
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            torch_save_atomic({"model": _trainable_state(accelerator.unwrap_model(model)),
                               "optimizer": opt.state_dict(),
                               "scaler": accelerator.scaler.state_dict() if accelerator.scaler else None,
                               "step": step, "history": history}, ckpt_path)

    # 3. the loop: epoch e's batches are fixed by (seed, e); a resume skips those already seen
    stop_at = total if max_steps is None else min(total, max_steps)
    reset_peak_memory(device)
    images, start, paused = 0, time.perf_counter(), 0.0   # paused: checkpoints and validation, not timed
    pending: list = []   # (step, epoch, loss, grad_norm) still on the device: read every LOG_EVERY steps

    def flush() -> None:
        """Move the pending losses into the history (one device sync for several steps)."""
        for s_, e_, l_, g_ in pending:
            history.append({"step": s_, "epoch": e_, "loss": float(l_),
                            "grad_norm": float(g_) if g_ is not None else math.nan})
        pending.clear()
        if history:
            bar.set_postfix(loss=f"{history[-1]['loss']:.4f}", epoch=history[-1]["epoch"])
    bar = progress(total=total, initial=step, desc=desc, disable=not accelerator.is_local_main_process)
    model.train()
    try:
        while step < stop_at:
            epoch, skip = divmod(step, steps_per_epoch)
            loader.set_epoch(epoch)        # Accelerate passes it on to our EpochSampler
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
            for i, batch in enumerate(loader):
                if i < skip:                   # already trained on before the resume
                    continue
                if step >= stop_at:
                    break
                torch.manual_seed(seed * 7919 + step)          # dropout etc. of this step
                g = torch.Generator(device=device).manual_seed(seed * 1_000_003 + step * 64 + accelerator.process_index)
                with accelerator.autocast():
                    loss = loss_fn(model, batch, g)
                accelerator.backward(loss)
                grad_norm = accelerator.clip_grad_norm_(params, spec.max_grad_norm)
                opt.step()
                opt.zero_grad(set_to_none=True)
                step += 1
                images += _batch_size_of(batch) * accelerator.num_processes
                # the logged loss is the mean over every process's share of the global batch
                logged = accelerator.reduce(loss.detach(), "mean") if accelerator.num_processes > 1 else loss.detach()
                pending.append((step, epoch, logged, grad_norm.detach() if torch.is_tensor(grad_norm) else grad_norm))
                bar.update(1)
                if step % LOG_EVERY == 0:
                    flush()
                t_pause = time.perf_counter()
                if spec.get("checkpoint_every") and step % spec.checkpoint_every == 0:
                    flush()
                    save_checkpoint()
                if on_validate is not None and spec.get("val_every") and step % spec.val_every == 0:
                    model.eval()
                    on_validate(step)
                    model.train()
                paused += time.perf_counter() - t_pause
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: checkpoint saved to %s", step, ckpt_path)
        flush()
        save_checkpoint()
        raise
    finally:
        bar.close()
    flush()
    seconds = time.perf_counter() - start - paused
    save_checkpoint()
    model.eval()
    return TrainResult(history=history, steps=step, seconds=seconds,
                       images_per_s=images / seconds if images else 0.0,
                       peak_memory_bytes=peak_memory_bytes(device), trainable_params=trainable,
                       total_params=n_total, resumed_from=resumed_from)
