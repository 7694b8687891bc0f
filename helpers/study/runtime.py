"""Runtime plumbing: devices, seeds, per-image noise, mixed precision, timing and memory, progress bars.

Conventions (value ranges, mask polarity) are stated in ``helpers/__init__.py``."""
from __future__ import annotations

import logging
import os
import random
import time
import zlib
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from helpers.study.config import Config

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- devices and seeds
def get_device(cfg: Config | None = None) -> torch.device:
    """``cfg.device``: ``auto`` picks CUDA when present. Asking for CUDA without one is an error.
    Under ``accelerate launch`` (LOCAL_RANK set) each process gets its own GPU."""
    want = (cfg.device if cfg is not None else "auto") or "auto"
    if want == "auto":
        want = "cuda" if torch.cuda.is_available() else "cpu"
    if want.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"config asks for device {want!r} but no CUDA GPU is visible; "
                           "use device: auto or cpu")
    device = torch.device(want)
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator started from the same seed."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def image_seeds(seed: int, names) -> list[int]:
    """One seed per image, from the preset seed and the image's name: a method draws the same noise
    for an image whatever the batch size, the order or the subset it runs on."""
    return [(seed * 1_000_003 + zlib.crc32(str(n).encode())) % 2**63 for n in names]


def resolve_dtype(mixed_precision: str, device: torch.device) -> torch.dtype:
    """``fp16``/``bf16``/``no`` -> the autocast dtype; the CPU always runs fp32."""
    if device.type != "cuda" or mixed_precision in (None, "no", "fp32"):
        return torch.float32
    return {"fp16": torch.float16, "bf16": torch.bfloat16}[mixed_precision]


def to_device_nowait(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor to ``device`` without making the CPU wait: on CUDA through pinned memory with
    ``non_blocking`` (a plain host-to-GPU copy first waits for all the GPU's queued work)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


# ---------------------------------------------------------------- speed and memory
def count_parameters(module: torch.nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in module.parameters())
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, total


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_bytes(device: torch.device) -> int | None:
    """Peak CUDA memory since the last reset; ``None`` on the CPU (not measured there)."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return None


@contextmanager
def timed(device: torch.device | None = None) -> Iterator[dict]:
    """``with timed(dev) as t: ...`` then ``t["seconds"]`` (synchronises CUDA around the block)."""
    out: dict = {}
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    try:
        yield out
    finally:
        if device is not None and device.type == "cuda":
            torch.cuda.synchronize(device)
        out["seconds"] = time.perf_counter() - start


def _text_progress_class():
    from tqdm.std import tqdm

    class TextProgress(tqdm):
        """A tqdm bar that writes whole lines: no carriage returns, no cursor moves (ANSI codes), so a
        notebook saved by the report runner holds one readable line per report instead of every
        redraw as a separate fragment. A bar with ``leave=False`` (an inner loop) stays silent; an
        outer bar writes a line after ``INPAINT_PROGRESS_INTERVAL`` seconds (default 60), then after
        twice as long each time (capped at 30 minutes: a long training run logs a few lines, not
        hundreds), and a last one when it closes."""

        def __init__(self, *args, **kwargs):
            self._line_every = float(os.environ.get("INPAINT_PROGRESS_INTERVAL", 60))
            self._last_line = time.monotonic()
            super().__init__(*args, **kwargs)

        def display(self, msg=None, pos=None):
            now = time.monotonic()
            if self.leave is False or self.n == 0 or now - self._last_line < self._line_every:
                return True
            self._last_line = now
            self._line_every = min(2 * self._line_every, 1800.0)
            self.fp.write(self.__str__() + "\n")
            self.fp.flush()
            return True

        def close(self):
            if getattr(self, "disable", True):
                return
            line = self.__str__() if self.leave is not False and self.n > 0 else None
            self.disable = True
            self._decr_instances(self)
            if line:
                self.fp.write(line + "\n")
                self.fp.flush()

    return TextProgress


def progress(iterable=None, **kwargs):
    """A tqdm progress bar: a widget in an interactive notebook, a bar redrawn in place in a
    terminal, and whole text lines in notebooks run by the report runner (it sets
    INPAINT_TEXT_PROGRESS): a saved notebook or log then shows one line per bar, not dozens of
    redraw fragments with cursor codes. Inner loops pass ``leave=False``: they stay quiet there."""
    if os.environ.get("INPAINT_TEXT_PROGRESS"):
        bar = _text_progress_class()
        kwargs.setdefault("ncols", 80)
    else:
        from tqdm.auto import tqdm as bar
        kwargs.setdefault("dynamic_ncols", True)
    kwargs.setdefault("mininterval", 1.0)
    return bar(iterable, **kwargs)


# ====================================================================== 6. sampling
class SeededNoise:
    """Gaussian noise from one CPU generator per image: a fixed seed gives the same image whatever
    the batch size or device."""

    def __init__(self, seeds: Sequence[int]):
        self.generators = [torch.Generator().manual_seed(int(s)) for s in seeds]

    def __call__(self, shape_chw: Sequence[int], device, dtype=torch.float32) -> torch.Tensor:
        z = torch.stack([torch.randn(tuple(shape_chw), generator=g) for g in self.generators])
        # a plain copy would make the host wait for the GPU at every draw (RePaint draws 2-3 times a step)
        return to_device_nowait(z, device, dtype)


def autocast(device: torch.device, dtype: torch.dtype):
    """``torch.autocast`` for fp16 / bf16; nothing for fp32."""
    return torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()


def release_memory(device: torch.device) -> None:
    """Free what a finished training left behind (Accelerate's optimizer wrapper sits in a reference
    cycle: its AdamW state, twice the model's size, would stay on the GPU and inflate the next peak)."""
    import gc

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
