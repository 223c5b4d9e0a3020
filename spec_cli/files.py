"""Writing user-visible files so that nothing the user had is lost half-way."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from .errors import SpecError

# What to do when a write fails; the system's own words say what went wrong.
_WHAT_TO_DO = {
    errno.ENOSPC: "free some disk space, or write it elsewhere",
    errno.EDQUOT: "free some space within your disk quota, or write it elsewhere",
    errno.EFBIG: "raise the file-size limit (ulimit -f), or write it elsewhere",
    errno.ENOENT: "create the folder first, or write it elsewhere",
    errno.EISDIR: "give a file name, not a folder",
    errno.EACCES: "write it to a folder you can write to",
    errno.EPERM: "write it to a folder you can write to",
    errno.EROFS: "write it to a folder you can write to",
}


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` through a temporary file and a rename: the old file stays whole until the new one is."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    """write_text_atomic for bytes. A full disk or a file-size limit (EFBIG) leaves no partial file behind."""
    p = Path(path).expanduser()
    tmp = p.with_name(p.name + f".tmp{os.getpid()}")  # same folder: os.replace cannot cross file systems
    try:
        tmp.write_bytes(data)
        os.replace(tmp, p)
    except OSError as e:
        what_to_do = _WHAT_TO_DO.get(e.errno, "check the path and try again")
        raise SpecError(f"cannot write {p}: {e.strerror or e}; {what_to_do}") from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
    return p
