"""The repository itself: no large file is tracked (a wheel or a model belongs on PyPI or the Hub, not in git)."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_BYTES = 1_000_000


def test_no_tracked_file_is_over_1_mb():
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    paths = [ROOT / p for p in listed.decode("utf-8", "surrogateescape").split("\0") if p]
    assert paths, "git ls-files listed nothing: is this a git checkout?"
    # is_file: a tracked file deleted in this working tree is skipped; CI's clean clone has them all.
    sizes = {p.relative_to(ROOT): p.stat().st_size for p in paths if p.is_file()}
    large = [f"{p} ({n:,} bytes)" for p, n in sorted(sizes.items()) if n > MAX_BYTES]
    assert not large, "tracked files over 1 MB: " + ", ".join(large)
