"""OpenAI's request and response shapes: validation of a request body into a GenRequest, and
the JSON objects and stream chunks sent back. Pure Python, no model, no web framework.

Statuses follow one rule: 422 when the body is JSON but a field has the wrong type or a value
out of range (as FastAPI and vLLM answer schema failures), 400 when the request cannot be
served as asked (not JSON, not UTF-8, a feature spec does not have, a prompt too long).
"""

from __future__ import annotations

import json
import math
import time
import uuid
from dataclasses import dataclass, field
from typing import Any


class ApiError(Exception):
    """An error answered in OpenAI's error object: {"error": {"message", "type", "param", "code"}}."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
             413: "invalid_request_error", 422: "invalid_request_error", 503: "server_error", 500: "server_error"}  # fmt: skip

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        kind = self.TYPES.get(self.status, "invalid_request_error")
        return {"error": {"message": self.message, "type": kind, "param": self.param, "code": self.code}}


def invalid(param: str, message: str) -> ApiError:
    return ApiError(422, f"{param}: {message}", param=param, code="invalid_value")


def unsupported(param: str, message: str) -> ApiError:
    return ApiError(400, f"{param}: {message}", param=param, code="unsupported_parameter")


# The extension field: speculation settings for one request (README, `spec serve`).
EXTENSION = "spec"
MAX_STOP = 4  # as OpenAI
MAX_DRAFT_LEN = 64


@dataclass
class Speculation:
    drafter: str | None = None  # None: the command line's
    draft_len: int | None | str = "default"  # "default": the command line's; None: auto; n: fixed
    rollback_threshold: float | None = None  # BiLD's lossy rollback (decode.GenerateOptions); None: lossless


@dataclass
class GenRequest:
    """One validated request, as the engine adapter takes it."""

    kind: str  # "chat" or "completion"
    model: str
    messages: list[dict] | None = None  # chat: [{"role": system|user|assistant, "content": str}]
    prompt: str | None = None  # completion
    max_tokens: int | None = None  # None: until the end of the text or of the context
    temperature: float | None = None  # None: the command line's
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    include_usage: bool = False
    spec: Speculation = field(default_factory=Speculation)


# Fields accepted as long as they ask for nothing spec would not do: name -> the values that are fine.
_HARMLESS = {
    "n": lambda v: v is None or v == 1,
    "logprobs": lambda v: v is None or v is False,
    "top_logprobs": lambda v: v is None or v == 0,
    "echo": lambda v: v is None or v is False,
    "best_of": lambda v: v is None or v == 1,
    "suffix": lambda v: v is None or v == "",
    "presence_penalty": lambda v: v is None or v == 0,
    "frequency_penalty": lambda v: v is None or v == 0,
    "logit_bias": lambda v: v is None or v == {},
    "tools": lambda v: v is None or v == [],
    "functions": lambda v: v is None or v == [],
    "tool_choice": lambda v: v is None or v == "none",
    "function_call": lambda v: v is None or v == "none",
    "parallel_tool_calls": lambda v: True,
    "response_format": lambda v: v is None or (isinstance(v, dict) and v.get("type") == "text"),
    "modalities": lambda v: v is None or v == ["text"],
    "audio": lambda v: v is None,
    "prediction": lambda v: v is None,
    "reasoning_effort": lambda v: v is None,
    "web_search_options": lambda v: v is None,
    "user": lambda v: True,
    "metadata": lambda v: True,
    "store": lambda v: v is None or v is False,
    "service_tier": lambda v: True,
}
_COMMON = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "stream", "stream_options", EXTENSION}
_CHAT = _COMMON | {"messages", "max_completion_tokens"}
_COMPLETION = _COMMON | {"prompt"}
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def parse_body(raw: bytes) -> dict:
    """The body as a JSON object, or a 400 that says what is wrong with it."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(
            400, f"the body is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start})", code="invalid_encoding"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(
            400, f"the body is not valid JSON (line {e.lineno} column {e.colno}: {e.msg})", code="invalid_json"
        ) from None
    except RecursionError:
        raise ApiError(400, "the body's JSON is nested too deeply", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"the body must be a JSON object, not {_json_type(data)}", code="invalid_json")
    return data


def parse_chat(data: dict) -> GenRequest:
    req = _common(data, _CHAT, "chat")
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise invalid("messages", f"expected a list of messages, got {_json_type(messages)}")
    if not messages:
        raise invalid("messages", "must hold at least one message")
    req.messages = [_message(i, m) for i, m in enumerate(messages)]
    if "max_completion_tokens" in data and data["max_completion_tokens"] is not None:
        req.max_tokens = _int(data, "max_completion_tokens", 1)
    return req


def parse_completion(data: dict) -> GenRequest:
    req = _common(data, _COMPLETION, "completion")
    prompt = data.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if isinstance(prompt, list):
        raise unsupported("prompt", "spec takes one prompt as a string (not several prompts, nor token ids)")
    if not isinstance(prompt, str):
        raise invalid("prompt", f"expected a string, got {_json_type(prompt)}")
    if not prompt:
        raise invalid("prompt", "must not be empty")
    req.prompt = _text("prompt", prompt)
    return req


def _common(data: dict, known: set[str], kind: str) -> GenRequest:
    for name, value in data.items():
        if name in known:
            continue
        if name in _HARMLESS:
            if not _HARMLESS[name](value):
                raise unsupported(name, f"spec cannot honour {name}={json.dumps(value)[:80]}; leave it out")
            continue
        raise unsupported(name, "unrecognized request argument")
    model = data.get("model")
    if not isinstance(model, str) or not model:
        raise invalid("model", f"expected the model's id as a string (GET /v1/models), got {_json_type(model)}")
    req = GenRequest(kind=kind, model=model)
    if data.get("max_tokens") is not None:
        req.max_tokens = _int(data, "max_tokens", 1)
    if data.get("temperature") is not None:
        req.temperature = _number(data, "temperature", 0.0, 2.0)
    if data.get("top_p") is not None:
        req.top_p = _number(data, "top_p", 0.0, 1.0)
        if req.top_p == 0.0:
            raise invalid("top_p", "must be more than 0")
    if data.get("top_k") is not None:
        req.top_k = _int(data, "top_k", 0)
    if data.get("seed") is not None:
        req.seed = _int(data, "seed", 0, 2**63 - 1)
    req.stop = _stop(data.get("stop"))
    stream = data.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise invalid("stream", f"expected true or false, got {_json_type(stream)}")
    req.stream = bool(stream)
    options = data.get("stream_options")
    if options is not None:
        if not isinstance(options, dict):
            raise invalid("stream_options", f"expected an object, got {_json_type(options)}")
        usage = options.get("include_usage", False)
        if not isinstance(usage, bool):
            raise invalid("stream_options.include_usage", f"expected true or false, got {_json_type(usage)}")
        req.include_usage = usage
    req.spec = _speculation(data.get(EXTENSION))
    return req


def _speculation(value: Any) -> Speculation:
    spec = Speculation()
    if value is None:
        return spec
    if not isinstance(value, dict):
        raise invalid(EXTENSION, f'expected an object such as {{"drafter": "auto", "draft_len": 4}}, got {_json_type(value)}')
    for key in value:
        if key not in ("drafter", "draft_len", "rollback_threshold"):
            raise unsupported(
                f"{EXTENSION}.{key}", "unknown speculation setting; spec takes drafter, draft_len and rollback_threshold"
            )
    drafter = value.get("drafter")
    if drafter is not None and not isinstance(drafter, str):
        raise invalid(f"{EXTENSION}.drafter", f"expected a drafter's name, got {_json_type(drafter)}")
    spec.drafter = drafter
    if "draft_len" in value:
        n = value["draft_len"]
        if n == "auto":
            spec.draft_len = None
        elif isinstance(n, int) and not isinstance(n, bool) and 0 <= n <= MAX_DRAFT_LEN:
            spec.draft_len = n
        else:
            raise invalid(
                f"{EXTENSION}.draft_len", f'expected "auto" or a whole number from 0 to {MAX_DRAFT_LEN}, got {json.dumps(n)[:40]}'
            )
    rb = value.get("rollback_threshold")
    if rb is not None:
        if isinstance(rb, bool) or not isinstance(rb, (int, float)) or not math.isfinite(rb) or rb < 0:
            raise invalid(f"{EXTENSION}.rollback_threshold", f"expected a number >= 0 (lossy above 0), got {json.dumps(rb)[:40]}")
        spec.rollback_threshold = float(rb)
    return spec


def _message(i: int, m: Any) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict):
        raise invalid(where, f"expected an object with role and content, got {_json_type(m)}")
    role = m.get("role")
    if role in ("tool", "function") or m.get("tool_calls") or m.get("function_call"):
        raise unsupported(where, "spec has no tool calling; send system, user and assistant messages only")
    if role not in ROLES:
        raise invalid(f"{where}.role", f"expected one of {', '.join(ROLES)}, got {json.dumps(role)[:40]}")
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                kind = part.get("type") if isinstance(part, dict) else _json_type(part)
                raise unsupported(f"{where}.content[{j}]", f"spec takes text parts only, got {json.dumps(kind)[:40]}")
            parts.append(part["text"])
        content = "".join(parts)
    if not isinstance(content, str):
        raise invalid(f"{where}.content", f"expected a string, got {_json_type(content)}")
    return {"role": ROLES[role], "content": _text(f"{where}.content", content)}


def _text(param: str, text: str) -> str:
    """JSON can carry text llama.cpp cannot take: lone surrogates (\\ud800) and NUL (\\u0000)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ApiError(
            400, f"{param}: not valid Unicode text (a lone surrogate at offset {e.start})", param=param, code="invalid_encoding"
        ) from None
    if "\0" in text:
        raise ApiError(
            400, f"{param}: contains a NUL character (at offset {text.index(chr(0))})", param=param, code="invalid_encoding"
        )
    return text


def _stop(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise invalid("stop", f"expected a string or a list of strings, got {_json_type(value)}")
    if len(items) > MAX_STOP:
        raise invalid("stop", f"at most {MAX_STOP} stop strings, got {len(items)}")
    if any(not s for s in items):
        raise invalid("stop", "a stop string must not be empty")
    return tuple(_text("stop", s) for s in items)


def _int(data: dict, name: str, lo: int, hi: int | None = None) -> int:
    v = data[name]
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(name, f"expected a whole number, got {_json_type(v)}")
    if v < lo or (hi is not None and v > hi):
        raise invalid(name, f"must be at least {lo}" + (f" and at most {hi}" if hi is not None else "") + f", got {v}")
    return v


def _number(data: dict, name: str, lo: float, hi: float) -> float:
    v = data[name]
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise invalid(name, f"expected a number, got {_json_type(v)}")
    if not lo <= v <= hi:
        raise invalid(name, f"must be between {lo:g} and {hi:g}, got {v:g}")
    return float(v)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "a list"
    return "an object"


# --- responses ------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one generation gave, as the adapter reports it."""

    text: str
    finish_reason: str  # "stop" or "length"
    prompt_tokens: int
    completion_tokens: int
    prompt_evaluated: int  # prompt tokens the target evaluated (the rest came from its cache)
    draft_prompt_evaluated: int | None  # the same for the draft model (None: it did not read the prompt)
    drafted: int
    accepted: int
    drafter: str
    t_prefill: float
    t_generate: float
    t_target: float  # in the target's passes
    t_draft: float  # in the draft model's passes
    interrupted: bool = False  # stopped for a client gone or a server shutting down
    rollback_threshold: float | None = None  # lossy above 0: said in the timings

    def usage(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "prompt_tokens_details": {"cached_tokens": self.prompt_tokens - self.prompt_evaluated},
        }

    def timings(self) -> dict:
        """llama-server's `timings` object (its names), plus what spec adds after them."""

        def ms(seconds: float) -> float:
            return round(seconds * 1000.0, 3)

        per_s = self.completion_tokens / self.t_generate if self.t_generate > 0 else 0.0
        return {
            "prompt_n": self.prompt_evaluated,
            "prompt_ms": ms(self.t_prefill),
            "predicted_n": self.completion_tokens,
            "predicted_ms": ms(self.t_generate),
            "predicted_per_second": round(per_s, 3),
            "draft_n": self.drafted,
            "draft_n_accepted": self.accepted,
            "drafter": self.drafter,
            "draft_prompt_n": self.draft_prompt_evaluated,
            "target_ms": ms(self.t_target),
            "draft_ms": ms(self.t_draft),
            **({"lossy": True, "rollback_threshold": self.rollback_threshold} if self.rollback_threshold else {}),
        }


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def response_object(req: GenRequest, rid: str, created: int, out: Outcome) -> dict:
    if req.kind == "chat":
        choice = {
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": None,
            "finish_reason": out.finish_reason,
        }
        obj = "chat.completion"
    else:
        choice = {"index": 0, "text": out.text, "logprobs": None, "finish_reason": out.finish_reason}
        obj = "text_completion"
    return {
        "id": rid, "object": obj, "created": created, "model": req.model, "system_fingerprint": None,
        "choices": [choice], "usage": out.usage(), "timings": out.timings(),
    }  # fmt: skip


def chunk(req: GenRequest, rid: str, created: int, text: str | None = None, role: bool = False,
          finish: str | None = None, out: Outcome | None = None, usage_only: bool = False) -> dict:  # fmt: skip
    """One server-sent event's object. The last content chunk carries finish_reason and timings;
    with stream_options.include_usage a final chunk with no choices carries usage, as OpenAI sends it."""
    if req.kind == "chat":
        obj = "chat.completion.chunk"
        delta: dict = {}
        if role:
            delta["role"] = "assistant"
        if text is not None:
            delta["content"] = text
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
    else:
        obj = "text_completion"
        choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}
    data = {"id": rid, "object": obj, "created": created, "model": req.model, "system_fingerprint": None,
            "choices": [] if usage_only else [choice]}  # fmt: skip
    if req.include_usage:
        data["usage"] = out.usage() if usage_only and out is not None else None
    if finish is not None and out is not None:
        data["timings"] = out.timings()
    return data


def sse(data: dict | str) -> bytes:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n".encode()


def now() -> int:
    return int(time.time())
