"""`spec chat`: an interactive conversation with the target model, drafted by the draft model.

Replies stream to stdout; everything else (stats lines, notes, errors) goes to
stderr. A Ctrl-C during a reply only sets a flag that the engine reads between
rounds, so the reply stops at a round boundary with both KV caches consistent;
KeyboardInterrupt never unwinds through the engine (a second Ctrl-C while the
first is still being honoured quits the program, which is also safe).
"""

from __future__ import annotations

import signal
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from .. import rpc, ui
from ..conversation import Command, Conversation, InputAssembler, help_text, is_command, parse_command
from ..errors import SpecError
from ..pipeline import parse_overlap
from ..presets import cache_dir, spec_home
from ..turns import TurnEngine, TurnResult
from . import app, user_text
from .options import (
    Ctx,
    Draft,
    Drafter,
    DraftLen,
    Ngl,
    NglDraft,
    NoSpec,
    Overlap,
    Preset,
    RollbackThreshold,
    Rpc,
    RpcDraft,
    Seed,
    ShowDrafts,
    Target,
    Temp,
    Threads,
    TopK,
    TopP,
)
from .setup import ModelOptions, generate_options, open_models

System = Annotated[Optional[str], typer.Option("--system", "-s", help="System prompt for the conversation.")]
MaxReply = Annotated[int, typer.Option("--max-tokens", "-n", help="Most tokens per reply.")]
Load = Annotated[Optional[str], typer.Option("--load", help="Continue a conversation saved with /save.")]


@app.command("chat")
def chat_cmd(
    target: Target = None,
    draft: Draft = None,
    preset: Preset = None,
    system: System = None,
    load: Load = None,
    max_tokens: MaxReply = 512,
    draft_len: DraftLen = "auto",
    drafter: Drafter = "auto",
    temp: Temp = 0.0,
    top_k: TopK = 40,
    top_p: TopP = 1.0,
    seed: Seed = None,
    ctx: Ctx = 4096,
    threads: Threads = None,
    ngl: Ngl = None,
    ngl_draft: NglDraft = None,
    rpc: Rpc = None,
    rpc_draft: RpcDraft = False,
    no_spec: NoSpec = False,
    show_drafts: ShowDrafts = False,
    rollback_threshold: RollbackThreshold = None,
    overlap: Overlap = "auto",
) -> None:
    """Chat with the target model (default: the `chat` preset); /help lists the commands."""
    options = ModelOptions(
        target=target, draft=draft, preset=preset, no_spec=no_spec, ctx=ctx, threads=threads, ngl=ngl, ngl_draft=ngl_draft,
        drafter=drafter, rpc=rpc, rpc_draft=rpc_draft, draft_len=draft_len,
    )  # fmt: skip
    first_len = options.first_draft_len()
    overlap = parse_overlap(overlap)
    opts = generate_options(max_tokens, temp, top_k, top_p, seed, first_len, rollback_threshold=rollback_threshold)
    if rollback_threshold:
        ui.info(f"lossy: rollback threshold {rollback_threshold:g}; the replies are not the target's own")
    system = user_text(system, "--system") if system is not None else None
    saved = Conversation.load(load) if load is not None else None  # before the models: a bad file fails fast
    options.check()
    with open_models(options, "chat") as models:
        pair = models.pair
        with ui.status("preparing"):  # under auto, the cost curve (measured once, then cached)
            turns = TurnEngine(pair.target, pair.draft, opts, draft_len=first_len, strategy_for=models.strategy, system=system,
                               overlap=overlap)  # fmt: skip
        names = pair.target_path.name + (f" + draft {pair.draft_path.name}" if pair.draft_path else " (no speculation)")
        repl = Repl(turns, names, show_drafts=show_drafts)
        if saved is not None:
            repl.adopt(saved, load)
            if system is not None:
                turns.set_system(system)  # --system wins over the file's
        repl.run()


class Repl:
    def __init__(self, turns: TurnEngine, names: str, show_drafts: bool = False):
        self.turns = turns
        self.show_drafts = show_drafts
        self.names = names
        self.tty = sys.stdin.isatty()
        self._history_file: Path | None = None
        # The message being answered and the reply's text so far, for _rescue.
        self._open: tuple[str, list[str]] | None = None

    # --- the loop ---------------------------------------------------------------

    def run(self) -> None:
        if hasattr(sys.stdin, "reconfigure"):
            # Bytes that are not UTF-8 arrive as surrogates, for user_text to refuse, whatever the locale.
            sys.stdin.reconfigure(errors="surrogateescape")
        self._start_readline()
        rpc.on_lost(self._rescue)
        s = self.turns
        ui.note(f"spec chat · {self.names} · context {s.target.n_ctx} tokens")
        if s.template.fallback:
            ui.note(
                "note: the target has no chat template in its GGUF metadata (probably a base model); "
                "using a plain 'User: / Assistant:' transcript"
            )
        ui.note("type /help for commands; Ctrl-C stops a reply, Ctrl-D quits")
        try:
            while True:
                text = self._read_message()
                if text is None:
                    break
                try:
                    text = user_text(text, "the message")
                except SpecError as e:
                    ui.error(str(e))
                    continue
                if not text.strip():
                    continue
                if is_command(text):
                    if self._command(text):
                        break
                    continue
                try:
                    self._turn(text)
                except SpecError as e:
                    ui.error(str(e))
        finally:
            rpc.forget(self._rescue)
            self._save_readline()

    def _read_message(self) -> str | None:
        """The next complete message or command; None to quit (Ctrl-D, or Ctrl-C on an empty line)."""
        asm = InputAssembler()
        while True:
            prompt = ("... " if asm.pending else ">>> ") if self.tty else ""
            try:
                line = input(prompt)
            except EOFError:
                ui.write_text("\n" if self.tty else "")
                return None
            except KeyboardInterrupt:
                ui.write_text("\n")
                typed = _line_buffer()
                if asm.pending or typed:
                    asm.cancel()  # Ctrl-C on a half-typed message discards it, as in a shell
                    continue
                return None
            text = asm.feed(line)
            if text is not None:
                return text

    # --- one reply -----------------------------------------------------------------

    def _turn(self, text: str) -> None:
        stop = {"requested": False}

        def on_sigint(signum, frame):  # noqa: ARG001
            if stop["requested"]:
                raise KeyboardInterrupt  # a second Ctrl-C: give up the session altogether
            stop["requested"] = True

        previous = signal.signal(signal.SIGINT, on_sigint)
        wrote = {"last": "\n"}

        self._open = (text, [])

        def on_span(piece: str, origin: str) -> None:
            self._open[1].append(piece)
            if self.show_drafts:
                ui.write_span(piece, origin)
            else:
                ui.write_text(piece)
            wrote["last"] = piece[-1:] or wrote["last"]

        try:
            result = self.turns.reply(text, on_span=on_span, should_stop=lambda: stop["requested"])
        finally:
            self._open = None
            signal.signal(signal.SIGINT, previous)
            if wrote["last"] != "\n":
                ui.write_text("\n")
        self._report(result)

    def _rescue(self) -> str | None:
        """Save the conversation, the open message and the reply so far included, when the
        process must end on the spot (an RPC server went away): what to run to go on from it."""
        s = self.turns
        conv = Conversation(system=s.conversation.system, messages=[dict(m) for m in s.conversation.messages])
        if self._open is not None:
            user, pieces = self._open
            conv.messages.append({"role": "user", "content": user})
            if "".join(pieces):
                conv.messages.append({"role": "assistant", "content": "".join(pieces)})
        if not conv.messages:
            return None
        folder = cache_dir() / "chats"
        folder.mkdir(parents=True, exist_ok=True)
        stem = "lost-" + time.strftime("%Y%m%d-%H%M%S")
        path, n = folder / f"{stem}.json", 1
        while path.exists():  # never over an earlier one
            n += 1
            path = folder / f"{stem}-{n}.json"
        conv.save(path, models=self._models())
        return f"the conversation ({len(conv.messages)} messages) is saved; `spec chat --load {path}` goes on from it"

    def _models(self) -> dict:
        s = self.turns
        return {"target": s.target.path.name, "draft": s.draft.path.name if s.draft is not None else None}

    def _report(self, r: TurnResult) -> None:
        s = self.turns
        if r.dropped:
            ui.note(
                f"the conversation no longer fitted the context: dropped the oldest {r.dropped} messages "
                "(the system prompt stays); /reset starts afresh"
            )
        if r.interrupted:
            if r.kept:
                ui.note("stopped; the partial reply stays in the conversation")
            else:
                ui.note("stopped before the reply began; the message was not added to the conversation")
        if r.stats.stop_reason == "context":
            ui.note("the reply filled the context; the oldest turns will be dropped next turn (or /reset)")
        elif r.stats.stop_reason == "max_tokens":
            ui.note(f"the reply reached --max-tokens ({s.opts.max_tokens}) and was cut")
        ui.note(turn_line(s.totals.turns, r, s.context_used, s.target.n_ctx))

    # --- slash commands ------------------------------------------------------------------

    def _command(self, text: str) -> bool:
        """Run one slash command; True means quit."""
        try:
            cmd = parse_command(text)
        except SpecError as e:
            ui.error(str(e))
            ui.note(help_text())
            return False
        try:
            return self._run_command(cmd)
        except SpecError as e:
            ui.error(str(e))
            return False

    def _run_command(self, cmd: Command) -> bool:
        s = self.turns
        if cmd.name == "exit":
            return True
        if cmd.name == "help":
            ui.note(help_text())
        elif cmd.name == "stats":
            self._stats()
        elif cmd.name == "reset":
            s.reset()
            ui.note("conversation cleared" + (" (the system prompt stays)" if s.conversation.system else ""))
        elif cmd.name == "system":
            if not cmd.arg:
                current = s.conversation.system
                ui.note(f"system prompt: {current}" if current else "no system prompt (the template's default applies)")
            else:
                s.set_system(cmd.arg)
                ui.note("system prompt set; the next turn evaluates the conversation again under it")
        elif cmd.name == "draft-len":
            s.set_draft_len(cmd.value)
            ui.note(_drafting(s))
        elif cmd.name == "temp":
            s.set_temperature(float(cmd.value))
            ui.note(f"temperature {cmd.value:g}" + (" (greedy)" if cmd.value == 0 else ""))
        elif cmd.name == "save":
            path = s.conversation.save(cmd.arg, models=self._models())
            ui.note(f"saved {len(s.conversation.messages)} messages to {path}")
        elif cmd.name == "load":
            self.adopt(Conversation.load(cmd.arg), cmd.arg)
        return False

    def adopt(self, conv: Conversation, path: str) -> None:
        """Continue a conversation read from a file (/load FILE, --load FILE) in place of this one."""
        s = self.turns
        s.replace(conv)
        ui.note(
            f"loaded {len(conv.messages)} messages"
            + (" and a system prompt" if conv.system else "")
            + f" from {Path(path).expanduser()}; they replace the conversation"
        )
        # Only the target decides what the conversation says; another draft changes nothing but the speed.
        saved = (conv.saved_with or {}).get("target")
        if saved and saved != s.target.path.name:
            ui.note(
                f"note: it was saved with target {saved}; {s.target.path.name} continues it "
                "(the messages are text, read again through this model's chat template)"
            )

    def _stats(self) -> None:
        s, t = self.turns, self.turns.totals
        if s.last is not None:
            ui.print_summary(s.last.stats)
        acc = f", {t.accepted} of {t.drafted} drafted tokens accepted ({100 * t.accepted / t.drafted:.0f}%)" if t.drafted else ""
        rate = f" at {t.generated / t.seconds:.1f} tok/s" if t.seconds > 0 else ""
        ui.note(
            f"session: {t.turns} turns, {t.generated} tokens generated{rate}{acc}; "
            f"prompt tokens evaluated per turn: {', '.join(map(str, t.history)) or '-'}; "
            f"{len(s.conversation.messages)} messages, context {s.context_used}/{s.target.n_ctx} tokens; "
            f"{_drafting(s)}, temperature {s.opts.sampling.temperature:g}"
            + (f"; lossy, rollback threshold {s.opts.rollback_threshold:g}" if s.opts.rollback_threshold else "")
        )

    # --- readline ------------------------------------------------------------------------

    def _start_readline(self) -> None:
        if not self.tty:
            return
        try:
            import readline
        except ImportError:  # pragma: no cover  (Windows without pyreadline)
            return
        self._history_file = spec_home() / "chat_history"
        try:
            readline.read_history_file(self._history_file)
        except OSError:
            pass
        readline.set_history_length(1000)

    def _save_readline(self) -> None:
        if self._history_file is None:
            return
        import readline

        try:
            self._history_file.parent.mkdir(parents=True, exist_ok=True)
            readline.write_history_file(self._history_file)
        except OSError:
            pass


def _drafting(s: TurnEngine) -> str:
    if s.strategy is None:
        return "draft length 0 (target alone)"
    return f"draft length {s.draft_len_text}, drafting with {s.strategy.name}"


def _line_buffer() -> str:
    try:
        import readline
    except ImportError:  # pragma: no cover
        return ""
    return readline.get_line_buffer()


def turn_line(turn: int, r: TurnResult, used: int, n_ctx: int) -> str:
    st = r.stats
    parts = [f"turn {turn}"]
    evaluated = f"evaluated {r.evaluated} of {r.prompt_tokens} prompt tokens"
    if r.draft_evaluated is not None:
        evaluated += f" (draft {r.draft_evaluated})"
    parts.append(evaluated)
    parts.append(f"{st.generated} tokens at {st.tokens_per_second:.1f} tok/s")
    if st.drafted:
        parts.append(f"accepted {st.accepted}/{st.drafted} drafts ({100 * st.acceptance_rate:.0f}%)")
    parts.append(f"context {used}/{n_ctx}")
    return " · ".join(parts)
