"""Writing user-visible files so that nothing the user had is lost half-way."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import SpecError


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename: the old file stays whole until the new one is."""
    p = Path(path).expanduser()
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, p)
    except OSError as e:
        raise SpecError(f"cannot write {p}: {e.strerror or e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return p
