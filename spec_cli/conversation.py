"""The model-free half of `spec chat`: chat templates, the conversation and its JSON
file, fitting it into the context, multi-line input and slash commands.

Nothing here loads a model; `turns.py` joins this to the engine and
`cli/chat.py` to the terminal.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import SpecError
from .files import write_text_atomic
from .limits import MAX_DRAFT_LEN

# --- chat templates ------------------------------------------------------------

# For GGUF files without `tokenizer.chat_template` (base models such as Gemma 270M):
# a plain transcript, which a base model continues sensibly, ended by a stop string
# because such a model has no end-of-turn token.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] | trim }}\n\n"
    "{% elif m['role'] == 'user' %}User: {{ m['content'] | trim }}\n\n"
    "{% else %}Assistant: {{ m['content'] | trim }}\n\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
FALLBACK_STOP = ("\nUser:",)


def _environment():
    """A sandboxed Jinja environment set up as llama-cpp-python and Transformers set theirs."""
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class IgnoreGenerationTags(jinja2.ext.Extension):
        # Transformers' `{% generation %}` marks assistant text for training masks; render its body.
        tags = {"generation"}

        def parse(self, parser):
            parser.stream.skip(1)
            return parser.parse_statements(("name:endgeneration",), drop_needle=True)

    env = ImmutableSandboxedEnvironment(
        loader=jinja2.BaseLoader(),
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[IgnoreGenerationTags, jinja2.ext.loopcontrols],
    )
    # Transformers renders tojson without ASCII escapes; templates that embed tool schemas rely on it.
    env.filters["tojson"] = lambda x, ensure_ascii=False, indent=None, separators=None, sort_keys=False: json.dumps(
        x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )
    return env


def _raise_exception(message: str):
    raise SpecError(f"the chat template refused the conversation: {message}")


class ChatTemplate:
    """A model's chat template, rendered the way llama-cpp-python renders it."""

    def __init__(self, source: str | None, bos_token: str = "", eos_token: str = ""):
        import jinja2

        self.fallback = source is None or not source.strip()
        self.source = FALLBACK_TEMPLATE if self.fallback else source
        self.bos_token = bos_token
        self.eos_token = eos_token
        # A base model has no end-of-turn token; the transcript format marks turns with text.
        self.stop: tuple[str, ...] = FALLBACK_STOP if self.fallback else ()
        try:
            self._template = _environment().from_string(self.source)
        except jinja2.TemplateError as e:
            raise SpecError(f"the model's chat template is not valid Jinja: {e}") from None

    def render(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> str:
        import jinja2

        try:
            return self._template.render(
                messages=list(messages),
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                add_generation_prompt=add_generation_prompt,
                raise_exception=_raise_exception,
                strftime_now=lambda fmt: datetime.now().strftime(fmt),
                tools=None,
                functions=None,
                function_call=None,
                tool_choice=None,
            )
        except SpecError:
            raise
        except (jinja2.TemplateError, TypeError, ValueError, KeyError, IndexError) as e:
            raise SpecError(f"the model's chat template failed to render: {type(e).__name__}: {e}") from None


# --- the conversation --------------------------------------------------------------

SAVE_FORMAT = "spec-chat"
SAVE_VERSION = 1
ROLES = ("user", "assistant")


@dataclass
class Conversation:
    """The system prompt (kept apart, so trimming never drops it) and the turns after it."""

    system: str | None = None
    messages: list[dict] = field(default_factory=list)
    # The model files a loaded conversation was saved with ({"target": name, "draft": name or None}).
    saved_with: dict | None = None

    def for_template(self, extra: Sequence[dict] = ()) -> list[dict]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + [dict(m) for m in self.messages] + [dict(m) for m in extra]

    def to_json(self, models: dict | None = None) -> dict:
        data = {"format": SAVE_FORMAT, "version": SAVE_VERSION, "system": self.system, "messages": self.messages}
        return data | ({"models": models} if models else {})

    @classmethod
    def from_json(cls, data) -> Conversation:
        """Our own save files, and also a bare OpenAI-style list of messages."""
        if isinstance(data, list):
            data = {"messages": data}
        if not isinstance(data, dict) or not isinstance(data.get("messages"), list):
            raise ValueError("expected an object with a 'messages' list")
        if data.get("format", SAVE_FORMAT) != SAVE_FORMAT:
            raise ValueError(f"format is {data.get('format')!r}, not {SAVE_FORMAT!r}")
        version = data.get("version", SAVE_VERSION)
        if not isinstance(version, int) or version > SAVE_VERSION:
            raise ValueError(f"version {version!r} is newer than this spec understands ({SAVE_VERSION})")
        system = data.get("system")
        if system is not None and not isinstance(system, str):
            raise ValueError("'system' must be a string or null")
        messages = []
        for i, m in enumerate(data["messages"]):
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise ValueError(f"messages[{i}] needs a string 'content'")
            role = m.get("role")
            if role == "system" and i == 0 and system is None:
                system = m["content"]
                continue
            if role not in ROLES:
                raise ValueError(f"messages[{i}] has role {role!r}; expected one of {', '.join(ROLES)}")
            messages.append({"role": role, "content": m["content"]})
        models = data.get("models")
        if models is not None and not (
            isinstance(models, dict) and all(isinstance(v, (str, type(None))) for v in models.values())
        ):
            raise ValueError("'models' must map 'target' and 'draft' to file names")
        return cls(system=system or None, messages=messages, saved_with=models)

    def save(self, path: str | Path, models: dict | None = None) -> Path:
        return write_text_atomic(path, json.dumps(self.to_json(models), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Conversation:
        p = Path(path).expanduser()
        if p.exists() and not p.is_file():  # a folder, or a FIFO that would block the read
            raise SpecError(f"{p} is not a regular file; give the path of a file written by /save")
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as e:
            raise SpecError(f"cannot read {p}: {e.strerror or e}; give the path of a file written by /save") from None
        except UnicodeDecodeError:
            raise SpecError(f"{p} is not a text file; give the path of a file written by /save") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise SpecError(
                f"{p} is not valid JSON (line {e.lineno}: {e.msg}); it is cut short or not a file written by /save"
            ) from None
        except RecursionError:
            raise SpecError(
                f"{p} is not a saved chat: its JSON is nested too deeply; give the path of a file written by /save"
            ) from None
        try:
            return cls.from_json(data)
        except ValueError as e:
            raise SpecError(f"{p} is not a saved chat: {e}; give the path of a file written by /save") from None


def drop_oldest_turn(messages: list[dict]) -> int:
    """Remove the first user message and the replies after it, in place; return how many went.

    The last user message (the one being answered) is never removed.
    """
    users = [i for i, m in enumerate(messages) if m["role"] == "user"]
    if len(users) < 2:
        return 0
    n = users[1]
    del messages[:n]
    return n


def fit_history(messages: list[dict], count: Callable[[list[dict]], int], limit: int) -> int:
    """Drop whole turns from the front until count(messages) <= limit; return the number dropped.

    Raises SpecError when even the newest message alone does not fit.
    """
    dropped = 0
    while count(messages) > limit:
        n = drop_oldest_turn(messages)
        if n == 0:
            raise SpecError(
                f"this message does not fit the context even without earlier turns "
                f"(it needs more than {limit} tokens with room for the reply); "
                "send a shorter one, shorten the system prompt, or restart with a larger --ctx"
            )
        dropped += n
    return dropped


# --- input: multi-line messages -------------------------------------------------------

TRIPLE = '"""'


class InputAssembler:
    """Joins input lines into one message.

    A line ending in a backslash continues on the next line; a line starting with
    triple quotes opens a block that the next line ending in triple quotes closes
    (as in llama.cpp's and Ollama's interactive modes).
    """

    def __init__(self):
        self._lines: list[str] = []
        self._block = False

    @property
    def pending(self) -> bool:
        return bool(self._lines) or self._block

    def cancel(self) -> None:
        self._lines, self._block = [], False

    def feed(self, line: str) -> str | None:
        """Add one line; return the whole message once it is complete, else None."""
        if self._block:
            if line.rstrip().endswith(TRIPLE):
                self._lines.append(line.rstrip()[: -len(TRIPLE)])
                return self._finish()
            self._lines.append(line)
            return None
        if not self._lines and line.lstrip().startswith(TRIPLE):
            rest = line.lstrip()[len(TRIPLE) :]
            if rest.rstrip().endswith(TRIPLE):
                self._lines.append(rest.rstrip()[: -len(TRIPLE)])
                return self._finish()
            self._block = True
            if rest.strip():
                self._lines.append(rest)
            return None
        if line.endswith("\\"):
            self._lines.append(line[:-1])
            return None
        self._lines.append(line)
        return self._finish()

    def _finish(self) -> str:
        text = "\n".join(self._lines)
        self.cancel()
        return text


# --- slash commands ------------------------------------------------------------------


@dataclass(frozen=True)
class CommandSpec:
    name: str
    usage: str
    about: str
    arg: str  # "none", "optional", "required"


COMMANDS = (
    CommandSpec("help", "/help", "show this help", "none"),
    CommandSpec("stats", "/stats", "statistics of the last reply and of the session", "none"),
    CommandSpec("reset", "/reset", "forget the conversation (the system prompt stays)", "none"),
    CommandSpec("system", "/system [TEXT]", "show or set the system prompt", "optional"),
    CommandSpec(
        "draft-len", "/draft-len N|auto", "tokens drafted per round (0 = target alone, auto = chosen each round)", "required"
    ),
    CommandSpec("temp", "/temp X", "sampling temperature (0 = greedy)", "required"),
    CommandSpec("save", "/save FILE", "write the conversation to FILE as JSON", "required"),
    CommandSpec("load", "/load FILE", "replace the conversation with one saved by /save", "required"),
    CommandSpec("exit", "/exit", "quit (also /quit, /bye, Ctrl-D)", "none"),
)
ALIASES = {"quit": "exit", "bye": "exit", "?": "help", "h": "help"}
_BY_NAME = {c.name: c for c in COMMANDS}


@dataclass(frozen=True)
class Command:
    name: str
    arg: str = ""
    value: float | int | None = None  # the parsed number for /draft-len (None: auto) and /temp


def is_command(text: str) -> bool:
    return text.startswith("/")


def help_text() -> str:
    width = max(len(c.usage) for c in COMMANDS)
    lines = [f"  {c.usage.ljust(width)}  {c.about}" for c in COMMANDS]
    lines += [
        "",
        '  End a line with \\ to continue on the next; wrap several lines in """ ... """.',
        "  Ctrl-C stops a reply; Ctrl-C on an empty line or Ctrl-D quits.",
    ]
    return "\n".join(lines)


def parse_command(text: str) -> Command:
    """`/name arg` -> Command; SpecError with a one-line reason for anything else."""
    head, _, arg = text.strip()[1:].partition(" ")
    name = ALIASES.get(head.lower(), head.lower())
    arg = arg.strip()
    spec = _BY_NAME.get(name)
    if spec is None:
        shown = "/" + head if head else "/"
        raise SpecError(f"unknown command {shown}")
    if spec.arg == "none" and arg:
        raise SpecError(f"/{name} takes no argument (usage: {spec.usage})")
    if spec.arg == "required" and not arg:
        raise SpecError(f"/{name} needs an argument (usage: {spec.usage})")
    value: float | int | None = None
    if name == "draft-len" and arg.lower() == "auto":
        value = None
    elif name == "draft-len":
        try:
            value = int(arg)
        except ValueError:
            raise SpecError(f"/draft-len takes a whole number or 'auto', got {arg!r}") from None
        if not 0 <= value <= MAX_DRAFT_LEN:
            raise SpecError(f"/draft-len must be between 0 and {MAX_DRAFT_LEN}, got {value}")
    elif name == "temp":
        try:
            value = float(arg)
        except ValueError:
            raise SpecError(f"/temp takes a number, got {arg!r}") from None
        if not math.isfinite(value) or value < 0:
            raise SpecError(f"/temp must be 0 or more, got {arg}")
    return Command(name, arg, value)
