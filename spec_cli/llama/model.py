"""One loaded model: tokenize, evaluate, cut the KV cache; and whether two vocabularies agree.

A `Model` is one GGUF file with one context and one sequence (seq 0). It keeps
`tokens`, the exact list of tokens its KV cache holds at positions 0..n-1,
and every change to the cache goes through `eval` (append) and `truncate`
(cut back), so the list and the cache never disagree. Callers that want the
cache to hold some token list call `sync`, which keeps the common prefix,
evaluates only the rest and says how many tokens that was: the draft model
between rounds and the chat between turns both rely on that.
"""

from __future__ import annotations

import ctypes
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SpecError
from ..sampling import top_k_of
from .gguf import check_gguf
from .library import (
    backend_sampling_available,
    backend_sampling_setting,
    default_threads,
    gpu_offload_supported,
    llama_lib,
    logits_address,
)


@dataclass
class VocabInfo:
    kind: int
    n_vocab: int
    bos: int
    eos: int
    add_bos: bool


class Model:
    """One GGUF model with its own llama.cpp context."""

    def __init__(
        self,
        path: str | Path,
        *,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = 0,
        n_batch: int = 512,
        n_seq_max: int = 1,
        label: str = "model",
        devices: int | None = None,
    ):
        L = llama_lib()
        self.path = Path(path)
        self.label = label
        check_gguf(self.path)
        self._model = self._load(L, n_gpu_layers, devices)
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self._model))
        threads = n_threads or default_threads()
        self._ctx = self._new_context(L, _context_params(L, n_ctx, n_batch, n_seq_max, threads), n_ctx)
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_batch = int(L.llama_n_batch(self._ctx))
        self.n_threads = threads
        self.n_gpu_layers = n_gpu_layers
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, n_seq_max)
        self.n_seq_max = n_seq_max
        self._init_state()
        self.backend_sampling = _wants_backend_sampling(n_gpu_layers)
        self._sampler = None  # the chain attached to seq 0, if any
        self._sampler_kind: tuple | None = None  # what it computes: ("argmax",) or ("top_k", k)
        self._sampler_refused: set[tuple] = set()  # kinds llama.cpp could not run in the graph

    def _load(self, L, n_gpu_layers: int, devices: int | None):
        """The model's weights, with n_gpu_layers offloaded (to `devices` where given)."""
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if devices is not None:
            mparams.devices = devices  # a NULL-terminated ggml_backend_dev_t array (rpc.connect); None: llama.cpp's default
        model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not model:
            raise SpecError(f"llama.cpp could not load {self.label} model {self.path} (corrupt file or unsupported architecture)")
        return model

    def _new_context(self, L, cparams, n_ctx: int):
        """A context on the loaded model; on failure the model is freed and a readable error raised."""
        ctx = L.llama_init_from_model(self._model, cparams)
        if not ctx:
            L.llama_model_free(self._model)
            self._model = None
            raise SpecError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}; try a smaller --ctx")
        return ctx

    def _init_state(self) -> None:
        """What the model tracks beside llama.cpp: the cached tokens, the token tree, timings, lookups."""
        self._branches = 0  # sequences 1.._branches hold the branches of the last eval_tree
        self._tree: tuple[list[int], list[int], list[list[int]]] | None = None
        self.tokens: list[int] = []
        # Time spent evaluating: llama_decode and the wait for its results. On GPU backends
        # llama_decode returns before the device has finished, so the wait is timed too.
        self.decode_seconds = 0.0
        self.decode_calls = 0
        self._piece_buf = ctypes.create_string_buffer(256)
        # Per-token lookups that every emitted token makes: cached, the vocabulary never changes.
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        self._rows_addr = None  # where llama.cpp's logits buffer was, and views of it (_logit_rows)
        self._rows_views: dict[int, np.ndarray] = {}

    # --- vocabulary -------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        L = llama_lib()
        data = text.encode("utf-8")
        cap = len(data) + 16
        buf = (L.llama_token * cap)()
        n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        if n < 0:
            cap = -n
            buf = (L.llama_token * cap)()
            n = L.llama_tokenize(self._vocab, data, len(data), buf, cap, add_bos, special)
        return list(buf[:n])

    def piece(self, token: int, special: bool = False) -> bytes:
        if not special:
            cached = self._pieces.get(token)
            if cached is None:
                cached = self._pieces[token] = self._piece(token, False)
            return cached
        return self._piece(token, True)

    def _piece(self, token: int, special: bool) -> bytes:
        L = llama_lib()
        n = L.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> bytes:
        return llama_lib().llama_vocab_get_text(self._vocab, token) or b""

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_lib().llama_vocab_is_eog(self._vocab, token))
        return eog

    def vocab_info(self) -> VocabInfo:
        L = llama_lib()
        return VocabInfo(
            kind=int(L.llama_vocab_type(self._vocab)),
            n_vocab=self.n_vocab,
            bos=int(L.llama_vocab_bos(self._vocab)),
            eos=int(L.llama_vocab_eos(self._vocab)),
            add_bos=bool(L.llama_vocab_get_add_bos(self._vocab)),
        )

    def meta(self, key: str) -> str | None:
        L = llama_lib()
        buf = ctypes.create_string_buffer(1 << 16)
        n = L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        if n < 0:
            return None
        if n >= len(buf):
            buf = ctypes.create_string_buffer(n + 1)
            n = L.llama_model_meta_val_str(self._model, key.encode(), buf, len(buf))
        return buf.value.decode("utf-8", errors="replace")

    def chat_template(self) -> str | None:
        return self.meta("tokenizer.chat_template")

    # --- the KV cache -----------------------------------------------------

    @property
    def n_past(self) -> int:
        return len(self.tokens)

    def eval(self, tokens: Sequence[int], logits: str = "last") -> np.ndarray | None:
        """Append `tokens` to the cache. logits: "all", "last" or "none".

        Returns the requested logits rows as an array of shape (rows, n_vocab).
        It is a view into llama.cpp's buffer, valid until the next eval: read it
        (argmax, shape) before evaluating anything else on this model.
        Only rows with their flag set pay for the output layer, which is most of
        the cost of a row when the vocabulary is big.
        """
        if logits != "none":
            self._attach(None)  # with a sampler on seq 0, llama.cpp would not copy the rows
        self._append(tokens, logits)
        if logits == "none":
            return None
        return self._logit_rows(len(tokens) if logits == "all" else 1)

    def _logit_rows(self, n: int) -> np.ndarray:
        """The last pass's n output rows of logits, as a view into llama.cpp's buffer.

        Building a view is dear next to a one-token pass, and the buffer moves only when
        llama.cpp grows it, so one view per row count is kept until its address changes.
        """
        addr = logits_address(self._ctx)
        if addr != self._rows_addr:
            self._rows_addr, self._rows_views = addr, {}
        view = self._rows_views.get(n)
        if view is None:
            if not addr:
                raise SpecError(f"llama.cpp returned no logits on {self.label} model {self.path.name}")
            buf = (ctypes.c_float * (n * self.n_vocab)).from_address(addr)
            view = self._rows_views[n] = np.frombuffer(buf, dtype=np.float32).reshape(n, self.n_vocab)
        return view

    def eval_argmax(self, tokens: Sequence[int], rows: str = "all") -> np.ndarray:
        """Append `tokens`; return the argmax token id of each row ("all") or of the last ("last").

        With backend sampling a greedy sampler in llama.cpp's graph picks the ids and
        no logit row leaves the device; otherwise numpy takes the argmax of the rows.
        """
        if self._attach(("argmax",)):
            self._append(tokens, rows)
            L = llama_lib()
            idx = range(len(tokens)) if rows == "all" else (-1,)
            out = np.fromiter((L.llama_get_sampled_token_ith(self._ctx, i) for i in idx), dtype=np.int64)
            if (out < 0).any():
                raise SpecError(f"llama.cpp's backend sampler returned no token on {self.label} model {self.path.name}")
            return out
        return self.eval(tokens, logits=rows).argmax(axis=1)

    def eval_top_k(self, tokens: Sequence[int], k: int, rows: str = "all") -> list[tuple[np.ndarray, np.ndarray]]:
        """Append `tokens`; return each row's k highest logits as (token ids, logits).

        Enough for top-k sampling: temperature and top-p only reorder and cut these k.
        With backend sampling only the k candidates leave the device.
        """
        n = len(tokens)
        if 0 < k < self.n_vocab and self._attach(("top_k", k)):
            self._append(tokens, rows)
            L = llama_lib()
            idx = range(n) if rows == "all" else (-1,)
            out = []
            for i in idx:
                count = int(L.llama_get_sampled_candidates_count_ith(self._ctx, i))
                if count == 0:
                    raise SpecError(f"llama.cpp's backend sampler returned no candidates on {self.label} model {self.path.name}")
                ids = np.ctypeslib.as_array(L.llama_get_sampled_candidates_ith(self._ctx, i), shape=(count,))
                vals = np.ctypeslib.as_array(L.llama_get_sampled_logits_ith(self._ctx, i), shape=(count,))
                out.append((ids.astype(np.int64), vals.astype(np.float32)))
            return out
        return [top_k_of(row, k) for row in self.eval(tokens, logits=rows)]

    def use_backend_sampling(self, on: bool) -> None:
        """Turn backend sampling on or off for this model (off: numpy reads full rows)."""
        self._attach(None)
        self.backend_sampling = bool(on) and backend_sampling_available()

    @property
    def backend_sampler(self) -> str | None:
        """What the sampler chain on seq 0 computes now ("argmax", "top_k"), None without one."""
        return self._sampler_kind[0] if self._sampler is not None else None

    def _attach(self, kind: tuple | None) -> bool:
        """Put a sampler chain computing `kind` on seq 0 (None: none). False where numpy must do it.

        Changing the chain makes llama.cpp rebuild its graph, so the chain stays until a
        caller needs something else; a generation asks for the same kind every round.
        """
        if kind == self._sampler_kind:
            return self._sampler is not None
        L = llama_lib()
        if self._sampler is not None:
            L.llama_set_sampler(self._ctx, 0, None)
            L.llama_sampler_free(self._sampler)
            self._sampler = None
        self._sampler_kind = kind
        if kind is None or not self.backend_sampling or kind in self._sampler_refused:
            return False
        chain = L.llama_sampler_chain_init(L.llama_sampler_chain_default_params())
        if kind[0] == "argmax":
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_greedy())
        else:
            L.llama_sampler_chain_add(chain, L.llama_sampler_init_top_k(kind[1]))
        if not L.llama_set_sampler(self._ctx, 0, chain):
            L.llama_sampler_free(chain)
            self._sampler_refused.add(kind)
            return False
        self._sampler = chain
        return True

    def _append(self, tokens: Sequence[int], logits: str) -> None:
        """Evaluate `tokens` after the cache in chunks of n_batch; rows flagged for output per `logits`."""
        n = len(tokens)
        if n == 0:
            raise ValueError("eval needs at least one token")
        if logits == "all" and n > self.n_batch:
            raise ValueError("logits for every row need the tokens in one batch")
        self._drop_branches()
        if self.n_past + n > self.n_ctx:
            raise ContextFull(self.n_past + n, self.n_ctx)
        b = self._batch
        if n == 1:
            # One token (plain decoding, each draft step): a short path, as the chunking loop
            # below is dear next to a one-token pass.
            t = int(tokens[0])
            b.n_tokens = 1
            b.token[0] = t
            b.pos[0] = self.n_past
            b.n_seq_id[0] = 1
            b.seq_id[0][0] = 0
            b.logits[0] = logits != "none"
            self._decode_appended(b)
            self.tokens.append(t)
            return
        done = 0
        while done < n:
            chunk = tokens[done : done + self.n_batch]
            last_chunk = done + len(chunk) == n
            b.n_tokens = len(chunk)
            base = self.n_past
            for i, t in enumerate(chunk):
                b.token[i] = t
                b.pos[i] = base + i
                b.n_seq_id[i] = 1
                b.seq_id[i][0] = 0
                b.logits[i] = logits == "all" or (logits == "last" and last_chunk and i == len(chunk) - 1)
            self._decode_appended(b)
            self.tokens.extend(int(t) for t in chunk)
            done += len(chunk)

    def _decode_appended(self, b) -> None:
        """Decode a batch that extends seq 0; on failure leave the cache as `tokens` says, and raise."""
        rc = self._decode(b)
        if rc != 0:
            # The cache may hold part of the batch now; drop whatever is past what we track.
            self._seq_rm(self.n_past)
            raise SpecError(f"llama_decode failed with code {rc} on {self.label} model {self.path.name}")

    def eval_tree(self, root: int, tokens: Sequence[int], parents: Sequence[int]) -> np.ndarray:
        """Append `root` to seq 0 and evaluate it with a tree of drafts below it, in one llama_decode.

        The tree is flat (see tokentree): node i is tokens[i] under parents[i], -1 for
        the root. Returns logits for every row, shape (1 + len(tokens), n_vocab): row 0
        after the root, row i + 1 after node i as seen along its own branch. Like
        `eval`, the array is a view valid until the next evaluation.

        Branch (leaf) k gets sequence id k + 1, a copy of seq 0; in a unified cache
        the copy only tags the context's cells with the new id. The root row belongs to
        seq 0 and every branch, a node to the branches of all leaves below it. llama.cpp
        masks attention by a row's first sequence id and by position (context length +
        depth), so a row sees the context, the root and its own ancestors, and no
        sibling. Seq 0 (and `tokens`) gains only the root; the branches stay in their
        own sequences until `keep_branch` picks one, or any other cache operation drops them.
        """
        from ..tokentree import check_tree, depths, leaf_sets

        L = llama_lib()
        self._attach(None)  # every row's logits are read; a sampler on seq 0 would keep the root's back
        self._drop_branches()
        check_tree(tokens, parents)
        n = len(tokens) + 1
        sets = leaf_sets(parents)
        n_branches = max((k + 1 for s in sets for k in s), default=0)
        if n_branches + 1 > self.n_seq_max:
            raise ValueError(
                f"a tree with {n_branches} branches needs n_seq_max >= {n_branches + 1}, this model has {self.n_seq_max}"
            )
        if n > self.n_batch:
            raise ValueError(f"a tree of {n} rows does not fit one batch of {self.n_batch}")
        if self.n_past + n > self.n_ctx:
            raise ContextFull(self.n_past + n, self.n_ctx)
        base = self.n_past
        for seq in range(1, n_branches + 1):
            L.llama_memory_seq_cp(self._mem, 0, seq, -1, -1)
        self._branches = n_branches
        d = depths(parents)
        b = self._batch
        b.n_tokens = n
        b.token[0] = root
        b.pos[0] = base
        b.n_seq_id[0] = n_branches + 1
        for seq in range(n_branches + 1):
            b.seq_id[0][seq] = seq
        b.logits[0] = True
        for i, t in enumerate(tokens):
            b.token[i + 1] = t
            b.pos[i + 1] = base + int(d[i])
            b.n_seq_id[i + 1] = len(sets[i])
            for j, k in enumerate(sets[i]):
                b.seq_id[i + 1][j] = k + 1
            b.logits[i + 1] = True
        rc = self._decode(b)
        if rc != 0:
            self._drop_branches()
            self._seq_rm(base)
            raise SpecError(f"llama_decode failed with code {rc} on {self.label} model {self.path.name} (token tree)")
        self.tokens.append(int(root))
        self._tree = ([int(t) for t in tokens], list(parents), sets)
        return self._logit_rows(n)

    def _decode(self, batch) -> int:
        """One llama_decode, timed up to the moment its results are ready.

        On GPU backends llama_decode only queues the work, so it is synchronized here to book
        the whole pass to the pass (the cost curves rely on it); on the CPU that returns at once.
        """
        L = llama_lib()
        t0 = time.perf_counter()
        rc = L.llama_decode(self._ctx, batch)
        if rc == 0:
            L.llama_synchronize(self._ctx)
        self.decode_seconds += time.perf_counter() - t0
        self.decode_calls += 1
        return rc

    def keep_branch(self, path: Sequence[int]) -> None:
        """After `eval_tree`: extend seq 0 along `path` (node indices from the root down) and drop the branches.

        The accepted nodes are already in the cache, tagged with the ids of the
        branches through them; copying one of those ids' cells in the accepted
        positions to seq 0 adds the tag 0 to them, and keeping only seq 0 frees
        every other cell. Nothing is evaluated again.
        """
        from ..tokentree import is_path

        if self._tree is None:
            raise RuntimeError("keep_branch needs an eval_tree first")
        tokens, parents, sets = self._tree
        if not is_path(parents, path):
            self._drop_branches()
            raise ValueError(f"{list(path)} is not a path from the root of the last tree")
        if path:
            seq = sets[path[-1]][0] + 1
            llama_lib().llama_memory_seq_cp(self._mem, seq, 0, self.n_past, self.n_past + len(path))
            self.tokens.extend(tokens[i] for i in path)
        self._drop_branches()

    def _drop_branches(self) -> None:
        if self._branches:
            # One pass over the cells: untag every sequence but 0, free cells left with none.
            llama_lib().llama_memory_seq_keep(self._mem, 0)
        self._branches = 0
        self._tree = None

    def _seq_rm(self, p0: int) -> bool:
        return bool(llama_lib().llama_memory_seq_rm(self._mem, 0, p0, -1))

    def truncate(self, n: int) -> None:
        """Forget every cached position >= n (rejected drafts, edited history)."""
        self._drop_branches()
        if n >= self.n_past:
            return
        if not self._seq_rm(n):
            # Recurrent and hybrid models cannot drop a suffix of their state.
            raise SpecError(
                f"{self.label} model {self.path.name} cannot roll back its cache "
                "(recurrent or hybrid architecture); speculative decoding needs a transformer model"
            )
        del self.tokens[n:]

    def cache_pos_max(self, seq: int = 0) -> int:
        """The highest position llama.cpp's cache holds for sequence `seq` (-1 when empty)."""
        return int(llama_lib().llama_memory_seq_pos_max(self._mem, seq))

    def reset(self) -> None:
        llama_lib().llama_memory_clear(self._mem, True)
        self._branches = 0
        self._tree = None
        self.tokens.clear()

    def sync(self, tokens: Sequence[int], logits: str = "last") -> tuple[int, np.ndarray | None]:
        """Make the cache hold exactly `tokens`, evaluating only what is not already there.

        Returns (evaluated, row): the number of tokens it had to evaluate to catch up, and
        the last token's logits row with logits="last" (that token is re-evaluated if it was
        cached; the prefix before it is reused), None with logits="none". The row is a view,
        valid until the next evaluation, as with `eval`.
        """
        if logits not in ("last", "none"):
            raise ValueError(f'sync gives logits "last" or "none", not {logits!r}')
        rest = self._sync_prefix(tokens, keep_last=logits == "last")
        if not rest:
            return 0, None
        out = self.eval(rest, logits=logits)
        return len(rest), (out[0] if out is not None else None)

    def _sync_prefix(self, tokens: Sequence[int], keep_last: bool) -> Sequence[int]:
        """Cut the cache back to its common prefix with `tokens`; return what is left to evaluate.

        keep_last: always leave at least the last token to evaluate (its row is wanted).
        """
        common = 0
        limit = min(len(tokens), self.n_past)
        cached = self.tokens
        while common < limit and cached[common] == tokens[common]:
            common += 1
        if keep_last and common == len(tokens):
            common -= 1
        self.truncate(common)
        return tokens[common:]

    def sync_argmax(self, tokens: Sequence[int]) -> tuple[int, int]:
        """`sync(tokens)` giving (evaluated, the argmax of the last row); backend sampling when available."""
        rest = self._sync_prefix(tokens, keep_last=True)
        return len(rest), int(self.eval_argmax(rest, rows="last")[0])

    def sync_top_k(self, tokens: Sequence[int], k: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        """`sync(tokens)` giving (evaluated, the last row's k highest logits as (ids, logits))."""
        rest = self._sync_prefix(tokens, keep_last=True)
        return len(rest), self.eval_top_k(rest, k, rows="last")[0]

    def close(self) -> None:
        if getattr(self, "_batch", None) is None and not getattr(self, "_ctx", None) and not getattr(self, "_model", None):
            return  # nothing of llama.cpp's to free (the library may never have been loaded)
        L = llama_lib()
        if getattr(self, "_batch", None) is not None:
            L.llama_batch_free(self._batch)
            self._batch = None
        if getattr(self, "_ctx", None):
            if getattr(self, "_sampler", None) is not None:
                L.llama_set_sampler(self._ctx, 0, None)
                L.llama_sampler_free(self._sampler)
                self._sampler = None
            L.llama_free(self._ctx)
            self._ctx = None
        if getattr(self, "_model", None):
            L.llama_model_free(self._model)
            self._model = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def _context_params(L, n_ctx: int, n_batch: int, n_seq_max: int, threads: int):
    """llama_context_params for one model: sizes, threads, and a cache that can always be cut back."""
    cparams = L.llama_context_default_params()
    cparams.n_ctx = n_ctx
    cparams.n_batch = n_batch
    cparams.n_ubatch = n_batch
    cparams.n_seq_max = n_seq_max
    cparams.n_threads = threads
    cparams.n_threads_batch = threads
    cparams.no_perf = True
    if hasattr(cparams, "n_outputs_max_per_seq"):
        # A verification pass reads a sampled token for every row of seq 0 (the default is one).
        cparams.n_outputs_max_per_seq = n_batch
    # Keep the whole sliding-window cache: cutting back (rollback, chat edits) needs
    # positions that a trimmed SWA cache would already have dropped.
    cparams.swa_full = True
    if n_seq_max > 1:
        # Extra sequences hold the branches of a token tree, all sharing the context in
        # seq 0. A unified cache lets them share its cells (seq_cp only tags cells) and
        # gives every sequence the whole n_ctx; a split cache would divide n_ctx by n_seq_max.
        cparams.kv_unified = True
    return cparams


def _wants_backend_sampling(n_gpu_layers: int) -> bool:
    """Whether a model starts with backend sampling: a sampler chain on seq 0 picks ids in llama.cpp's graph.

    It pays where a logit row is dear to copy out, on a GPU; on the CPU its graph nodes cost
    more than they save (docs/benchmark-log.md, issue 10), so there only with SPEC_BACKEND_SAMPLING=all.
    """
    return backend_sampling_available() and (
        backend_sampling_setting() == "all" or (n_gpu_layers != 0 and gpu_offload_supported())
    )


class ContextFull(SpecError):
    def __init__(self, needed: int, n_ctx: int):
        super().__init__(f"context full: {needed} tokens needed, the context holds {n_ctx}; use a larger --ctx")
        self.needed = needed
        self.n_ctx = n_ctx


# --- vocabulary compatibility -----------------------------------------------

VOCAB_SIZE_MARGIN = 128  # llama.cpp's speculative example allows the same margin
VOCAB_CHECK_FROM = 5  # the first ids are control tokens that fine-tunes often rename


def check_compatible(target: Model, draft: Model) -> None:
    """Refuse a target/draft pair whose token ids do not mean the same text."""
    a, b = target.vocab_info(), draft.vocab_info()

    def refuse(reason: str) -> SpecError:
        return SpecError(
            f"incompatible vocabularies: target {target.path.name} and draft {draft.path.name} {reason}; "
            "pick a draft from the same model family"
        )

    if a.kind != b.kind:
        raise refuse(f"use different tokenizer types ({a.kind} vs {b.kind})")
    if abs(a.n_vocab - b.n_vocab) > VOCAB_SIZE_MARGIN:
        raise refuse(f"have {a.n_vocab} and {b.n_vocab} tokens")
    if a.bos != b.bos or a.eos != b.eos or a.add_bos != b.add_bos:
        raise refuse("disagree on special tokens (BOS/EOS)")
    for t in range(VOCAB_CHECK_FROM, min(a.n_vocab, b.n_vocab)):
        if target.token_text(t) != draft.token_text(t):
            raise refuse(f"map token {t} to different text ({target.token_text(t)!r} vs {draft.token_text(t)!r})")
