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

The speculation strategy lives across turns too: one Engine holds it from turn to
turn, so what `--draft-len auto` learns in one reply (acceptance estimates,
measured costs, its decisions) is where the next reply starts. A new strategy
comes only from `/draft-len`, through the factory the session was given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .llama import Model
from .conversation import ChatTemplate, Conversation, fit_history
from .decode import Engine, GenerateOptions
from .drafters.base import Proposal, RoundOutcome
from .drafters.crossvocab import drafter_for
from .errors import SpecError
from .sampling import SamplingParams
from .stats import Stats
from .strategy import FixedStrategy, Strategy

# A draft length (None: auto) -> the strategy that drafts at it (None: the target alone).
StrategyFactory = Callable[[int | None], Strategy | None]


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
    """The conversation, its prompt building and its turns.

    `strategy_for(draft_len)` builds the strategy for a draft length (None: auto); the
    session asks it once at the start (for `auto`, else for opts.draft_len) and again on
    each `set_draft_len`. Without one, the draft model drafts at a fixed length (the
    drafter `drafter_for` picks), and auto is not on offer: `spec chat` passes one built
    on `strategy.build_strategy`. `opts` is copied, never changed.
    """

    def __init__(
        self,
        target: Model,
        draft: Model | None,
        opts: GenerateOptions,
        system: str | None = None,
        strategy_for: StrategyFactory | None = None,
        auto: bool = False,
    ):
        self.target = target
        self.draft = draft
        info = target.vocab_info()
        self._bos_text = _special_text(target, info.bos)
        self._add_bos = info.add_bos
        self.template = ChatTemplate(target.chat_template(), self._bos_text, _special_text(target, info.eos))
        self.opts = dataclasses.replace(opts, stop=(*opts.stop, *self.template.stop))
        self.strategy_for = strategy_for or fixed_strategies(target, draft)
        self.draft_len: int | None = None  # None: auto
        self.strategy = None
        self.engine = Engine(target)
        self.set_draft_len(None if auto else opts.draft_len)
        self.conversation = Conversation(system=system or None)
        # (rendered text, its exact tokens) for the last prompt plus its reply
        self._known: tuple[str, list[int]] | None = None
        self.last: TurnResult | None = None
        self.totals = Totals()

    def set_draft_len(self, draft_len: int | None) -> None:
        """Draft `draft_len` tokens a round from the next turn on (None: auto), with the same drafter choice."""
        strategy = self.strategy_for(draft_len)  # first: a refusal leaves everything as it was
        self.draft_len, self.strategy = draft_len, strategy
        self.opts = dataclasses.replace(self.opts, draft_len=draft_len or 0)
        self.engine = Engine(self.target, strategy=_Prefill(strategy, self.draft) if strategy is not None else None)

    @property
    def draft_len_text(self) -> str:
        """The draft length as /stats shows it: a number, or "auto" where the strategy chooses it."""
        if self.strategy is None:
            return "0"
        fixed = self.strategy.draft_len  # a FixedStrategy's (a tree's depth under auto too)
        return str(fixed) if fixed is not None else "auto"

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
        prefill = self.engine.strategy
        if prefill is not None:
            prefill.draft_evaluated = None
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
            draft_evaluated=prefill.draft_evaluated if prefill is not None else None,
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


def fixed_strategies(target: Model, draft: Model | None) -> StrategyFactory:
    """The draft model's drafter at a fixed length, one drafter for every length: a ChatSession's default.
    Without a draft model, the target alone at any length."""
    drafter = drafter_for(target, draft) if draft is not None else None

    def strategy_for(draft_len: int | None):
        if draft_len == 0 or drafter is None:
            return None  # the target alone
        if draft_len is None:
            raise SpecError("this chat drafts at a fixed length; give a number of tokens")
        return FixedStrategy(drafter, draft_len)

    return strategy_for


class _Prefill:
    """The strategy as the engine sees it, noting what its prepare had the draft model evaluate.

    The engine prepares the strategy once per turn, after the target has read the prompt: the
    draft model reads it there (through the drafter, so one from another family reads its text),
    and only there. `draft_evaluated` is those tokens for the turn line; None where the draft
    model was not prepared (no draft model, only the n-gram lookup drafts, or auto left it out).
    """

    def __init__(self, strategy: Strategy, draft: Model | None):
        self.strategy = strategy
        self.draft = draft
        self.draft_evaluated: int | None = None
        # the rest of the Strategy protocol: the strategy's own
        self.name, self.draft_len, self.rounds = strategy.name, strategy.draft_len, strategy.rounds

    def prepare(self, tokens: Sequence[int]) -> int | None:
        # Every drafter that reads the prompt into the draft model does so with one sync() and
        # returns its count; a strategy that leaves the draft alone returns None.
        evaluated = self.strategy.prepare(tokens)
        if self.draft is not None:
            self.draft_evaluated = evaluated
        return evaluated

    def propose(self, context: Sequence[int], cap: int, params: SamplingParams, rng: np.random.Generator) -> Proposal:
        return self.strategy.propose(context, cap, params, rng)

    def observe(self, prop: Proposal, outcome: RoundOutcome) -> None:
        self.strategy.observe(prop, outcome)

    def describe(self) -> list[str]:
        return self.strategy.describe()


def _special_text(model: Model, token: int) -> str:
    if token < 0 or token >= model.n_vocab:
        return ""
    return model.token_text(token).decode("utf-8", errors="replace")
