"""llama-cpp-python's own prompt-lookup decoding, as a peer for `spec bench`.

The second module that imports llama_cpp (spec_cli/llama/ is the first, and the only one
the engine uses). This one drives the high-level `llama_cpp.Llama` exactly as its
users do: once plain, once with `draft_model=LlamaPromptLookupDecoding()`, and times
both the same way spec is timed: the prompt but its last token is evaluated first and
left out of the clock, then the loop runs until the token budget or end of generation.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError


@dataclass
class PeerRun:
    tokens: list[int]
    seconds: float

    @property
    def generated(self) -> int:
        return len(self.tokens)

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


@contextlib.contextmanager
def _quiet_stderr():
    """llama.cpp prints its load log on fd 2 when a high-level Llama is created; hide it."""
    if os.environ.get("SPEC_VERBOSE"):
        yield
        return
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


class LookupPeer:
    """Two high-level Llama objects on the target file: plain, and with prompt lookup."""

    def __init__(self, path: Path, *, n_ctx: int, n_threads: int, n_gpu_layers: int = 0):
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        self._llama_cpp = llama_cpp
        kw = dict(n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads, n_gpu_layers=n_gpu_layers, verbose=False)
        try:
            with _quiet_stderr():
                self.plain = llama_cpp.Llama(model_path=str(path), **kw)
                # With a draft model the high-level class needs logits for every position
                # (it keeps them all in `scores`), which is its documented way of working.
                self.lookup = llama_cpp.Llama(
                    model_path=str(path), logits_all=True, draft_model=LlamaPromptLookupDecoding(), **kw
                )
        except (ValueError, RuntimeError) as e:
            raise SpecError(f"llama-cpp-python could not load {path.name} for the prompt-lookup peer: {e}") from None
        self.num_pred_tokens = self.lookup.draft_model.num_pred_tokens

    def _is_eog(self, llm, token: int) -> bool:
        return bool(self._llama_cpp.llama_vocab_is_eog(llm._model.vocab, token))

    def run(self, which: str, prompt: Sequence[int], max_tokens: int) -> PeerRun:
        llm = self.plain if which == "plain" else self.lookup
        prompt = list(prompt)
        llm.reset()  # fresh cache: eval() below starts by removing every cached position
        if len(prompt) > 1:
            llm.eval(prompt[:-1])
        out: list[int] = []
        t0 = time.perf_counter()
        # generate() sees the cached prefix and evaluates only the last prompt token.
        for tok in llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
            if self._is_eog(llm, tok):
                break
            out.append(int(tok))
            if len(out) >= max_tokens:
                break
        return PeerRun(tokens=out, seconds=time.perf_counter() - t0)

    def close(self) -> None:
        for llm in (getattr(self, "plain", None), getattr(self, "lookup", None)):
            if llm is not None:
                with contextlib.suppress(Exception):
                    llm.close()
