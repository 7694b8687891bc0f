"""Prediction files shared by all methods: a method's test-set predictions as PNG (lossless: JPEG
would change FID) with a meta.json beside them, written once and read by the evaluation, the figures
and the demo."""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch

from helpers.study.config import Config
from helpers.study.files import load_json, load_pngs, paths, save_json, save_png
from helpers.study.methods import method_label, notebook_of


# ---------------------------------------------------------------- predictions shared by all methods
def write_predictions(cfg: Config, method: str, names: Iterable[str], images: torch.Tensor | list,
                      meta: dict | None = None, root: Path | None = None) -> Path:
    """Save a method's test-set predictions as PNG (lossless: JPEG would change FID) + meta.json.

    ``images`` are (N, 3, H, W) in [-1, 1] at the data resolution, known pixels already composited.
    ``meta`` records the weights used and runtime (seconds_per_image, images_per_s,
    peak_memory_bytes, trainable_params...). Existing meta keys are kept unless overwritten.
    """
    label = method_label(method)             # ValueError for an unknown method
    out = paths(cfg, root).predictions(method)
    names = list(names)
    for name, img in zip(names, images):
        save_png(img, out / f"{name}.png")
    meta_path = out / "meta.json"
    merged = load_json(meta_path) if meta_path.is_file() else {}
    merged.update({"method": method, "label": label, "preset": cfg.preset,
                   "resolution": cfg.data.image_size, **(meta or {})})
    merged["n_images"] = len(list(out.glob("*.png")))
    save_json(merged, meta_path)
    return out


def read_predictions(cfg: Config, method: str, names: Iterable[str],
                     root: Path | None = None) -> tuple[torch.Tensor, dict]:
    """Load a method's predictions for ``names`` -> ((N, 3, H, W), meta). Missing files raise
    ``FileNotFoundError`` naming the method, how many are missing and which notebook writes them."""
    out = paths(cfg, root).predictions(method)
    names = list(names)
    missing = [n for n in names if not (out / f"{n}.png").is_file()]
    if missing:
        raise FileNotFoundError(f"method {method!r}: {len(missing)} of {len(names)} prediction files missing in "
                                f"{out} (e.g. {missing[0]}.png); run the notebook that produces them")
    meta = load_json(out / "meta.json") if (out / "meta.json").is_file() else {"method": method}
    return load_pngs([out / f"{n}.png" for n in names]), meta


def read_meta(cfg: Config, method: str, root: Path | None = None) -> dict:
    """The meta.json of a method's predictions ({} when it has none): the weights, settings and sizes
    of the model that actually ran (e.g. ``latent_px`` of the SD methods)."""
    path = paths(cfg, root).predictions(method) / "meta.json"
    return load_json(path) if path.is_file() else {}


def files_stamp(cfg: Config, method: str, root: Path | None = None) -> tuple:
    """(name, size, mtime_ns) of every file of a method's prediction folder: equal stamps, unchanged files."""
    folder = paths(cfg, root).predictions(method)
    if not folder.is_dir():
        return ()
    return tuple(sorted((f.name, st.st_size, st.st_mtime_ns) for f in folder.iterdir() if f.is_file()
                        for st in [f.stat()]))


def find_predictions(cfg: Config, method: str, names: Sequence[str], root: Path | None = None) -> dict:
    """{"names": test names with a prediction file, "reason": why the method is missing or partial}."""
    folder = paths(cfg, root).predictions(method)
    nb = notebook_of(method)
    if not folder.is_dir():
        return {"names": [], "reason": f"no prediction folder {folder}: run notebook {nb}"}
    have = [n for n in names if (folder / f"{n}.png").is_file()]
    if not have:
        n_files = len(list(folder.glob("*.png")))
        return {"names": [], "reason": f"{folder} holds {n_files} PNG files but none for this test set "
                                       f"({len(names)} images): re-run notebook {nb}"}
    reason = "" if len(have) == len(names) else f"scored on the {len(have)} of {len(names)} test images it has"
    return {"names": have, "reason": reason}
