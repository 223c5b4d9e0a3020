"""The prompts a bench runs: the suite shipped with spec, or the user's own file (--prompts)."""

from __future__ import annotations

import importlib.resources
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

SUITE_RESOURCE = ("data", "bench_prompts.jsonl")
# The bundled suite alternates its five kinds of text, so its first five prompts hold one of
# each; with the default sweep that keeps `spec bench` to a few minutes on a 2-core laptop.
SUITE_DEFAULT_LIMIT = 5


def default_limit(limit: int | None, bundled: bool) -> int | None:
    """--limit as given (0: every prompt); unset, SUITE_DEFAULT_LIMIT of the bundled suite and a --prompts file whole."""
    if limit is None:
        return SUITE_DEFAULT_LIMIT if bundled else None
    return None if limit == 0 else limit


@dataclass
class BenchPrompt:
    id: str
    category: str
    text: str


@dataclass
class Suite:
    name: str
    version: int | str | None
    prompts: list[BenchPrompt]


def _parse_jsonl(lines: Sequence[str], source: str) -> Suite:
    name, version, prompts = source, None, []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SpecError(f"{source}, line {n}: not valid JSON ({e.msg})") from None
        if not isinstance(obj, dict):
            raise SpecError(f'{source}, line {n}: expected a JSON object with a "prompt" field')
        if "prompt" not in obj:
            if "version" in obj:  # a header line: {"suite": ..., "version": ...}
                name, version = str(obj.get("suite", name)), obj["version"]
                continue
            raise SpecError(f'{source}, line {n}: no "prompt" field')
        text = obj["prompt"]
        if not isinstance(text, str) or not text.strip():
            raise SpecError(f'{source}, line {n}: "prompt" must be a non-empty string')
        prompts.append(BenchPrompt(str(obj.get("id", f"p{len(prompts) + 1}")), str(obj.get("category", "user")), text))
    return Suite(name, version, prompts)


def load_suite() -> Suite:
    """The prompt suite shipped with spec (versioned: a changed suite gets a new version)."""
    res = importlib.resources.files("spec_cli").joinpath(*SUITE_RESOURCE)
    suite = _parse_jsonl(res.read_text(encoding="utf-8").splitlines(), "bench_prompts.jsonl")
    if suite.version is None or not suite.prompts:
        raise SpecError("the bundled prompt suite is damaged; reinstall spec")
    return suite


def load_prompts_file(path: Path) -> Suite:
    """--prompts FILE: JSON lines with a "prompt" field, or else one prompt per line."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SpecError(f"prompts file not found: {path}") from None
    except IsADirectoryError:
        raise SpecError(f"prompts file is a directory: {path}") from None
    except UnicodeDecodeError:
        raise SpecError(f"prompts file is not UTF-8 text: {path}") from None
    except OSError as e:
        raise SpecError(f"cannot read prompts file {path}: {e.strerror}") from None
    lines = text.splitlines()
    first = next((ln for ln in lines if ln.strip()), None)
    if first is None:
        raise SpecError(f"prompts file has no prompts: {path}")
    if first.lstrip().startswith("{"):
        suite = _parse_jsonl(lines, Path(path).name)
    else:
        suite = Suite(
            Path(path).name,
            None,
            [BenchPrompt(f"line{i}", "user", ln) for i, ln in enumerate(lines, 1) if ln.strip()],
        )
    if not suite.prompts:
        raise SpecError(f"prompts file has no prompts: {path}")
    return suite
