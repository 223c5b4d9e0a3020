"""`spec models`: the presets in models.toml and where their files are."""

from __future__ import annotations

import textwrap

from rich.text import Text

from .. import ui
from ..presets import load_catalog
from . import app

INDENT = 6  # where a block's text starts under its name


@app.command("models")
def models_cmd() -> None:
    """List model names and target/draft pairs from models.toml."""
    cat = load_catalog()
    # One block per entry, names never cut: a name on its own line when it and its summary
    # do not fit, the description below it, wrapped at the terminal's width (80 columns too).
    _heading("pairs (spec run --preset NAME): target + draft")
    for name, p in cat.pairs.items():
        draft = p.get("draft")
        _block(name, f"{p['target']} + {draft}" if draft else f"{p['target']}, no draft model", p.get("description", ""))
    ui.out.print()
    _heading("models (--target NAME, --draft NAME)")
    for name, e in cat.models.items():
        _block(name, _source(e), e.get("description", ""))


def _source(e: dict) -> str:
    if "hf" in e:
        repo, _, file = e["hf"].partition(":")
        return f"Hugging Face {repo}, file {file}" if file else f"Hugging Face {e['hf']}"
    if "parts" in e:
        first, last = e["parts"].format(n=1), e["parts"].format(n=e["count"])
        if e["count"] == 1:
            return f"package {first}"
        head = e["parts"].split("{", 1)[0]  # what all the names share before the number
        return f"{e['count']} packages {first}..{last[len(head) :] if e['parts'].endswith('}') else ' ' + last}"
    if "package" in e:
        return f"package {e['package']}"
    if "derive" in e:
        return f"{e['quant']} of {e['derive']}"
    return e["path"]


def _heading(text: str) -> None:
    ui.out.print(Text(text, style="bold"), soft_wrap=True)


def _block(name: str, summary: str, about: str) -> None:
    width = max(ui.out.width, 40)
    if 2 + len(name) + 2 + len(summary) <= width:
        ui.out.print(Text.assemble("  ", (name, "bold"), "  ", summary), soft_wrap=True)
    else:
        ui.out.print(Text.assemble("  ", (name, "bold")), soft_wrap=True)
        about = f"{summary}. {about}" if about else summary
    # textwrap, not rich: no trailing padding, and never a break inside a hyphenated name
    for line in textwrap.wrap(about, width - INDENT, break_on_hyphens=False):
        ui.out.print(Text(" " * INDENT + line, style="dim"), soft_wrap=True)
