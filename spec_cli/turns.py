"""A chat's turns over live KV caches: the turn engine between the conversation and the loop.

Each turn renders the whole conversation with the model's chat template, but tokenizes only
the text after what the caches already hold, reusing the earlier prompt's and the reply's own
tokens: a reply is not always the canonical tokenization of its text, and a re-tokenized
history that differs would make `Model.sync` evaluate everything after the difference. When
the new rendering does not extend the old one (a rewritten system prompt, dropped turns, a
/load), the whole text is tokenized again and `sync` still keeps the prefix that matches.

One Engine serves the whole chat, and each strategy is built once, so what `--draft-len auto`
learns in one reply is where the next starts, also after a `/draft-len` there and back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from .conversation import ChatTemplate, Conversation, fit_history
from .decode import Engine, GenerateOptions
from .drafters.crossvocab import drafter_for
from .errors import SpecError
from .llama import Model
from .pipeline import OFF
from .stats import Stats
from .strategy import FixedStrategy, Strategy

# A draft length (None: auto) -> the strategy that drafts at it (None: the target alone).
StrategyFactory = Callable[[int | None], Strategy | None]


class ChatPrompts:
    """The target's chat template, and the exact tokens of the last prompt plus its reply.

    Shared by the chat's turns and the server's chat completions: a new rendering that extends
    the remembered text keeps the remembered tokens and tokenizes only the rest.
    """

    def __init__(self, target: Model):
        self.target = target
        info = target.vocab_info()
        self._bos_text = special_text(target, info.bos)
        self._add_bos = info.add_bos
        self.template = ChatTemplate(target.chat_template(), self._bos_text, special_text(target, info.eos))
        self._known: tuple[str, list[int]] | None = None  # (rendered text, its exact tokens)

    def render(self, messages: list[dict]) -> str:
        return self.template.render(messages, add_generation_prompt=True)

    def tokenize(self, text: str) -> list[int]:
        known = self._known
        if known is not None and text.startswith(known[0]):
            return known[1] + self.target.tokenize(text[len(known[0]) :], add_bos=False, special=True)
        # Most templates write the BOS token themselves; add it only when the text lacks it.
        add_bos = self._add_bos and not (self._bos_text and text.startswith(self._bos_text))
        return self.target.tokenize(text, add_bos=add_bos, special=True)

    def remember(self, text: str, prompt: list[int], reply_text: str, reply_tokens: list[int]) -> None:
        """After a reply: the prompt and reply as the caches hold them, for the next prompt."""
        if self.target.detokenize(reply_tokens) == reply_text:
            self._known = (text + reply_text, prompt + reply_tokens)
        else:  # a stop string cut the text inside the tokens: the next prompt is tokenized afresh
            self._known = None

    def forget(self) -> None:
        """The conversation changed, or the caches may hold anything: tokenize the next prompt afresh."""
        self._known = None


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


class TurnEngine:
    """The conversation, its prompts and its turns, over one Engine that it owns.

    `strategy_for(draft_len)` builds the strategy for a draft length (None: auto); each length
    is asked for once and its strategy kept, so going back to a length resumes its strategy as
    it was left. `draft_len` is the length of the first turn. Without a factory the draft model
    drafts at a fixed length (`fixed_strategies`). `opts` is copied, never changed.
    """

    def __init__(
        self,
        target: Model,
        draft: Model | None,
        opts: GenerateOptions,
        *,
        draft_len: int | None = 0,
        strategy_for: StrategyFactory | None = None,
        system: str | None = None,
        overlap: str = OFF,
    ):
        self.target = target
        self.draft = draft
        self.prompts = ChatPrompts(target)
        self.template = self.prompts.template
        self.opts = dataclasses.replace(opts, stop=(*opts.stop, *self.template.stop))
        self._strategy_for = strategy_for or fixed_strategies(target, draft)
        self._strategies: dict[int | None, Strategy | None] = {}
        self.draft_len = draft_len
        self.engine = Engine(target, strategy=self._strategy(draft_len), overlap=overlap)
        self.conversation = Conversation(system=system or None)
        self.last: TurnResult | None = None
        self.totals = Totals()

    # --- speculation settings -------------------------------------------------

    def _strategy(self, draft_len: int | None):
        if draft_len not in self._strategies:
            self._strategies[draft_len] = self._strategy_for(draft_len)
        return self._strategies[draft_len]

    def set_draft_len(self, draft_len: int | None) -> None:
        """Draft `draft_len` tokens a round from the next turn on (None: auto), with the same drafter choice.
        A refused length leaves everything as it was."""
        strategy = self._strategy(draft_len)
        self.draft_len, self.engine.strategy = draft_len, strategy

    @property
    def strategy(self):
        """The strategy the next turn drafts with (None: the target alone)."""
        return self.engine.strategy

    def set_temperature(self, temperature: float) -> None:
        self.opts = dataclasses.replace(self.opts, sampling=dataclasses.replace(self.opts.sampling, temperature=temperature))

    @property
    def draft_len_text(self) -> str:
        """The draft length as /stats shows it: a number, or "auto" where the strategy chooses it."""
        strategy = self.strategy
        if strategy is None:
            return "0"
        # a fixed strategy's own length: a tree under auto drafts at its fixed depth
        return str(strategy.draft_len) if isinstance(strategy, FixedStrategy) else "auto"

    # --- prompt building ------------------------------------------------------

    def render(self, messages: list[dict]) -> str:
        return self.prompts.render(messages)

    def tokenize_prompt(self, text: str) -> list[int]:
        return self.prompts.tokenize(text)

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
        gen = self.engine.generate(prompt, self.opts, on_text=on_text, should_stop=should_stop, on_span=on_span)
        interrupted = gen.stats.stop_reason == "interrupted"
        kept = not (interrupted and not gen.text)
        if kept:
            # A stopped reply stays in the conversation as far as it got: the caches hold it.
            self.conversation.messages += [user, {"role": "assistant", "content": gen.text}]
            self.prompts.remember(text, prompt, gen.text, gen.tokens)
        result = TurnResult(
            text=gen.text,
            tokens=gen.tokens,
            stats=gen.stats,
            prompt=prompt,
            evaluated=gen.stats.prompt_tokens_evaluated,
            draft_evaluated=gen.draft_evaluated,
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
        self.prompts.forget()

    def set_system(self, text: str | None) -> None:
        self.conversation.system = text or None
        self.prompts.forget()

    def replace(self, conversation: Conversation) -> None:
        self.conversation = conversation
        self.prompts.forget()

    @property
    def context_used(self) -> int:
        return self.target.n_past


def fixed_strategies(target: Model, draft: Model | None) -> StrategyFactory:
    """The draft model's drafter at a fixed length, one drafter for every length: a TurnEngine's default.
    Without a draft model, the target alone at any length."""
    drafter = drafter_for(target, draft) if draft is not None else None

    def strategy_for(draft_len: int | None):
        if draft_len == 0 or drafter is None:
            return None  # the target alone
        if draft_len is None:
            raise SpecError("this chat drafts at a fixed length; give a number of tokens")
        return FixedStrategy(drafter, draft_len)

    return strategy_for


def special_text(model: Model, token: int) -> str:
    if token < 0 or token >= model.n_vocab:
        return ""
    return model.token_text(token).decode("utf-8", errors="replace")
