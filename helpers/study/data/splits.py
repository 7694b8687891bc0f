"""Data preparation: sources -> square RGB images -> deterministic split -> frozen test masks.

Layout written under ``paths(cfg).data`` (data/<preset>/, ignored by git)::

    images/{train,val,test}/<name>.png   8-bit RGB, cfg.data.image_size square
    test_masks/<name>.png                255 = hole; made once, reused by every method
    input_files.json                     every input folder's files (path, size, mtime_ns) when prepared
    index.json                           splits, per-test-image mask kind and hole fraction,
                                         the source and the counts of skipped/converted files

The sources are read by :mod:`.sources`; the prepared split is read back by :mod:`.dataset`.
Taught in notebook 01.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from helpers.course.masks import GENERATOR_VERSION, generate_mask
from helpers.study.config import Config
from helpers.study.data.masks import hole_fraction, validate_mask
from helpers.study.data.sources import (
    Report,
    bundled_crops,
    digit_images,
    digit_label,
    folder_images,
    hub_images,
    image_files,
    image_name,
)
from helpers.study.files import load_json, paths, save_json, save_mask_png, save_png, shown_path, swap_in
from helpers.study.runtime import progress

log = logging.getLogger(__name__)


SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------- split + masks
def split_names(names: list[str], fractions: dict, seed: int,
                fixed_test: list[str] | None = None) -> dict[str, list[str]]:
    """Deterministic split: shuffle sorted names with ``seed`` and cut by fractions (test gets >= 1).

    With ``fixed_test`` (a source's own held-out split, or the images the user brought masks for)
    that is the test set, and ``names`` are cut into train and val only."""
    names = sorted(names)
    if len(names) < (2 if fixed_test else 3):
        raise ValueError(f"need at least 3 images to split into train/val/test, got {len(names)}")
    order = np.random.default_rng(seed).permutation(len(names))
    shuffled = [names[i] for i in order]
    if fixed_test:
        n_val = max(1, round(len(names) * fractions["val"] / (fractions["train"] + fractions["val"])))
        return {"test": sorted(fixed_test), "val": sorted(shuffled[:n_val]), "train": sorted(shuffled[n_val:])}
    total = sum(fractions[s] for s in SPLITS)
    n_test = max(1, round(len(names) * fractions["test"] / total))
    n_val = max(1, round(len(names) * fractions["val"] / total))
    return {"test": sorted(shuffled[:n_test]), "val": sorted(shuffled[n_test:n_test + n_val]),
            "train": sorted(shuffled[n_test + n_val:])}


def _fingerprint(cfg: Config, input_files: dict | None = None) -> str:
    """Hash of everything that determines the prepared data: a change re-prepares it. That is the
    settings (seed, ``data``, the mask generator's version) and, for every folder read
    (``input_files``, from :func:`input_files`), each file's relative path, size and modification
    time (mtime_ns): a cheap ``stat`` per file, no content is read. The bundled and hub sources are
    fingerprinted by their settings only (the hub's data sets are cached by ``datasets``)."""
    keys = {"seed": cfg.seed, "data": cfg.data, "mask_generator": GENERATOR_VERSION}
    if input_files:
        keys["input_files"] = input_files
    return hashlib.sha256(json.dumps(keys, sort_keys=True, default=str).encode()).hexdigest()[:16]


def input_folders(cfg: Config) -> dict[str, Path]:
    """The folders the prepared data is read from, by setting: ``data.folder`` (with data.source:
    folder), ``data.test_source.folder`` and ``data.test_masks_folder``, where set."""
    d, out = cfg.data, {}
    if d.source == "folder" and d.get("folder"):
        out["data.folder"] = Path(d.folder)
    ts = d.get("test_source")
    if isinstance(ts, dict) and ts.get("folder"):
        out["data.test_source"] = Path(ts["folder"]).expanduser()
    if d.get("test_masks_folder"):
        out["data.test_masks_folder"] = Path(d.test_masks_folder).expanduser()
    return out


def input_files(cfg: Config) -> dict[str, dict[str, list[int]]]:
    """Every file under each of :func:`input_folders` (recursively, non-images too: the input report
    counts them) as setting -> {relative path: [size in bytes, mtime_ns]}. A folder that does not
    exist lists nothing (reading it then fails and says so)."""
    out = {}
    for key, folder in input_folders(cfg).items():
        files = {}
        if folder.is_dir():
            for p in sorted(folder.rglob("*")):
                if p.is_file():
                    st = p.stat()
                    files[p.relative_to(folder).as_posix()] = [st.st_size, st.st_mtime_ns]
        out[key] = files
    return out


def input_changes(before: dict, now: dict) -> str:
    """What changed between two :func:`input_files` listings, per folder, e.g.
    ``data.folder changed: +3 files, -1 file, 2 rewritten (size or mtime)``; "" when nothing did."""
    parts = []
    for key in sorted(set(before) | set(now)):
        a, b = before.get(key) or {}, now.get(key) or {}
        added, removed = len(b.keys() - a.keys()), len(a.keys() - b.keys())
        rewritten = sum(a[f] != b[f] for f in a.keys() & b.keys())
        count = {n: f"{n} file{'s' if n != 1 else ''}" for n in (added, removed)}
        bits = ([f"+{count[added]}"] if added else []) + ([f"-{count[removed]}"] if removed else []) \
            + ([f"{rewritten} rewritten (size or mtime)"] if rewritten else [])
        if bits:
            parts.append(f"{key} changed: {', '.join(bits)}")
    return "; ".join(parts)


def check_unique_names(cfg: Config) -> None:
    """Refuse, before anything is staged, two input files that would be prepared under one name
    (:func:`image_name`: ``twin.png`` and ``twin.jpg``; ``a/b.png`` and ``a__b.png``; a test-source
    file ``x.png`` and a training file ``test_x.png``), or two masks for one name. Raises
    ``ValueError`` naming the name and its files, and how to fix it."""
    names: dict[str, list[Path]] = {}
    masks: dict[str, list[Path]] = {}
    for key, folder in input_folders(cfg).items():
        if not folder.is_dir():
            continue                                    # reading it says what is wrong
        if key == "data.test_masks_folder":
            for p in sorted(folder.rglob("*.[pP][nN][gG]")):
                if p.is_file():
                    masks.setdefault(image_name(p, folder), []).append(p)
            continue
        prefix = "test_" if key == "data.test_source" else ""
        for p in image_files(folder):
            names.setdefault(prefix + image_name(p, folder), []).append(p)
    for what, found in (("image", names), ("mask", masks)):
        twins = {n: ps for n, ps in found.items() if len(ps) > 1}
        if twins:
            listed = "; ".join(f"{n!r}: {' and '.join(shown_path(p) for p in ps)}"
                               for n, ps in sorted(twins.items())[:5])
            raise ValueError(
                f"{len(twins)} {what} name(s) used by more than one file ({listed}"
                f"{'; ...' if len(twins) > 5 else ''}). Every {what} is prepared as <name>.png (its path without "
                "the extension, sub-folders joined with '__'), so names must be unique: rename one file of each "
                "pair (e.g. twin.jpg -> twin_2.jpg) and prepare again. Nothing was changed.")


def _complete(folder: Path, index: dict) -> bool:
    """Every file the index names is on disk (images of every split, the frozen test masks)."""
    return (all((folder / "images" / s / f"{n}.png").is_file() for s in SPLITS for n in index["splits"][s])
            and all((folder / "test_masks" / f"{n}.png").is_file() for n in index["splits"]["test"]))


def source_items(cfg: Config, P, report: Report, split: str | None = None, prefix: str = "", limit=None):
    """The configured source's images as (name, uint8 HxWx3 at data.image_size), counted in ``report``,
    and how many there will be at most (the progress bar's total: the files found, not the cap)."""
    d = cfg.data
    admit_kw = {"min_size": d.get("min_size", 8), "min_kept_fraction": d.get("min_kept_fraction", 0.0)}
    if d.source == "bundled":
        return bundled_crops(d.num_images, d.image_size, cfg.seed, report), d.num_images
    if d.source == "digits":
        return digit_images(d.get("digits_domain") or "target", d.image_size, report), 1797 // 2 + 1
    if d.source == "folder":
        if not d.get("folder"):
            raise ValueError("data.folder is not set: with data.source: folder, set data.folder to the folder "
                             "holding your images (e.g. --set data.folder=/path/to/images)")
        items = folder_images(Path(d.folder), d.image_size, report, d.num_images, **admit_kw)
        found = len(image_files(d.folder)) if Path(d.folder).is_dir() else 0
        return items, found if d.num_images is None else min(found, d.num_images)
    if d.source == "hub":
        if not d.get("hub_id"):
            raise ValueError("data.hub_id is not set: with data.source: hub, set data.hub_id to a datasets-hub id "
                             "or a local data set folder")
        n = d.num_images if limit is None else limit
        return hub_images(d.hub_id, split or d.hub_split, d.hub_image_key, d.image_size, P.cache, report,
                          n, prefix=prefix, **admit_kw), n
    raise ValueError(f"data.source must be bundled, digits, folder or hub, got {d.source!r}")


def _test_source(cfg: Config, P, report: Report) -> tuple[Iterator | None, str | None]:
    """``data.test_source``: test images from a source of their own, outside the training data (e.g.
    faces that ``google/ddpm-celebahq-256`` never saw, since it was trained on CelebA-HQ). ``null``:
    none (the test set is data.hub_test_split or a seeded cut, as before); ``{folder: PATH}``: every
    image under PATH; ``{hub_id: ID, split: NAME}`` (optional ``image_key``): a split of a datasets-hub
    set or a local data set folder. Read with the same size and admission rules as the training
    images, capped at data.max_test_images, named ``test_<name>``; masks are generated as for any
    test set (or read from data.test_masks_folder). Returns (items, description) or (None, None)."""
    d, ts = cfg.data, cfg.data.get("test_source")
    if not ts:
        return None, None
    admit_kw = {"min_size": d.get("min_size", 8), "min_kept_fraction": d.get("min_kept_fraction", 0.0)}
    if not isinstance(ts, dict) or bool(ts.get("folder")) == bool(ts.get("hub_id")):
        raise ValueError("data.test_source must be null, {folder: PATH} or {hub_id: ID, split: NAME}, "
                         f"got {ts!r}")
    if ts.get("folder"):
        items = ((f"test_{n}", img) for n, img in folder_images(Path(ts["folder"]).expanduser(), d.image_size, report,
                                                               d.max_test_images, **admit_kw))
        return items, f"the folder {ts['folder']} (data.test_source, outside the training images)"
    split = ts.get("split") or "test"
    items = hub_images(ts["hub_id"], split, ts.get("image_key") or d.hub_image_key, d.image_size, P.cache, report,
                       d.max_test_images, prefix="test_", **admit_kw)
    return items, f"{ts['hub_id']} split {split!r} (data.test_source, outside the training images)"


def _user_masks(folder: Path, size: int) -> dict[str, Path]:
    """data.test_masks_folder: PNG masks by name (sub-folders joined with '__', as image names are)."""
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"data.test_masks_folder {folder} does not exist or is not a folder")
    found = {image_name(p, folder): p for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix.lower() == ".png"}
    if not found:
        raise FileNotFoundError(f"data.test_masks_folder {folder} holds no .png mask "
                                f"({size}x{size}, white = hole, matched to images by file name)")
    return found


def resolution_note(cfg: Config, index: dict) -> dict:
    """At which size each method sees the data and each metric is computed, in plain words (slides)."""
    size, sd = index["image_size"], cfg.sd.resolution
    src = (index.get("inputs") or {}).get("source_short_side")
    src_txt = (f"source images' short side {src['min']}-{src['max']} px (median {src['median']})"
               if src else "source sizes unknown")
    sd_txt = (f"SD 1.5 works at {sd} px: it saw the {size} px prepared images upsampled to {sd} px "
              f"(bicubic) and its outputs were downsampled back to {size} px"
              if sd > size else f"SD 1.5 works at {sd} px, the prepared size or less")
    return {"prepared_px": size, "metrics_px": size, "sd_px": sd, "sd_upsampled": sd > size,
            "source_short_side": src,
            "text": (f"Images prepared at {size} px ({src_txt}); every metric of every method is computed at "
                     f"{size} px. The DDPM works at {size} px. {sd_txt}.")}


def _read_sources(cfg: Config, P, report: Report, stage: Path, held_out: str | None,
                  test_items=None) -> tuple[list[str], list[str]]:
    """Stage 1: the source's images (and its own test split, or ``data.test_source``'s images), resized and
    cropped to the preset's square size, written to ``stage/images/_all`` as they are read.
    Returns (names, held-out test names)."""
    d = cfg.data
    names, fixed_test = [], []
    sources = [(*source_items(cfg, P, report), names)]
    if held_out:
        sources.append((*source_items(cfg, P, report, split=held_out, prefix=f"{held_out}_", limit=d.max_test_images),
                        fixed_test))
    if test_items is not None:          # data.test_source: the test images come from there
        sources.append((test_items, None, fixed_test))
    for items, total, out in sources:
        for name, img in progress(items, desc=f"reading {d.source} images", total=total):
            save_png(img, stage / "images" / "_all" / f"{name}.png")
            out.append(name)
    return names, fixed_test


def _make_splits(cfg: Config, names: list[str], fixed_test: list[str], user_masks: dict | None,
                 stage: Path) -> dict[str, list[str]]:
    """Stage 2: a deterministic split by seed, capped; the test set is the source's held-out split,
    the images the user brought masks for, or a seeded cut. The staged images move to their split."""
    d = cfg.data
    if user_masks is not None:
        pool = fixed_test or names
        fixed_test = sorted(set(pool) & set(user_masks))
        if not fixed_test:
            raise ValueError(f"no mask in data.test_masks_folder matches an image name (masks e.g. "
                             f"{sorted(user_masks)[:3]}, images e.g. {sorted(pool)[:3]})")
        names = [n for n in names if n not in set(fixed_test)]
    splits = split_names(names, d.split, cfg.seed, fixed_test=fixed_test or None)
    for s, limit in {"test": d.max_test_images, "val": d.max_val_images}.items():
        if limit is not None and len(splits[s]) > limit:
            splits["train"] = sorted(splits["train"] + splits[s][limit:])
            splits[s] = splits[s][:limit]
    for s in SPLITS:
        (stage / "images" / s).mkdir(parents=True, exist_ok=True)
        for name in splits[s]:
            os.replace(stage / "images" / "_all" / f"{name}.png", stage / "images" / s / f"{name}.png")
    shutil.rmtree(stage / "images" / "_all", ignore_errors=True)   # held-out images beyond the cap
    return splits


def _freeze_test_masks(cfg: Config, test_names: list[str], user_masks: dict | None, stage: Path) -> dict:
    """Stage 3: the frozen test masks: the user's (validated like ours), or kinds cycled so every kind
    is represented, one generator per image. Returns name -> {kind, hole_fraction}."""
    d = cfg.data
    test_masks, kinds = {}, list(d.masks.kinds)
    for i, name in enumerate(test_names):
        if user_masks is not None:
            kind = "user"
            m = load_mask_file(user_masks[name], (d.image_size, d.image_size))[0].numpy()
        else:
            rng = np.random.default_rng([cfg.seed, 1, i])
            kind = kinds[i % len(kinds)]
            m = generate_mask(d.image_size, kind, rng, d.masks.min_hole, d.masks.max_hole)
        save_mask_png(m, stage / "test_masks" / f"{name}.png")
        test_masks[name] = {"kind": kind, "hole_fraction": hole_fraction(m)}
    return test_masks


def _reusable_index(P, fp: str, settings_fp: str, files: dict, force: bool) -> tuple[dict | None, str]:
    """(the prepared index, "") when it can be reused as it is; else (None, why it is prepared again)."""
    index_path, files_path = P.data / "index.json", P.data / "input_files.json"
    if force or not index_path.is_file():
        return None, "forced" if force else "no prepared data set yet"
    index = load_json(index_path)
    if index.get("fingerprint") == fp and _complete(P.data, index):
        counted = ", ".join(f"{len(v)} files in {k}" for k, v in files.items())
        log.info("reusing %s: same settings%s", P.relative(P.data), f" and same {counted}" if files else "")
        return index, ""
    if index.get("fingerprint") == fp:
        return None, "files of the prepared set are missing"
    # say what changed, where the earlier run wrote its inputs down
    before = load_json(files_path) if files_path.is_file() else {}
    changes = ([] if before.get("settings") in (settings_fp, None) else ["settings changed"]) \
        + ([input_changes(before["files"], files)] if "files" in before else [])
    return None, "; ".join(c for c in changes if c) or "settings or input files changed"


def prepare_dataset(cfg: Config, force: bool = False, root: Path | None = None) -> dict:
    """Build data/<preset>/ from ``cfg.data`` (idempotent: reuses a matching earlier run).

    A prepared set is reused only with the same settings and, for a folder source (and
    data.test_source / data.test_masks_folder folders), the same files: a file added, removed or
    rewritten (its size or mtime changed) prepares the set again, so the input report always
    describes the folders as they are (see :func:`_fingerprint`). The log says which and why
    ("same settings and same 12 files in data.folder"; "data.folder changed: +3 files"). Two input
    files with one name (``twin.png``, ``twin.jpg``) are refused by name before anything is staged.

    Nothing is lost on a failure: the new data set is built in a staging folder beside the live
    one and swapped in only after it is complete, index.json last. A reader that fails midway (a
    missing folder, the hub offline, a crash) leaves the previous data set as it was; an index
    whose files are not all on disk is never reused. Returns the index (also saved as index.json):
    splits, test-mask metadata, the input report and the resolution note.
    """
    P = paths(cfg, root)
    files = input_files(cfg)
    fp, settings_fp = _fingerprint(cfg, files), _fingerprint(cfg)
    index, why = _reusable_index(P, fp, settings_fp, files, force)
    if index is not None:
        return index
    log.info("preparing %s: %s", P.relative(P.data), why)
    check_unique_names(cfg)                 # before anything is staged: two files, one name
    d, report = cfg.data, Report()
    user_masks = _user_masks(d.test_masks_folder, d.image_size) if d.get("test_masks_folder") else None
    test_items, test_desc = _test_source(cfg, P, report)
    held_out = d.get("hub_test_split") if d.source == "hub" and test_items is None else None
    # 0. a fresh staging folder (a crashed earlier attempt's is removed)
    stage = P.data / ".staging"
    shutil.rmtree(stage, ignore_errors=True)
    try:
        # 1. images from the source; 2. splits; 3. frozen test masks; the index
        names, fixed_test = _read_sources(cfg, P, report, stage, held_out, test_items)
        splits = _make_splits(cfg, names, fixed_test, user_masks, stage)
        test_masks = _freeze_test_masks(cfg, splits["test"], user_masks, stage)
        index = {"fingerprint": fp, "preset": cfg.preset, "source": d.source, "image_size": d.image_size,
                 "test_split": (test_desc if test_desc else
                                f"{d.hub_id} split {held_out!r} (the source's own held-out split)" if held_out
                                else f"a seeded cut of the {d.source} images"),
                 "test_masks_from": (str(d.test_masks_folder) if user_masks is not None
                                     else "generated (data.masks.kinds)"),
                 "splits": splits, "test_masks": test_masks, "inputs": report.to_dict()}
        if d.source == "digits":                    # the labels: captions, the digit classifier, accuracy
            index["labels"] = {n: digit_label(n) for s in SPLITS for n in splits[s]}
        index["resolution"] = resolution_note(cfg, index)
        save_json({"settings": settings_fp, "files": files}, stage / "input_files.json")
        save_json(index, stage / "index.json")
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)   # the live data set was never touched
        raise
    # 4. swap in, index last
    swap_in(stage, P.data, ["images", "test_masks", "input_files.json", "index.json"])
    log.info("prepared %s: %s", P.relative(P.data), report.summary())
    return index


def load_index(cfg: Config, root: Path | None = None) -> dict:
    path = paths(cfg, root).data / "index.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run notebook 01 (data preparation) for preset "
                                f"{cfg.preset!r} first, or helpers.study.data.splits.prepare_dataset(cfg)")
    return load_json(path)


def load_mask_file(path: Path, image_shape: tuple[int, int] | None = None) -> torch.Tensor:
    """Read and validate a mask PNG -> float (1, H, W) in {0, 1}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"mask file {path} does not exist")
    with Image.open(path) as im:
        arr = np.asarray(im)
    return torch.from_numpy(validate_mask(arr, image_shape, name=str(path)))[None]
