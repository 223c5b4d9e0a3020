"""The command line. The only package that imports typer; each command lives in its own module."""

from __future__ import annotations

import _thread
import signal
import sys
import time

import typer

from ..errors import SpecError

app = typer.Typer(
    name="spec",
    help="Speculative decoding for local GGUF models on llama.cpp.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            mine = version("spec-cli")
        except PackageNotFoundError:
            mine = "unknown (not installed)"
        try:
            llama = version("llama-cpp-python")
        except PackageNotFoundError:
            llama = "not installed"
        typer.echo(f"spec {mine} (llama-cpp-python {llama})")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """Speculative decoding for local GGUF models on llama.cpp."""


def user_text(value: str | bytes, what: str) -> str:
    """Text the user gave (a prompt, a --stop string, a chat message), refused unless it is UTF-8 without NUL.

    Python hands bytes that are not UTF-8 over as lone surrogates (argv and stdin use
    surrogateescape), which llama.cpp's tokenizer cannot take. spec refuses them rather
    than guess the encoding or replace them: a prompt changed behind the user's back
    gives output that looks plausible and is wrong. A NUL almost always means a binary
    or UTF-16 file.
    """
    if isinstance(value, str):
        try:
            value = value.encode("utf-8", "surrogateescape")  # gives back the bytes Python could not decode
        except UnicodeEncodeError:
            value = value.encode("utf-8", "surrogatepass")
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise SpecError(
            f"{what} is not UTF-8 text (byte 0x{value[e.start]:02x} at offset {e.start}); "
            "spec reads text as UTF-8: convert it first, e.g. with iconv -f latin1 -t utf-8"
        ) from None
    if "\0" in text:
        raise SpecError(
            f"{what} contains a NUL character (at offset {text.index(chr(0))}), as binary and UTF-16 files do; "
            "give spec UTF-8 text (iconv -f utf-16 -t utf-8 converts UTF-16)"
        )
    return text


from . import bench as _bench  # noqa: E402,F401
from . import chat as _chat  # noqa: E402,F401
from . import doctor as _doctor  # noqa: E402,F401
from . import models as _models  # noqa: E402,F401  (registers commands)
from . import run as _run  # noqa: E402,F401
from . import serve as _serve  # noqa: E402,F401


def main(argv: list[str] | None = None) -> None:
    """Console entry point: user errors end in one line on stderr and a non-zero exit, never a traceback."""
    from .. import ui

    previous_hook, sys.unraisablehook = sys.unraisablehook, _keep_interrupts
    try:
        code = app(args=argv, standalone_mode=False)
        if _interrupt_again.locked():
            time.sleep(0.2)  # a Ctrl-C caught in a callback near the end: let it arrive here
        # Outside standalone mode typer returns, not raises, the exit code: 130 for a Ctrl-C.
        if code == 130:
            raise KeyboardInterrupt
        if isinstance(code, int) and code:
            sys.exit(code)
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
    finally:
        sys.unraisablehook = previous_hook


def _keep_interrupts(unraisable) -> None:
    """Deliver a Ctrl-C that landed in a callback from llama.cpp instead of losing it.

    llama.cpp calls back into Python (its log callback) while it loads or quantizes a
    model. A Ctrl-C handled there raises KeyboardInterrupt inside the callback, where
    ctypes can only print it and drop it: spec would print a traceback and go on. So the
    interrupt is raised again from another thread a moment later, once the callback has
    returned to llama.cpp; Python handles it at its next chance, at the latest when the
    call into llama.cpp returns. (Raised from here, it would be handled here, and lost.)
    """
    if unraisable.exc_type is None or not issubclass(unraisable.exc_type, KeyboardInterrupt):
        sys.__unraisablehook__(unraisable)
    elif not _interrupt_again.locked():
        _interrupt_again.acquire()
        _thread.start_new_thread(_interrupt_soon, ())  # not threading: its start() waits, and could be interrupted here


_interrupt_again = _thread.allocate_lock()


def _interrupt_soon() -> None:
    time.sleep(0.05)  # long after the callback has returned into llama.cpp
    _interrupt_again.release()
    _thread.interrupt_main(signal.SIGINT)
