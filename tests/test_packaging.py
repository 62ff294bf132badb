"""The wheel ships every package: pyproject's hand-written list must cover pipeline/ and the stages."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pipeline.core.registry import STAGE_MODULES

REPO = Path(__file__).resolve().parents[1]


def test_every_python_package_is_listed_in_pyproject():
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for p in (REPO / "pipeline").rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert {"pipeline.schemas", "pipeline.dags"} <= listed
    for module in STAGE_MODULES:
        assert module.rsplit(".", 1)[0] in listed, module
