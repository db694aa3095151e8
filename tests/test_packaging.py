"""Every package folder is in pyproject.toml's package list: an editable install finds a
package that is missing there, a wheel silently drops it."""
from __future__ import annotations

import pathlib

import tomllib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = set()
    for name, folder in config["package-dir"].items():
        base = ROOT / folder
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join((name, *rel.parts)))
    assert not found - listed, f"packages missing from pyproject.toml: {sorted(found - listed)}"
    assert listed <= found, f"listed but not found: {sorted(listed - found)}"
