"""What the project pins, read from pyproject.toml: tests that check a message quoting a pin
compare it with this, not with a version written into the test."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def pinned(package: str) -> str:
    """The requirement `package==X.Y.Z` from the project's dependencies."""
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    found = [d for d in deps if d.replace(" ", "").startswith(f"{package}==")]
    assert len(found) == 1, (package, deps)
    return found[0].replace(" ", "")
