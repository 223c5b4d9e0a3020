"""A conversation with the target model whose KV caches (target and draft) live across turns.

Each turn renders the whole conversation with the model's chat template, but only
the text after what the caches already hold is tokenized anew: the previous
prompt's tokens and the reply's own tokens are reused as they are. Re-tokenizing
the whole history would usually give the same ids, but not always (a reply is
not always the canonical tokenization of its own text), and any difference
would make `Model.sync` re-evaluate everything after it. When the new rendering
does not start with the old one (a template that rewrites earlier turns, an
edited system prompt, dropped turns, a /load) the whole text is tokenized
again and `sync` still keeps whatever prefix matches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from .backend import Model
from .chat import ChatTemplate, Conversation, fit_history
from .decode import Engine, GenerateOptions
from .drafters.base import prepare
from .drafters.crossvocab import drafter_for
from .stats import Stats


@dataclass
class TurnResult:
    text: str
    tokens: list[int]
    stats: Stats
    prompt: list[int]
    evaluated: int  # prompt tokens the target evaluated this turn
    draft_evaluated: int | None  # the same for the draft (None without speculation)
    dropped: int  # old messages dropped to make room
    interrupted: bool
    kept: bool  # whether the user message and reply joined the conversation

    @property
    def prompt_tokens(self) -> int:
        return len(self.prompt)


@dataclass
class Totals:
    turns: int = 0
    generated: int = 0
    drafted: int = 0
    accepted: int = 0
    seconds: float = 0.0
    evaluated: int = 0
    history: list[int] = field(default_factory=list)  # prompt tokens evaluated, per turn

    def add(self, r: TurnResult) -> None:
        self.turns += 1
        self.generated += r.stats.generated
        self.drafted += r.stats.drafted
        self.accepted += r.stats.accepted
        self.seconds += r.stats.t_total
        self.evaluated += r.evaluated
        self.history.append(r.evaluated)


class ChatSession:
    def __init__(self, target: Model, draft: Model | None, opts: GenerateOptions, system: str | None = None):
        self.target = target
        self.draft = draft
        self.opts = opts
        self.engine = Engine(target, drafter_for(target, draft) if draft is not None else None)
        info = target.vocab_info()
        self._bos_text = _special_text(target, info.bos)
        self._add_bos = info.add_bos
        self.template = ChatTemplate(target.chat_template(), self._bos_text, _special_text(target, info.eos))
        self.opts.stop = tuple(self.template.stop)
        self.conversation = Conversation(system=system or None)
        # (rendered text, its exact tokens) for the last prompt plus its reply
        self._known: tuple[str, list[int]] | None = None
        self.last: TurnResult | None = None
        self.totals = Totals()

    # --- prompt building ------------------------------------------------------

    def render(self, messages: list[dict]) -> str:
        return self.template.render(messages, add_generation_prompt=True)

    def tokenize_prompt(self, text: str) -> list[int]:
        known = self._known
        if known is not None and text.startswith(known[0]):
            return known[1] + self.target.tokenize(text[len(known[0]):], add_bos=False, special=True)
        # Most templates write the BOS token themselves; add it only when the text lacks it.
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.target.tokenize(text, add_bos=add_bos, special=True)

    @property
    def reply_room(self) -> int:
        """Context kept free for the reply when deciding whether the conversation fits."""
        return min(self.opts.max_tokens, self.target.n_ctx // 2)

    def _fit(self, user: dict) -> tuple[str, list[int], int]:
        """The prompt for `user` after the conversation, dropping the oldest turns if it does not fit."""
        limit = self.target.n_ctx - self.reply_room
        conv = self.conversation
        text = self.render(conv.for_template([user]))
        tokens = self.tokenize_prompt(text)
        if len(tokens) <= limit:
            return text, tokens, 0
        trial = conv.messages + [user]
        head = Conversation(system=conv.system)
        dropped = fit_history(trial, lambda ms: len(self.tokenize_prompt(self.render(head.for_template(ms)))), limit)
        conv.messages = trial[:-1]
        text = self.render(conv.for_template([user]))
        return text, self.tokenize_prompt(text), dropped

    # --- one turn -------------------------------------------------------------

    def reply(
        self,
        user_text: str,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        on_span: Callable[[str, str], None] | None = None,
    ) -> TurnResult:
        user = {"role": "user", "content": user_text}
        text, prompt, dropped = self._fit(user)
        use_draft = self.draft is not None and self.opts.draft_len > 0
        draft_evaluated = None
        if use_draft:
            # Bring the draft cache up to the prompt now, so that its cost is counted
            # like the target's; the drafter's own sync then finds it in place.
            # (Through the drafter: one from another model family reads the prompt's text.)
            prepare(self.engine.strategy or self.engine.drafter, prompt[:-1])
            draft_evaluated = self.draft.last_sync_evaluated
        gen = self.engine.generate(prompt, self.opts, on_text=on_text, should_stop=should_stop, on_span=on_span)
        interrupted = gen.stats.stop_reason == "interrupted"
        kept = not (interrupted and not gen.text)
        if kept:
            # A stopped reply stays in the conversation as far as it got: the caches hold it.
            self.conversation.messages += [user, {"role": "assistant", "content": gen.text}]
            if self.target.detokenize(gen.tokens) == gen.text:
                self._known = (text + gen.text, prompt + gen.tokens)
            else:  # a stop string cut the text inside the tokens: let the next turn re-tokenize
                self._known = None
        result = TurnResult(
            text=gen.text,
            tokens=gen.tokens,
            stats=gen.stats,
            prompt=prompt,
            evaluated=gen.stats.prompt_tokens_evaluated,
            draft_evaluated=draft_evaluated,
            dropped=dropped,
            interrupted=interrupted,
            kept=kept,
        )
        self.last = result
        self.totals.add(result)
        return result

    # --- edits from slash commands ---------------------------------------------

    def reset(self) -> None:
        """Forget the turns. The caches stay: the next prompt reuses the system prompt's tokens."""
        self.conversation.messages.clear()
        self._known = None

    def set_system(self, text: str | None) -> None:
        self.conversation.system = text or None
        self._known = None

    def replace(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self._known = None

    @property
    def context_used(self) -> int:
        return self.target.n_past


def _special_text(model: Model, token: int) -> str:
    if token < 0 or token >= model.n_vocab:
        return ""
    return model.token_text(token).decode("utf-8", errors="replace")
