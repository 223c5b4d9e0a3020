"""The adapter between the HTTP server and spec's engine: the only module of spec_cli.serve
that imports spec's loading, chat templates and loop.

It loads the pair from the command line's choices, renders messages with the model's own
chat template (as `spec chat` does), and runs one generation at a time over the live KV
caches of both models. Requests are stateless, but a request whose prompt extends the last
one (a chat's next turn) reuses the caches: as in `spec chat`, a prompt that starts with the
text of the previous prompt plus its reply keeps that text's exact tokens and tokenizes only
what follows, and `Model.sync` then evaluates only the new tokens, in the target and (through
the strategy's prepare) in the draft.

Strategies are built once per (drafter, draft length) and kept, so what `auto` learns in one
request carries to the next, as across the turns of `spec chat`.

Everything here runs on the engine thread (spec_cli/serve/broker.py) except `check`, which
the event loop calls and which touches no model.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

from ..decode import Engine, GenerateOptions
from ..errors import SpecError
from ..limits import DRAFTERS
from ..loading import LoadedPair, ModelChoice, load_pair
from ..pipeline import OFF, ON, overlap_drafter
from ..sampling import SamplingParams
from ..strategy import build_strategy, parse_draft_len
from ..turns import ChatPrompts
from .schemas import ApiError, GenRequest, Outcome

# The pair `spec serve` loads with no model options: the chat pair, as `spec chat` does.
DEFAULT_PRESET = "chat"


@dataclasses.dataclass
class Defaults:
    """Settings a request may leave out: the command line's."""

    temperature: float = 0.0
    top_k: int = 40
    top_p: float = 1.0


class ServedPair:
    """A loaded target/draft pair behind the server. The HTTP layer uses only:
    model_id, aliases, n_ctx, describe(), check(req), generate(req, post, should_stop), close()."""

    def __init__(self, pair: LoadedPair, choice: ModelChoice, draft_len: int | None, defaults: Defaults,
                 model_id: str, draft_min_p: float = 0.0, notify: Callable[[str], None] = lambda s: None,
                 overlap: str = OFF):  # fmt: skip
        self.pair = pair
        self.choice = choice
        self.draft_len = 0 if choice.no_spec else draft_len  # None: auto
        self.defaults = defaults
        self.draft_min_p = draft_min_p
        self.overlap = overlap  # --overlap, for the requests whose strategy drafts with the draft model
        self.notify = notify
        target = pair.target
        self.model_id = model_id
        self.aliases = {model_id, pair.target_path.name, pair.target_path.stem}
        self.n_ctx = target.n_ctx
        self.prompts = ChatPrompts(target)
        self.template = self.prompts.template
        self._strategies: dict[tuple[str, int | None], object | None] = {}
        first = self._strategy(choice.drafter, self.draft_len)  # auto's cost curve now, not in the first request
        if overlap == ON and overlap_drafter(first) is None:
            raise SpecError(
                "--overlap on drafts ahead with a draft model of the target's vocabulary: use --drafter model or auto with one"
            )

    def describe(self) -> dict:
        p = self.pair
        return {
            "target": p.target_path.name,
            "draft": p.draft_path.name if p.draft_path else None,
            "drafter": "none" if self.choice.no_spec else self.choice.drafter,
            "draft_len": "auto" if self.draft_len is None else self.draft_len,
            "n_ctx": self.n_ctx,
            "chat_template": "transcript (the GGUF has none)" if self.template.fallback else "the model's own",
        }

    def check(self, req: GenRequest) -> None:
        """What can be refused without a model (on the event loop)."""
        drafter = req.spec.drafter
        if drafter is not None and drafter not in DRAFTERS:
            raise ApiError(
                422,
                f"spec.drafter: expected one of {', '.join(DRAFTERS)}, got {drafter!r}",
                param="spec.drafter",
                code="invalid_value",
            )
        if drafter == "self" and self.choice.drafter != "self":
            raise ApiError(
                400,
                "spec.drafter: self needs the draft cut from the target, loaded at start: run spec serve --drafter self",
                param="spec.drafter",
            )
        wants_drafts = drafter is not None or req.spec.draft_len not in ("default", 0)
        if self.choice.no_spec and wants_drafts:
            raise ApiError(
                400,
                "spec: this server runs the target alone (started with --no-spec); leave the speculation settings out",
                param="spec",
            )

    # --- one request (engine thread) ------------------------------------------------

    def generate(self, req: GenRequest, post: Callable[[str, object], None], should_stop: Callable[[], bool]) -> Outcome:
        drafter = req.spec.drafter or self.choice.drafter
        draft_len = self.draft_len if req.spec.draft_len == "default" else req.spec.draft_len
        strategy = self._strategy(drafter, draft_len)
        if req.kind == "chat":
            text = self._render(req.messages)
            prompt = self.prompts.tokenize(text)
            stop = (*req.stop, *self.template.stop)
        else:
            text, prompt, stop = req.prompt, self.pair.target.tokenize(req.prompt), req.stop
        n, n_ctx = len(prompt), self.n_ctx
        if n >= n_ctx:
            raise ApiError(400, f"the prompt is {n} tokens but the context holds {n_ctx}; send a shorter prompt or restart with a larger --ctx",
                           param="messages" if req.kind == "chat" else "prompt", code="context_length_exceeded")  # fmt: skip
        room = n_ctx - n
        if req.max_tokens is not None and req.max_tokens > room:
            raise ApiError(400, f"max_tokens is {req.max_tokens} but the context holds {n_ctx} tokens and the prompt takes {n} of them, "
                           f"which leaves {room}; ask for at most {room}", param="max_tokens", code="context_length_exceeded")  # fmt: skip
        d = self.defaults
        opts = GenerateOptions(
            max_tokens=req.max_tokens or room,
            draft_len=0,
            sampling=SamplingParams(
                temperature=d.temperature if req.temperature is None else req.temperature,
                top_k=d.top_k if req.top_k is None else req.top_k,
                top_p=d.top_p if req.top_p is None else req.top_p,
            ),
            seed=req.seed,
            stop=stop,
            rollback_threshold=req.spec.rollback_threshold,
        )
        try:
            opts.check()
        except SpecError as e:
            raise ApiError(422, str(e).replace("--", "")) from None
        target, draft = self.pair.target, self.pair.draft
        engine = Engine(target, strategy=strategy, overlap=self.overlap if overlap_drafter(strategy) is not None else OFF)
        t_target, t_draft = target.decode_seconds, draft.decode_seconds if draft is not None else 0.0
        post("start", n)
        try:
            gen = engine.generate(prompt, opts, on_text=lambda t: post("text", t), should_stop=should_stop)
        except SpecError as e:
            self.prompts.forget()
            raise ApiError(400, str(e)) from None
        except BaseException:
            self.prompts.forget()  # the caches may hold anything: the next prompt is tokenized afresh, sync keeps what matches
            raise
        if req.kind == "chat":
            self.prompts.remember(text, prompt, gen.text, gen.tokens)
        s = gen.stats
        return Outcome(
            text=gen.text,
            finish_reason="length" if s.stop_reason in ("max_tokens", "context") else "stop",
            prompt_tokens=n,
            completion_tokens=s.generated,
            prompt_evaluated=s.prompt_tokens_evaluated,
            draft_prompt_evaluated=gen.draft_evaluated if draft is not None else None,
            drafted=s.drafted,
            accepted=s.accepted,
            drafter=s.drafter,
            t_prefill=s.t_prefill,
            t_generate=s.t_total,
            t_target=target.decode_seconds - t_target,
            t_draft=(draft.decode_seconds - t_draft) if draft is not None else 0.0,
            interrupted=s.stop_reason == "interrupted",
            rollback_threshold=s.rollback_threshold,
        )

    def _strategy(self, drafter: str, draft_len: int | None):
        key = (drafter, draft_len)
        if key not in self._strategies:
            choice = dataclasses.replace(self.choice, drafter=drafter)
            try:
                self._strategies[key] = build_strategy(
                    self.pair, choice, draft_len, notify=self.notify, draft_min_p=self.draft_min_p
                )
            except SpecError as e:
                raise ApiError(400, f"spec: {e}", param="spec") from None
        return self._strategies[key]

    def _render(self, messages: list[dict]) -> str:
        try:
            return self.prompts.render(messages)
        except SpecError as e:
            raise ApiError(400, str(e), param="messages") from None

    def close(self) -> None:
        self.pair.close()


def open_pair(choice: ModelChoice, draft_len: str, defaults: Defaults, draft_min_p: float = 0.0,
              notify: Callable[[str], None] = lambda s: None, overlap: str = OFF) -> ServedPair:  # fmt: skip
    """Load the pair the command line names (default: the chat pair) and prepare its strategy."""
    fixed = parse_draft_len(draft_len)  # before loading: a typo fails fast
    choice.check()
    pair = load_pair(choice, DEFAULT_PRESET, notify=notify)
    try:
        return ServedPair(
            pair,
            choice,
            fixed,
            defaults,
            model_id=_model_id(choice, pair.target_path),
            draft_min_p=draft_min_p,
            notify=notify,
            overlap=overlap,
        )
    except ApiError as e:  # the command line's own speculation settings do not suit the pair
        pair.close()
        raise SpecError(e.message.removeprefix("spec: ")) from None
    except BaseException:
        pair.close()
        raise


def _model_id(choice: ModelChoice, target_path: Path) -> str:
    """The id clients name: the preset (the default pair's name without one), else the target file's stem."""
    if choice.target is None:
        return choice.preset or DEFAULT_PRESET
    return target_path.stem
