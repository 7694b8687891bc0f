"""environment.yml (conda users) and the pip requirements list the same packages and versions."""
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _reqs(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            name, version = re.split(r"==", line)
            out[name.strip().lower().replace("_", "-")] = version.strip()
    return out


def test_environment_yml_matches_requirements():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip_section = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    conda_pins = {}
    for item in pip_section:
        item = item.split("#", 1)[0].strip()
        if item.startswith("-e"):
            continue
        name, version = item.split("==")
        conda_pins[name.lower().replace("_", "-")] = version
    pip_pins = {**_reqs(ROOT / "requirements.txt"), **_reqs(ROOT / "requirements-nodeps.txt")}
    assert conda_pins == pip_pins
    assert any(d.startswith("python=") for d in env["dependencies"] if isinstance(d, str))


def test_every_requirement_is_pinned():
    for f in ("requirements.txt", "requirements-nodeps.txt"):
        for line in (ROOT / f).read_text().splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                assert "==" in line, f"{f}: {line!r} is not pinned"
