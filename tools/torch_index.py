"""Which PyTorch build `make` installs: the wheel index for torch and torchvision (make variable TORCH_INDEX).

    python3 tools/torch_index.py [auto|cpu|cu126|cu128|cu130|pypi]   # prints the index to use on stdout
    python3 tools/torch_index.py --pins                               # torch==X torchvision==Y (requirements.txt)

``auto`` (the default) reads the NVIDIA driver's version from ``nvidia-smi`` and picks the newest CUDA build
that driver runs; no ``nvidia-smi`` or no usable GPU gives the CPU-only build (without the NVIDIA libraries,
3.2 GB, and Triton, 0.9 GB, that the CUDA build adds to the 7.1 GB environment). When the chosen index
(https://download.pytorch.org/whl/<index>) cannot be reached within a few seconds, ``auto`` falls back to
``pypi``: the pinned wheels from PyPI (a CUDA 13 build that also runs on a CPU). A value other than ``auto``
is used as given. Reasons go to stderr, the index alone to stdout.

Standard library only: it runs with the system's ``python3`` before the virtual environment exists.
"""
from __future__ import annotations

import http.client
import re
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

BASE_URL = "https://download.pytorch.org/whl"
CHOICES = ("auto", "cpu", "cu126", "cu128", "cu130", "pypi")
PROBE_SECONDS = 3.0
REQUIREMENTS = Path(__file__).resolve().parent.parent / "requirements.txt"

# The NVIDIA driver each CUDA build needs (Linux x86_64), newest first. Sources:
# * the driver each toolkit ships with, "CUDA Toolkit and Corresponding Driver Versions" in NVIDIA's CUDA
#   Toolkit release notes (https://docs.nvidia.com/cuda/cuda-toolkit-release-notes/): CUDA 13.0 GA >= 580.65.06,
#   CUDA 12.8 GA >= 570.26, CUDA 12.6 GA >= 560.28.03;
# * "Minor Version Compatibility" (https://docs.nvidia.com/deploy/cuda-compatibility/minor-version-compatibility.html):
#   an application built with any CUDA 12.x runs, with a limited feature set (no JIT of newer PTX), on a driver
#   >= 525 (12.x: >= 525.60.13); CUDA 13.x needs >= 580. NVIDIA's data-center support matrix lists the R535
#   long-term branch as running CUDA 12.x through it.
# * PyTorch publishes its wheels per CUDA version under https://download.pytorch.org/whl/<cuXYZ> (cu126, cu128,
#   cu130 and cpu for 2.9: https://pytorch.org/get-started/previous-versions/); the CUDA runtime ships inside
#   the wheels, so only the driver matters.
BUILDS = (("cu130", (580, 65, 6)), ("cu128", (570, 26)), ("cu126", (560, 28, 3)))
MINOR_VERSION_COMPAT = ("cu126", (525, 60, 13))   # CUDA 12.x on an older driver (limited feature set)


def fmt(version: tuple[int, ...]) -> str:
    return ".".join(f"{v:02d}" if i else str(v) for i, v in enumerate(version))


def parse_driver_versions(text: str) -> list[tuple[int, ...]]:
    """Driver versions in the output of ``nvidia-smi --query-gpu=driver_version --format=csv,noheader``
    (one line per GPU, e.g. ``580.65.06``); lines that are not a version are ignored."""
    out = []
    for line in text.splitlines():
        m = re.fullmatch(r"\s*(\d{2,4})\.(\d{1,3})(?:\.(\d{1,3}))?\s*", line)
        if m:
            out.append(tuple(int(g) for g in m.groups() if g is not None))
    return out


def query_driver(run=subprocess.run) -> tuple[list[tuple[int, ...]], str]:
    """(driver versions, one per GPU, empty when there is no usable GPU; what nvidia-smi said)."""
    cmd = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
    try:
        r = run(cmd, capture_output=True, text=True, timeout=15)
    except FileNotFoundError:
        return [], "no nvidia-smi on PATH (no NVIDIA driver)"
    except (OSError, subprocess.SubprocessError) as e:
        return [], f"nvidia-smi failed: {e}"
    said = (r.stdout or "").strip() or (r.stderr or "").strip()
    if r.returncode != 0:
        return [], f"nvidia-smi exited with {r.returncode}: {said[:200]}"
    versions = parse_driver_versions(r.stdout or "")
    if not versions:
        return [], f"nvidia-smi printed no driver version: {said[:200]!r}"
    return versions, f"driver {', '.join(fmt(v) for v in versions)}"


def choose(versions: list[tuple[int, ...]]) -> tuple[str, str]:
    """(index, why) for the driver versions of the GPUs (the oldest one counts); [] -> the CPU build."""
    if not versions:
        return "cpu", "no usable NVIDIA GPU: the CPU-only build (without the CUDA build's 4-5 GB of GPU libraries)"
    driver = min(versions)
    for index, needs in BUILDS:
        if driver >= needs:
            return index, f"driver {fmt(driver)} >= {fmt(needs)}: the {index} build"
    index, needs = MINOR_VERSION_COMPAT
    newest, newest_needs = BUILDS[0]
    if driver >= needs:
        return index, (f"driver {fmt(driver)}: the {index} build through CUDA's minor version compatibility "
                       f"(CUDA 12.x on a driver >= {fmt(needs)}, limited feature set); if something fails, update the "
                       f"driver to >= {fmt(BUILDS[-1][1])} ({index}) or >= {fmt(newest_needs)} ({newest})")
    return "cpu", (f"driver {fmt(driver)} is too old for every CUDA build of this PyTorch: {index} needs a driver "
                   f">= {fmt(needs)}, {newest} >= {fmt(newest_needs)}. Installing the CPU-only build; to use the GPU, "
                   f"update the NVIDIA driver, then `rm -rf .venv && make venv`")


def reachable(url: str, seconds: float = PROBE_SECONDS) -> bool:
    """Whether ``url`` answers within ``seconds`` (a hard deadline: name resolution included)."""
    ok = []

    def probe():
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=seconds) as r:
                ok.append(r.status < 400)
        except (OSError, ValueError, http.client.HTTPException):   # URLError, timeouts, refusals: OSError
            ok.append(False)

    t = threading.Thread(target=probe, daemon=True)
    t.start()
    t.join(seconds)
    return bool(ok and ok[0])


def resolve(requested: str, query=query_driver, probe=reachable, base_url: str = BASE_URL) -> tuple[str, list[str]]:
    """(index, messages): ``requested`` as given, or for ``auto`` the build the driver runs, or ``pypi`` when
    that build's index cannot be reached."""
    if requested not in CHOICES:
        raise ValueError(f"TORCH_INDEX={requested!r}: choose one of {', '.join(CHOICES)}")
    if requested != "auto":
        return requested, [f"TORCH_INDEX={requested} (as given)"]
    versions, said = query()
    index, why = choose(versions)
    msgs = [said, why]
    url = f"{base_url}/{index}/"
    if not probe(url):
        msgs.append(f"{url} cannot be reached within {PROBE_SECONDS:.0f} s: installing the pinned torch from PyPI "
                    "instead (TORCH_INDEX=pypi: the CUDA 13 build, which needs a driver >= 580 for the GPU and "
                    "also runs on a CPU)")
        index = "pypi"
    return index, msgs


def pins(requirements: Path = REQUIREMENTS) -> str:
    """The torch and torchvision lines of requirements.txt (the versions every build installs)."""
    found = {}
    for line in requirements.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        name = re.split(r"[=<>!~ \[]", line, maxsplit=1)[0].lower()
        if name in ("torch", "torchvision"):
            found[name] = line
    missing = {"torch", "torchvision"} - set(found)
    if missing:
        raise SystemExit(f"{requirements}: no pin for {', '.join(sorted(missing))}")
    return f"{found['torch']} {found['torchvision']}"


def main(argv: list[str] | None = None) -> int:
    import os
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--pins"]:
        print(pins())
        return 0
    requested = (args[0] if args else "auto").strip() or "auto"
    try:
        index, msgs = resolve(requested, base_url=os.environ.get("TORCH_INDEX_BASE_URL", BASE_URL))
    except ValueError as e:
        print(f"[torch_index] {e}", file=sys.stderr)
        return 2
    for m in msgs:
        print(f"[torch_index] {m}", file=sys.stderr)
    print(index)
    return 0


if __name__ == "__main__":
    sys.exit(main())
