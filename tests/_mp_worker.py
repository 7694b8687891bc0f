"""Entry point for tests/test_multiprocess.py: runs ``python -m helpers.study train ddpm|sd`` in
this process (one of several under ``accelerate launch``) and records, per rank, every file the
process writes under $INPAINT_ROOT (opened for writing, renamed into place, or saved by safetensors),
so the test can check that only the main process writes checkpoints, weights and stats.

    accelerate launch --cpu --num_processes 2 tests/_mp_worker.py ddpm --preset smoke ...
"""
import builtins
import os
import sys
from pathlib import Path

ROOT = Path(os.environ["INPAINT_ROOT"]).resolve()
RANK = int(os.environ.get("RANK", "0"))
LOG = ROOT / f"writes.rank{RANK}.txt"
_open, _replace = builtins.open, os.replace


def _record(path) -> None:
    try:
        p = Path(os.fsdecode(path)).resolve()
    except TypeError:                       # file descriptors, buffers: not a path
        return
    if ROOT in p.parents and p != LOG:
        with _open(LOG, "a") as f:
            f.write(f"{p}\n")


def _tracked_open(file, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax+"):
        _record(file)
    return _open(file, mode, *args, **kwargs)


def _tracked_replace(src, dst, *args, **kwargs):
    _record(dst)
    return _replace(src, dst, *args, **kwargs)


builtins.open, os.replace = _tracked_open, _tracked_replace
import safetensors.torch  # noqa: E402

_save_file = safetensors.torch.save_file


def _tracked_save_file(tensors, filename, *args, **kwargs):
    _record(filename)
    return _save_file(tensors, filename, *args, **kwargs)


safetensors.torch.save_file = _tracked_save_file

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import logging

    logging.basicConfig(level=logging.INFO)
    from helpers.study.__main__ import main

    main(["train", *sys.argv[1:]])        # ddpm|sd [args]: `python -m helpers.study train ddpm|sd ...`
