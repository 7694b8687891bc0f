"""Shared plumbing: devices, seeds, output folders, image files, atomic saves, timing.

Used by every notebook; conventions (value ranges, mask polarity) are stated in helpers/__init__.py.
"""
from __future__ import annotations

import json
import os
import random
import tempfile
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from .config import ROOT, Config


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


# ---------------------------------------------------------------- output folders
@dataclass(frozen=True)
class Paths:
    """Where a preset reads and writes. Everything here is ignored by git."""
    root: Path

    preset: str

    @property
    def data(self) -> Path:          # prepared images, frozen test masks, captions
        return self.root / "data" / self.preset

    @property
    def cache(self) -> Path:         # hub downloads, weights placed by hand
        return self.root / "data" / "cache"

    @property
    def reports(self) -> Path:       # executed notebooks, figures, tables, HTML, slides
        return self.root / "reports" / self.preset

    @property
    def figures(self) -> Path:
        return self.reports / "figures"

    @property
    def tables(self) -> Path:
        return self.reports / "tables"

    @property
    def models(self) -> Path:        # checkpoints and trained weights
        return self.reports / "models"

    def predictions(self, method: str) -> Path:
        """Folder of one method's test-set predictions: <name>.png + meta.json."""
        return self.reports / "predictions" / method

    def ensure(self) -> "Paths":
        for p in (self.data, self.cache, self.figures, self.tables, self.models):
            p.mkdir(parents=True, exist_ok=True)
        return self


# The preset whose output folders were opened last: figures made now belong to it
# (helpers.plots.save stamps every figure of the smoke preset).
ACTIVE_PRESET: str | None = None


def paths(cfg: Config, root: Path | None = None) -> Paths:
    """Output folders of a preset; ``root`` defaults to the repository (env INPAINT_ROOT wins).
    Also makes ``cfg.preset`` the active preset (:data:`ACTIVE_PRESET`)."""
    global ACTIVE_PRESET
    ACTIVE_PRESET = cfg.preset
    root = Path(root or os.environ.get("INPAINT_ROOT") or ROOT)
    return Paths(root=root, preset=cfg.preset).ensure()


# ---------------------------------------------------------------- image <-> tensor
def to_tensor(img: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float (3, H, W) in [-1, 1]."""
    if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
        raise ValueError(f"expected uint8 HxWx3, got {img.dtype} {img.shape}")
    return torch.from_numpy(np.array(img, copy=True)).permute(2, 0, 1).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float (3, H, W) or (N, 3, H, W) in [-1, 1] -> uint8 HxWx3 (or NxHxWx3), rounded."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return x.permute(0, 2, 3, 1).numpy() if x.ndim == 4 else x.permute(1, 2, 0).numpy()


def save_png(x: torch.Tensor | np.ndarray, path: Path) -> None:
    """Save an image tensor in [-1, 1] (or a uint8 array) as PNG, atomically."""
    arr = to_uint8(x) if isinstance(x, torch.Tensor) else x
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def load_png(path: Path) -> torch.Tensor:
    """Read an RGB PNG written by :func:`save_png` -> (3, H, W) in [-1, 1]."""
    with Image.open(path) as im:
        return to_tensor(np.asarray(im.convert("RGB")))


def to_device_nowait(t: torch.Tensor, device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A CPU tensor to ``device`` without making the CPU wait: on CUDA through pinned memory with
    ``non_blocking`` (a plain host-to-GPU copy first waits for all the GPU's queued work)."""
    if torch.device(device).type == "cuda":
        return t.pin_memory().to(device, dtype, non_blocking=True)
    return t.to(device, dtype)


def parallel_map(fn: Callable, items: Sequence, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` on a pool of threads, in order. For file decoding: Pillow releases
    the GIL while it inflates a PNG, so the threads use every core (``workers`` default: the cores)."""
    items = list(items)
    workers = workers or min(32, os.cpu_count() or 1)
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    return list(_thread_pool(workers).map(fn, items))


_POOLS: dict = {}


def _thread_pool(workers: int):
    """One pool per size for the whole process: starting threads at every call costs more than
    decoding a batch of small images."""
    from concurrent.futures import ThreadPoolExecutor

    if workers not in _POOLS:
        _POOLS[workers] = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    return _POOLS[workers]


def load_pngs(paths: Sequence[Path], workers: int | None = None) -> torch.Tensor:
    """Many PNGs of one size -> (N, 3, H, W) in [-1, 1], decoded in parallel (:func:`parallel_map`).

    Small images (under 128x128) are decoded in this thread: their decoding is mostly Python,
    which holds the GIL, so threads only add contention (measured by ``helpers.bench``, eval rows)."""
    paths = list(paths)
    return torch.stack(parallel_map(load_png, paths, workers or (png_workers(paths[0]) if paths else 1)))


def png_workers(example: Path) -> int | None:
    """Threads for decoding PNGs like ``example``: one below 128x128 pixels (small images decode
    mostly in Python, which holds the GIL: threads only add contention), else the default pool."""
    with Image.open(example) as im:
        return 1 if im.size[0] * im.size[1] < 128 * 128 else None


def save_mask_png(mask: torch.Tensor | np.ndarray, path: Path) -> None:
    """Mask {0,1} (H, W) or (1, H, W) -> 8-bit PNG, 255 = hole."""
    m = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
    m = m.reshape(m.shape[-2:])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray((m > 0.5).astype(np.uint8) * 255).save(tmp, format="PNG")


# ---------------------------------------------------------------- files that survive a crash
@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(obj: Any, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")


def load_json(path: Path) -> Any:
    return json.loads(Path(path).read_text())


def torch_save_atomic(obj: Any, path: Path) -> None:
    with atomic_path(Path(path)) as tmp:
        torch.save(obj, tmp)


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


# ---------------------------------------------------------------- the code a notebook teaches
def show_source(*objs):
    """Show functions (or classes, methods) of the helpers as highlighted Python, exactly as they
    run, each under its file and line numbers in the repository: notebooks 03 and 04 put the
    training step and the sampling loop under the equations they implement."""
    import inspect
    import textwrap

    from IPython.display import Markdown

    blocks = []
    for obj in objs:
        obj = inspect.unwrap(obj)   # a decorated function (torch.no_grad) names its own file, not the decorator's
        lines, first = inspect.getsourcelines(obj)
        file = Path(inspect.getsourcefile(obj)).resolve()
        try:
            where = file.relative_to(Path(ROOT).resolve()).as_posix()
        except ValueError:                      # an installed copy: name the module, never a machine path
            where = f"{obj.__module__.replace('.', '/')}.py"
        src = textwrap.dedent("".join(lines)).rstrip()
        blocks.append(f"`{where}`, lines {first}-{first + len(lines) - 1}:\n\n```python\n{src}\n```")
    return Markdown("\n\n".join(blocks))
