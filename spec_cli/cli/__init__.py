"""The command line. The only package that imports typer; each command lives in its own module."""

from __future__ import annotations

import sys

import typer

from ..errors import SpecError

app = typer.Typer(
    name="spec",
    help="Speculative decoding for local GGUF models on llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

from . import models as _models  # noqa: E402,F401  (registers commands)
from . import run as _run  # noqa: E402,F401
from . import bench as _bench  # noqa: E402,F401
from . import chat as _chat  # noqa: E402,F401
from . import doctor as _doctor  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and a non-zero exit, never a traceback."""
    from .. import ui

    try:
        app(args=argv, standalone_mode=False)
    except SpecError as e:
        ui.error(str(e))
        sys.exit(e.exit_code)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        ui.error("interrupted")
        sys.exit(130)
    except typer.TyperException as e:  # usage errors: unknown option, a value of the wrong type, ...
        ctx = getattr(e, "ctx", None)
        where = f" (see `{ctx.command_path} --help`)" if ctx is not None else " (see `spec --help`)"
        ui.error(e.format_message() + where)
        sys.exit(getattr(e, "exit_code", 2))
    except MemoryError:
        ui.error("out of memory loading or running the models; try a smaller --ctx or smaller models")
        sys.exit(1)
