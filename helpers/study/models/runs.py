"""Which run a training call is: what determines its trajectory (the preset's keys, the data and base weights it
reads, the code it executes), hashed into the run folder's name, and the note that says whether a call reuses,
resumes or starts a run, and why (notebooks 03 and 04 print it). The loop itself: :mod:`.training`."""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
import types
from pathlib import Path

from helpers.study.config import Config

CHECKPOINT = "last.pt"      # a run folder's checkpoint (written by training's loop)


def run_settings(cfg: Config, section: str, keys, **extra) -> dict:
    """What determines a training run: the seed, the data settings, the section's ``keys`` of the preset and
    ``extra`` (:func:`run_inputs`, captions). Not the run's length, so a longer run resumes."""
    return {"seed": cfg.seed, "data": cfg.data, section: {k: cfg[section].get(k) for k in keys}, **extra}


def run_fingerprint(cfg: Config, section: str, keys, **extra) -> str:
    """Hash of :func:`run_settings`."""
    return settings_hash(run_settings(cfg, section, keys, **extra))


def settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:12]


def flat_settings(settings: dict, prefix: str = "") -> dict:
    """{"ddpm": {"lr": 0.002}} -> {"ddpm.lr": 0.002}; values as JSON stores them."""
    out = {}
    for k, v in json.loads(json.dumps(settings, sort_keys=True, default=str)).items():
        out.update(flat_settings(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def setting_changes(before: dict, after: dict, limit: int = 4) -> list[str]:
    """The flat settings that differ, as "ddpm.lr 0.002 -> 0.001" (a long value, e.g. a hash, by its name only);
    at most ``limit`` of them, then how many more."""
    keys = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    shown = [k if max(len(str(before.get(k))), len(str(after.get(k)))) > 24
             else f"{k} {before.get(k, 'unset')} -> {after.get(k, 'unset')}" for k in keys[:limit]]
    return shown + ([f"{len(keys) - limit} more"] if len(keys) > limit else [])


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
RUN_RECORD = "run.json"     # <run folder>/run.json: the run's settings (hash, values), code hashes, inputs
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


def _differences(record: dict, code: dict[str, str], inputs: dict[str, str]) -> tuple[list[str], list[str]]:
    """Against an earlier run's record: the code hashes that changed, and the inputs that did (as :data:`WHAT`
    names them)."""
    code_changed = [k for k in code if record.get("code", {}).get(k) != code[k]]
    moved = [WHAT.get(k, k) for k in inputs if (record.get("inputs") or {}).get(k) != inputs[k]]
    return code_changed, moved


def announce_run(folder: Path, settings: str | dict, code: dict[str, str],
                 inputs: dict[str, str] | None = None) -> str:
    """Say which run a training call continues or starts, and why (printed once, returned), and record
    the run's ``settings`` (:func:`run_settings`, without the inputs; or its fingerprint), ``code`` hashes and
    ``inputs`` (:func:`run_inputs`) in <folder>/run.json for the next call. A new run is compared with the latest
    earlier one of the same settings: the note names the code and the inputs that differ from it; with none, with
    the latest earlier run: the note names the settings that differ (given as a dict) and says that run is kept."""
    from accelerate import PartialState

    from helpers.study.files import load_json, save_json

    shown, names = f"{folder.parent.name}/{folder.name}", ", ".join(code)
    inputs = inputs or {}
    values = flat_settings(settings) if isinstance(settings, dict) else None
    settings = settings_hash(settings) if isinstance(settings, dict) else settings
    if (folder / CHECKPOINT).is_file():
        note = f"reusing the run in {shown}: same settings and same code ({names}) as its checkpoint"
    else:
        earlier = [p for p in folder.parent.glob(f"*/{RUN_RECORD}") if p.parent != folder]
        earlier = [(p, load_json(p)) for p in sorted(earlier, key=lambda p: p.stat().st_mtime, reverse=True)]
        same = [(p, r) for p, r in earlier if r.get("settings") == settings]
        note = f"new run in {shown}: no earlier run with these settings and this code ({names})"
        if same:
            p, record = same[0]
            code_changed, moved = _differences(record, code, inputs)
            other = f"{folder.parent.name}/{p.parent.name}"
            if code_changed:
                note = (f"the code differs from the previous run in {other} ({', '.join(code_changed)} changed)"
                        + (f", and so do the {' and the '.join(moved)}" if moved else "")
                        + f": training starts anew in {shown}")
            elif moved:
                note = f"new run in {shown}: the {' and the '.join(moved)} differ from those of the run in {other}"
        elif (latest := next(((p, r) for p, r in earlier if r.get("values")), None)) and values is not None:
            p, record = latest
            code_changed, moved = _differences(record, code, inputs)
            also = code_changed + moved
            note = (f"new run in {shown}: settings differ from the latest run, in {folder.parent.name}/"
                    f"{p.parent.name} ({'; '.join(setting_changes(record['values'], values))})"
                    + (f", and so do {', '.join(also)}" if also else ", which is kept: setting them back reuses it"))
    if PartialState().is_main_process:
        save_json({"settings": settings, "code": code, "inputs": inputs, **({"values": values} if values else {})},
                  folder / RUN_RECORD)
        print(note)
    return note
