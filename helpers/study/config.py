"""Presets: one YAML file per preset in configs/, read by papermill runs and helpers alike.

Every notebook receives ``preset`` (and optional dotted ``overrides``) from papermill and calls
:func:`load_config`; the helpers take the resulting :class:`Config` and never read values from
anywhere else. Taught in notebook 01.
"""
from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]


CONFIG_DIR = ROOT / "configs"


PRESETS = ("smoke", "mini", "lite", "full")
DEFAULT_PRESET = "mini"      # the study at toy scale: what every command and load_config() run unless told
PRESET_HELP = "mini (default) | smoke | lite | full | path to a YAML preset"   # every command's --preset


class Config(dict):
    """A dict with attribute access (``cfg.ddpm.lr``) that stays a plain dict for YAML/JSON."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r} (keys: {sorted(self)})") from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def to_dict(self) -> dict:
        return _plain(self)


def wrap(value: Any) -> Any:
    """Plain dicts (and the dicts in lists) -> :class:`Config`, recursively: attribute access, as a loaded preset."""
    if isinstance(value, Mapping):
        return Config({k: wrap(v) for k, v in value.items()})
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def config_path(preset: str | Path) -> Path:
    """``smoke`` -> configs/smoke.yaml; a path to a YAML file is returned as is."""
    p = Path(preset)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        return p
    path = CONFIG_DIR / f"{preset}.yaml"
    if not path.is_file():
        known = sorted(x.stem for x in CONFIG_DIR.glob("*.yaml"))
        raise ValueError(f"unknown preset {preset!r}: expected one of {known} or a path to a .yaml file")
    return path


def apply_overrides(cfg: dict, overrides: Mapping[str, Any] | None) -> dict:
    """Set dotted keys, e.g. ``{"ddpm.max_steps": 3}``. Unknown keys are an error (typos)."""
    for dotted, value in (overrides or {}).items():
        node = cfg
        *parents, leaf = dotted.split(".")
        for key in parents:
            if not isinstance(node.get(key), dict):
                raise KeyError(f"override {dotted!r}: {key!r} is not a section of the config")
            node = node[key]
        if leaf not in node:
            raise KeyError(f"override {dotted!r}: unknown key {leaf!r} (known: {sorted(node)})")
        node[leaf] = value
    return cfg


def add_set_argument(parser) -> None:
    """The one ``--set`` option of every entry point (helpers.study, helpers.tools.bench,
    helpers.report): ``--set a=1 b=2`` and ``--set a=1 --set b=2`` both collect every item, in
    order (a later value of the same key wins). Read them with :func:`parse_overrides`."""
    parser.add_argument("--set", dest="overrides", action="extend", nargs="+", default=[], metavar="KEY=VALUE",
                        help="dotted preset overrides, e.g. --set ddpm.max_steps=100 sd.lr=1e-4 "
                             "(several after one --set, or --set repeated)")


def parse_overrides(items: list[str]) -> dict:
    """Command-line ``KEY=VALUE`` items -> dotted overrides; values are read as YAML (3 -> int)."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = _number_or_yaml(value)
    return out


def _number_or_yaml(text: str) -> Any:
    """A ``--set`` value: YAML, except that ``1e-4`` is the number (YAML 1.1 reads it as a string)."""
    value = yaml.safe_load(text)
    if isinstance(value, str):
        try:
            return float(value) if value.strip().lower() not in ("nan", "inf", "-inf", "infinity") else value
        except ValueError:
            return value
    return value


def load_config(preset: str | Path = DEFAULT_PRESET, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read a preset (name or YAML path), apply dotted overrides, return a :class:`Config`."""
    with open(config_path(preset)) as f:
        raw = yaml.safe_load(f)
    raw = apply_overrides(copy.deepcopy(raw), overrides)
    return wrap(raw)
