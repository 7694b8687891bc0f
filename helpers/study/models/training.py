"""The study's training loop, shared by both methods (notebooks 03 and 04).

It runs the step the course teaches (:func:`helpers.course.ddpm_inpainting.training_step`: forward
under autocast, backward through a grad scaler for fp16, clip, AdamW step) and adds what a long run
needs: Accelerate for several processes (``accelerate launch``: data sharded, gradients averaged),
a progress bar with the loss, validation callbacks, atomic checkpoints and exact resume.

Resume is exact because nothing depends on hidden state: the data order of epoch ``e`` is a
permutation drawn from ``(seed, e)``, and the noise, timesteps and dropout of step ``s`` are drawn
from generators seeded with ``(seed, s)``. A run killed after a checkpoint and started again
continues from that checkpoint's weights, optimizer and scaler state, on the same batches.
A run lives in its own folder, named by :func:`run_fingerprint` of what changes its trajectory.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import logging
import math
import os
import time
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from helpers.study.config import Config
from helpers.study.files import torch_save_atomic
from helpers.study.runtime import count_parameters, peak_memory_bytes, progress, resolve_dtype

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


def run_fingerprint(cfg: Config, section: str, keys, **extra) -> str:
    """Hash of what determines a training run: the seed, the data settings, the section's ``keys`` of the
    preset and ``extra`` (:func:`run_inputs`, captions). Not the run's length, so a longer run resumes."""
    blob = {"seed": cfg.seed, "data": cfg.data, section: {k: cfg[section].get(k) for k in keys}, **extra}
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()[:12]


# ---------------------------------------------------------------- what a run reads: data and base weights
def run_inputs(data_folder: Path, weights: str) -> dict[str, str]:
    """What a run reads besides the preset and its code, by content: ``data``, the prepared data set's
    fingerprint (index.json: its settings and input files, written by notebook 01); ``weights``, the base
    weights (:func:`weights_fingerprint`). New shipped stand-ins or a re-prepared data set start a new run
    instead of resuming one trained on the old ones."""
    index = Path(data_folder) / "index.json"
    data = json.loads(index.read_text()).get("fingerprint", "?") if index.is_file() else "not prepared"
    return {"data": data, "weights": weights_fingerprint(weights)}


def weights_fingerprint(source: str) -> str:
    """A local weights folder by its files' content (sha256 of each file's bytes; a file linked into the hub's
    cache by its blob's name, which is its hash): the same weights give the same fingerprint wherever the
    folder lies. A hub id is taken as named."""
    folder = Path(str(source)).expanduser()
    if not folder.is_dir():
        return str(source)
    files = sorted(f for f in folder.rglob("*") if f.is_file() and not any(
        part.startswith(".") for part in f.relative_to(folder).parts))
    stamp = tuple((str(f.relative_to(folder)), st.st_size, st.st_mtime_ns) for f in files for st in [f.stat()])
    return _folder_digest(str(folder), stamp)


@functools.lru_cache(maxsize=16)
def _folder_digest(folder: str, stamp: tuple) -> str:
    """sha256 over (name, content hash) of the files listed in ``stamp`` (names, sizes, mtimes: the cache key,
    so an unchanged folder is read once per process)."""
    h = hashlib.sha256()
    for rel, _, _ in stamp:
        f = Path(folder) / rel
        if f.is_symlink():                          # the hub's cache: snapshots/<rev>/x -> blobs/<sha256>
            digest = Path(os.readlink(f)).name
        else:
            with f.open("rb") as fh:
                digest = hashlib.file_digest(fh, "sha256").hexdigest()
        h.update(f"{rel}\0{digest}\n".encode())
    return "sha256:" + h.hexdigest()[:16]


# ---------------------------------------------------------------- what a run runs: its code
RUN_RECORD = "run.json"     # <run folder>/run.json: the settings' and the code's hashes of the run
WHAT = {"data": "prepared data", "weights": "base weights"}   # run_inputs' keys, as announce_run names them


def code_fingerprint(*fns) -> str:
    """Hash of the code a run would execute: the source of each function passed in (a notebook cell's
    or the package's) and, followed through its global names, closures and ``functools.partial``
    arguments, of every function it calls that the notebook (``__main__``) or :mod:`helpers.course`
    defines, recursively. torch, diffusers and the rest are not followed (the environment's versions).
    An edited cell, or an edited course function it calls, gives another fingerprint; the same code
    gives the same one, wherever it is defined (a taught cell and its copy in the package share their
    runs). Without a source (``exec``), the code object is hashed."""
    h, seen = hashlib.sha256(), set()
    for fn in fns:
        for piece in _code_pieces(fn, seen, top=True):
            h.update(piece.encode())
    return h.hexdigest()[:12]


def code_hashes(**fns) -> dict[str, str]:
    """{name: :func:`code_fingerprint` of that function}: what a run records, to say later which one changed."""
    return {name: code_fingerprint(fn) for name, fn in fns.items()}


def _followed(fn) -> bool:
    module = getattr(fn, "__module__", None) or ""
    return module == "__main__" or module.startswith("helpers.course")


def _code_pieces(obj, seen: set, top: bool = False):
    """The source texts of ``obj`` (a function, partial or bound method) and of what it reaches."""
    if isinstance(obj, functools.partial):
        for part in (obj.func, *obj.args, *obj.keywords.values()):
            yield from _code_pieces(part, seen, top)
        return
    fn = getattr(obj, "__func__", obj)                    # a bound method: its function
    fn = inspect.unwrap(fn) if isinstance(fn, types.FunctionType) else fn   # @torch.no_grad and the like
    if not isinstance(fn, types.FunctionType) or id(fn) in seen or not (top or _followed(fn)):
        return
    seen.add(id(fn))
    yield f"{fn.__qualname__}\n{_source(fn)}"           # not the module: a taught cell hashes as its package copy
    for name in sorted(_global_names(fn.__code__)):
        if name in fn.__globals__:
            yield from _code_pieces(fn.__globals__[name], seen)
    for cell in fn.__closure__ or ():
        try:
            yield from _code_pieces(cell.cell_contents, seen)
        except ValueError:                                # an empty cell
            continue


def _global_names(code: types.CodeType) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):            # nested functions, lambdas, comprehensions
            names |= _global_names(const)
    return names


def _source(fn: types.FunctionType) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return _code_text(fn.__code__)


def _code_text(code: types.CodeType) -> str:
    consts = [_code_text(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts]
    return f"{code.co_code.hex()}|{consts}|{code.co_names}|{code.co_varnames}"


def announce_run(folder: Path, settings: str, code: dict[str, str], inputs: dict[str, str] | None = None) -> str:
    """Say which run a training call continues or starts, and why (printed once, returned), and record
    the run's ``settings`` fingerprint (the preset's keys, without the inputs), ``code`` hashes and ``inputs``
    (:func:`run_inputs`) in <folder>/run.json for the next call. A new run is compared with the latest earlier
    one of the same settings: the note names the code and the inputs that differ from it."""
    from accelerate import PartialState

    from helpers.study.files import load_json, save_json

    shown, names = f"{folder.parent.name}/{folder.name}", ", ".join(code)
    inputs = inputs or {}
    if (folder / CHECKPOINT).is_file():
        note = f"reusing the run in {shown}: same settings and same code ({names}) as its checkpoint"
    else:
        earlier = [p for p in folder.parent.glob(f"*/{RUN_RECORD}") if p.parent != folder]
        earlier = [(p, load_json(p)) for p in sorted(earlier, key=lambda p: p.stat().st_mtime, reverse=True)]
        same = [(p, r) for p, r in earlier if r.get("settings") == settings]
        note = f"new run in {shown}: no earlier run with these settings and this code ({names})"
        if same:
            p, record = same[0]
            code_changed = [k for k in code if record.get("code", {}).get(k) != code[k]]
            moved = [WHAT.get(k, k) for k in inputs if (record.get("inputs") or {}).get(k) != inputs[k]]
            other = f"{folder.parent.name}/{p.parent.name}"
            if code_changed:
                note = (f"the code differs from the previous run in {other} ({', '.join(code_changed)} changed)"
                        + (f", and so do the {' and the '.join(moved)}" if moved else "")
                        + f": training starts anew in {shown}")
            elif moved:
                note = f"new run in {shown}: the {' and the '.join(moved)} differ from those of the run in {other}"
    if PartialState().is_main_process:
        save_json({"settings": settings, "code": code, "inputs": inputs}, folder / RUN_RECORD)
        print(note)
    return note


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
