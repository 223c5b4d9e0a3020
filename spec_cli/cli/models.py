"""`spec models`: the presets in models.toml and where their files are."""

from __future__ import annotations

from .. import ui
from ..presets import load_catalog
from . import app


@app.command("models")
def models_cmd() -> None:
    """List model names and target/draft pairs from models.toml."""
    from rich.table import Table

    cat = load_catalog()
    t = Table(title="pairs (--preset)")
    for col in ("name", "target", "draft", "about"):
        t.add_column(col)
    for name, p in cat.pairs.items():
        t.add_row(name, p["target"], p.get("draft", "-"), p.get("description", ""))
    ui.out.print(t)
    m = Table(title="models (--target / --draft)")
    for col in ("name", "source", "about"):
        m.add_column(col)
    for name, e in cat.models.items():
        if "hf" in e:
            src = f"hf {e['hf']}"
        elif "package" in e:
            src = f"package {e['package']}"
        elif "derive" in e:
            src = f"{e['quant']} of {e['derive']}"
        else:
            src = e["path"]
        m.add_row(name, src, e.get("description", ""))
    ui.out.print(m)
