"""tools/torch_index.py: the PyTorch build `make` installs, chosen from nvidia-smi's driver version, tested
with fake nvidia-smi outputs (no GPU needed) and, end to end, with a fake nvidia-smi on PATH."""
import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "torch_index.py"
spec = importlib.util.spec_from_file_location("torch_index", SCRIPT)
T = importlib.util.module_from_spec(spec)
spec.loader.exec_module(T)


def fake_smi(stdout: str = "", returncode: int = 0, stderr: str = "", missing: bool = False):
    def run(cmd, **kw):
        assert cmd[0] == "nvidia-smi" and "--query-gpu=driver_version" in cmd
        if missing:
            raise FileNotFoundError(cmd[0])
        return SimpleNamespace(stdout=stdout, stderr=stderr, returncode=returncode)
    return run


def pick(**smi) -> tuple[str, str]:
    versions, _ = T.query_driver(fake_smi(**smi))
    return T.choose(versions)


@pytest.mark.parametrize("stdout, index", [
    ("580.65.06\n", "cu130"),
    ("590.48.01\n", "cu130"),
    ("575.57.08\n", "cu128"),
    ("570.133.20\n", "cu128"),
    ("565.57.01\n", "cu126"),
    ("560.35.03\n", "cu126"),
    ("560.28.03\n", "cu126"),
    ("550.127.05\n", "cu126"),    # through CUDA 12's minor version compatibility (>= 525.60.13)
    ("535.183.01\n", "cu126"),
    ("470.256.02\n", "cpu"),      # too old for any build: CPU, saying which driver is needed
])
def test_driver_version_picks_the_newest_build_it_runs(stdout, index):
    assert pick(stdout=stdout)[0] == index


def test_messages_say_why():
    index, why = pick(stdout="470.256.02\n")
    assert index == "cpu" and "525.60.13" in why and "580.65.06" in why and "too old" in why
    index, why = pick(stdout="535.183.01\n")
    assert index == "cu126" and "minor version compatibility" in why and "560.28.03" in why
    assert pick(stdout="580.65.06\n")[1] == "driver 580.65.06 >= 580.65.06: the cu130 build"


def test_no_gpu_gives_the_cpu_build():
    assert pick(missing=True)[0] == "cpu"                                      # no nvidia-smi
    versions, said = T.query_driver(fake_smi(returncode=9, stdout="NVIDIA-SMI has failed because it couldn't "
                                             "communicate with the NVIDIA driver."))
    assert versions == [] and "exited with 9" in said and T.choose(versions)[0] == "cpu"
    versions, said = T.query_driver(fake_smi(stdout="No devices were found\n"))
    assert versions == [] and "no driver version" in said


@pytest.mark.parametrize("garbage", ["", "\n", "[N/A]\n", "driver_version\n", "580\n", "abc.def.ghi\n",
                                     "580.65.06, 81559 MiB\n"])
def test_garbage_is_no_gpu(garbage):
    assert T.parse_driver_versions(garbage) == [] and pick(stdout=garbage)[0] == "cpu"


def test_several_gpus_the_oldest_driver_counts():
    assert T.parse_driver_versions("580.65.06\n580.65.06\n") == [(580, 65, 6)] * 2
    assert pick(stdout="580.65.06\n570.133.20\n580.65.06\n")[0] == "cu128"
    assert pick(stdout="580.65.06\r\n580.65.06\r\n")[0] == "cu130"        # Windows line ends
    assert pick(stdout="580.65.06\nERR!\n")[0] == "cu130"                   # the readable lines count


def test_auto_falls_back_to_pypi_when_the_index_is_unreachable():
    def found():
        return [(580, 65, 6)], "driver 580.65.06"
    index, msgs = T.resolve("auto", query=found, probe=lambda url: False)
    assert index == "pypi" and "download.pytorch.org/whl/cu130/" in msgs[-1] and "PyPI" in msgs[-1]
    seen = []
    index, _ = T.resolve("auto", query=found, probe=lambda url: seen.append(url) or True)
    assert index == "cu130" and seen == ["https://download.pytorch.org/whl/cu130/"]
    for given in ("cpu", "cu126", "cu128", "cu130", "pypi"):      # given values: used as they are, nothing probed
        assert T.resolve(given, query=None, probe=None)[0] == given
    with pytest.raises(ValueError, match="choose one of"):
        T.resolve("cu118")


def test_pins_come_from_requirements_txt(tmp_path):
    assert T.pins() == "torch==2.14.1 torchvision==0.29.1"
    req = tmp_path / "requirements.txt"
    req.write_text("# x\ntorch==2.0.0  # a comment\nnumpy==2.0\ntorchvision==0.15.0\n")
    assert T.pins(req) == "torch==2.0.0 torchvision==0.15.0"
    req.write_text("torch==2.0.0\n")
    with pytest.raises(SystemExit, match="torchvision"):
        T.pins(req)


def _script(tmp_path, smi_output: str | None, *args: str) -> subprocess.CompletedProcess:
    """The script as `make` runs it, with a fake nvidia-smi (or none) first on PATH and the wheel index at a
    closed local port (unreachable at once)."""
    bin_dir = tmp_path / f"bin{len(list(tmp_path.iterdir()))}"
    bin_dir.mkdir()
    if smi_output is not None:
        smi = bin_dir / "nvidia-smi"
        smi.write_text(f"#!/bin/sh\nprintf '{smi_output}'\n")
        smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    env = {**os.environ, "PATH": f"{bin_dir}:/usr/bin:/bin", "TORCH_INDEX_BASE_URL": "http://127.0.0.1:9/whl"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True, env=env,
                          timeout=30)


@pytest.mark.skipif(sys.platform == "win32", reason="a shell-script nvidia-smi")
def test_script_end_to_end(tmp_path):
    r = _script(tmp_path, "570.133.20\\n", "auto")
    assert r.returncode == 0 and r.stdout == "pypi\n"           # cu128 chosen, its index unreachable here
    assert "driver 570.133.20" in r.stderr and "cu128" in r.stderr and "cannot be reached" in r.stderr
    r = _script(tmp_path, None, "cpu")
    assert r.returncode == 0 and r.stdout == "cpu\n"
    r = _script(tmp_path, None)                                  # default auto, no nvidia-smi: cpu, then pypi here
    assert r.stdout == "pypi\n" and "no nvidia-smi" in r.stderr and "CPU-only" in r.stderr
    r = _script(tmp_path, None, "cu999")
    assert r.returncode == 2 and r.stdout == "" and "choose one of" in r.stderr
    r = _script(tmp_path, None, "--pins")
    assert r.stdout.split() == ["torch==2.14.1", "torchvision==0.29.1"]
