"""Files: output folders of a preset, image files, and saves that survive a crash (write a temporary
file or folder, then rename it into place)."""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from helpers.study.config import ROOT, Config

log = logging.getLogger(__name__)


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

    def relative(self, path) -> str:
        """``path`` as printed in a notebook: relative to the project root, never a machine path."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return Path(path).name

    def shown(self, path) -> str:
        """``path`` (or a hub id) as printed: :func:`shown_path` with this root."""
        return shown_path(path, self.root)

    def predictions(self, method: str) -> Path:
        """Folder of one method's test-set predictions: <name>.png + meta.json."""
        return self.reports / "predictions" / method

    def ensure(self) -> Paths:
        for p in (self.data, self.cache, self.figures, self.tables, self.models):
            p.mkdir(parents=True, exist_ok=True)
        return self


def paths(cfg: Config, root: Path | None = None) -> Paths:
    """Output folders of a preset; ``root`` defaults to the repository (env INPAINT_ROOT wins)."""
    root = Path(root or os.environ.get("INPAINT_ROOT") or ROOT)
    return Paths(root=root, preset=cfg.preset).ensure()


def shown_path(path, root: Path | None = None) -> str:
    """A path (or a hub id) as notebooks, logs and meta files print it, never a machine path: inside
    the run's root (``root``, else env INPAINT_ROOT, else the project) or the project, relative to it;
    a file of an installed package as ``package <name>/...``; a path in the home folder as ``~/...``;
    anything else (a hub id, a folder elsewhere) unchanged."""
    import sys

    text = str(path)
    p = Path(text).expanduser()
    if not p.is_absolute():
        return text
    p = p.resolve()
    # an installed package first: the virtual environment may sit inside the project (.venv)
    for site in sorted((s for s in sys.path if s.rstrip("/").endswith("site-packages")), key=len, reverse=True):
        if p.is_relative_to(Path(site).resolve()):
            return "package " + p.relative_to(Path(site).resolve()).as_posix()
    for base in (Path(root or os.environ.get("INPAINT_ROOT") or ROOT), ROOT):
        if p.is_relative_to(base.resolve()):
            return p.relative_to(base.resolve()).as_posix() or "."
    home = Path.home().resolve()
    if p.is_relative_to(home) and p != home:
        return "~/" + p.relative_to(home).as_posix()
    return text


def shown_paths(obj, root: Path | None = None):
    """``obj`` (dicts, lists, strings, numbers) with every absolute path string as :func:`shown_path`
    shows it: what a file people read (a table, the manifest) stores instead of machine paths."""
    if isinstance(obj, dict):
        return {k: shown_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [shown_paths(v, root) for v in obj]
    if isinstance(obj, str) and obj.startswith(("/", "~")):
        return shown_path(obj, root)
    return obj


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
    which holds the GIL, so threads only add contention (measured by ``helpers.tools.bench``, eval rows)."""
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


# ====================================================================== 7. fine-tuning
def swap_in(stage: Path, live: Path, parts: Sequence[str]) -> None:
    """Move ``parts`` (files or folders) of the complete ``stage`` folder into ``live``, replacing the
    ones there, then remove ``stage``: the one folder swap of the project (a crash never leaves half a
    data set or half a model). The last part is the marker that says the rest is whole (an index, a
    model folder): the old one goes first and the new one lands last, so a crash in between leaves no
    marker ("build it again"), never a marker beside missing files."""
    stage, live = Path(stage), Path(live)
    old = stage.with_name(stage.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    old.mkdir(parents=True)
    live.mkdir(parents=True, exist_ok=True)
    *rest, marker = parts
    if (live / marker).exists():
        os.replace(live / marker, old / marker)
    for part in rest:
        if (live / part).exists():
            os.replace(live / part, old / part)
        os.replace(stage / part, live / part)
    os.replace(stage / marker, live / marker)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def save_pretrained_atomic(model, folder: Path) -> None:
    """save_pretrained into a staging folder beside ``folder``, then :func:`swap_in`."""
    folder = Path(folder)
    stage = folder.with_name(f".{folder.name}.staging")
    shutil.rmtree(stage, ignore_errors=True)
    model.save_pretrained(str(stage / folder.name))
    swap_in(stage, folder.parent, [folder.name])
