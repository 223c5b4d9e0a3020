"""The only module that talks to llama.cpp (through llama-cpp-python's C bindings).

A `Model` is one GGUF file with one context and one sequence (seq 0). It keeps
`tokens`, the exact list of tokens its KV cache holds at positions 0..n-1,
and every change to the cache goes through `eval` (append) and `truncate`
(cut back), so the list and the cache never disagree. Callers that want the
cache to hold some token list call `sync`, which keeps the common prefix and
evaluates only the rest: the draft model between rounds and the chat between
turns both rely on that.
"""

from __future__ import annotations

import ctypes
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .errors import SpecError
from .sampling import top_k_of

GGUF_MAGIC = b"GGUF"

_llama = None  # the llama_cpp module, imported on first use (it loads a shared library)


def _lib():
    global _llama
    if _llama is None:
        import llama_cpp

        llama_cpp.llama_backend_init()
        if not os.environ.get("SPEC_VERBOSE"):
            _silence_logs(llama_cpp)
        _llama = llama_cpp
    return _llama


_get_logits_addr = None


def _logits_address(ctx) -> int:
    """llama_get_logits as a plain address (0 for NULL), without building a ctypes pointer object."""
    global _get_logits_addr
    if _get_logits_addr is None:
        fn = _lib().llama_cpp._lib["llama_get_logits"]  # a new function object: its own restype
        fn.argtypes, fn.restype = [ctypes.c_void_p], ctypes.c_void_p
        _get_logits_addr = fn
    return _get_logits_addr(ctx) or 0


_log_callback = None  # kept alive: llama.cpp holds a raw pointer to it


def _silence_logs(llama_cpp) -> None:
    global _log_callback

    @llama_cpp.llama_log_callback
    def _quiet(level, text, user_data):  # noqa: ARG001
        return None

    _log_callback = _quiet
    llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))


def default_threads() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        n = os.cpu_count() or 1
    # On big machines half the logical cores are usually hyper-threads that slow llama.cpp down.
    return n if n <= 4 else max(4, n // 2)


def gpu_offload_supported() -> bool:
    """Whether this llama.cpp build sees a GPU it can offload layers to (CUDA, Metal, Vulkan, ...).

    llama_supports_gpu_offload() also says yes for a CPU build with the RPC backend (RPC
    servers are offload targets), so the devices ggml reports decide where it can tell.
    """
    L = _lib()
    if not L.llama_supports_gpu_offload():
        return False
    devices = _devices()
    if devices is None:
        return True  # ggml's library not found: trust llama.cpp's answer
    return any(d["type"] in ("GPU", "integrated GPU") for d in devices)


def backend_sampling_available() -> bool:
    """Whether passes can hand back token ids picked inside llama.cpp's graph (backend sampling).

    Needs a llama.cpp with llama_set_sampler (experimental there); SPEC_BACKEND_SAMPLING=0
    turns it off, so that the numpy path can be compared with it or fallen back to. A model
    uses it where it is offloaded to a GPU, or everywhere with SPEC_BACKEND_SAMPLING=all (Model).
    """
    if os.environ.get("SPEC_BACKEND_SAMPLING", "1").strip().lower() in ("0", "off", "no", "false"):
        return False
    L = _lib()
    return all(hasattr(L, f) for f in ("llama_set_sampler", "llama_get_sampled_token_ith", "llama_get_sampled_candidates_ith"))


# ggml's enum ggml_backend_dev_type
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "integrated GPU", 3: "accelerator"}


def build_info() -> dict:
    """What this llama.cpp build can do: versions, compiled-in backends, devices and their memory.

    The backend registry and device calls are ggml's; llama-cpp-python binds few of them,
    so they are called through ctypes on the ggml library it ships (already loaded).
    """
    import importlib.metadata

    L = _lib()
    info: dict = {
        "llama_cpp_python": importlib.metadata.version("llama-cpp-python"),
        "gpu_offload": gpu_offload_supported(),
        "rpc": bool(L.llama_supports_rpc()),
        "backend_sampling": backend_sampling_available(),
        "mmap": bool(L.llama_supports_mmap()),
        "max_devices": int(L.llama_max_devices()),
        "system_info": L.llama_print_system_info().decode("utf-8", "replace").strip(),
        "ggml_version": None,
        "ggml_commit": None,
        "backends": [],
        "devices": [],
    }
    ggml = _ggml_library(Path(L.__file__).parent / "lib")
    if ggml is None:
        return info
    for name in ("ggml_version", "ggml_commit"):
        fn = getattr(ggml, name, None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            info[name] = (fn() or b"").decode("utf-8", "replace")
    ggml.ggml_backend_reg_count.restype = ctypes.c_size_t
    ggml.ggml_backend_reg_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_get.argtypes = [ctypes.c_size_t]
    ggml.ggml_backend_reg_name.restype = ctypes.c_char_p
    ggml.ggml_backend_reg_name.argtypes = [ctypes.c_void_p]
    for i in range(ggml.ggml_backend_reg_count()):
        info["backends"].append(ggml.ggml_backend_reg_name(ggml.ggml_backend_reg_get(i)).decode())
    info["devices"] = _devices() or []
    return info


def _devices() -> list[dict] | None:
    """The devices ggml sees (CPU, GPUs, RPC servers added so far), None without its library."""
    ggml = _ggml_library(Path(_lib().__file__).parent / "lib")
    if ggml is None:
        return None
    out: list[dict] = []
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in (ggml.ggml_backend_dev_name, ggml.ggml_backend_dev_description):
        fn.restype = ctypes.c_char_p
        fn.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype = ctypes.c_int
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_memory.restype = None
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t), ctypes.POINTER(ctypes.c_size_t)]
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append({
            "name": ggml.ggml_backend_dev_name(dev).decode(),
            "description": (ggml.ggml_backend_dev_description(dev) or b"").decode("utf-8", "replace"),
            "type": _DEVICE_TYPES.get(ggml.ggml_backend_dev_type(dev), "unknown"),
            "free_bytes": int(free.value),
            "total_bytes": int(total.value),
        })  # fmt: skip
    return out


def _ggml_library(lib_dir: Path):
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (lib_dir / name).exists():
            try:
                return ctypes.CDLL(str(lib_dir / name))
            except OSError:
                return None
    return None


def check_gguf(path: Path) -> None:
    """Fail with a readable message before llama.cpp sees a file it cannot load."""
    if not path.exists():
        raise SpecError(f"model file not found: {path}")
    if path.is_dir():
        raise SpecError(f"model path is a directory, not a GGUF file: {path}")
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError as e:
        raise SpecError(f"cannot read model file {path}: {e.strerror}") from None
    if len(head) < 8 or head[:4] != GGUF_MAGIC:
        raise SpecError(f"not a GGUF model file: {path} (expected a .gguf file from llama.cpp's converters)")
    (version,) = struct.unpack("<I", head[4:8])
    if version not in (2, 3):
        raise SpecError(f"unsupported GGUF version {version} in {path}")


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
        L = _lib()
        self.path = Path(path)
        self.label = label
        check_gguf(self.path)
        mparams = L.llama_model_default_params()
        mparams.n_gpu_layers = n_gpu_layers
        if devices is not None:
            mparams.devices = devices  # a NULL-terminated ggml_backend_dev_t array (rpc.connect); None: llama.cpp's default
        self._model = L.llama_model_load_from_file(str(self.path).encode(), mparams)
        if not self._model:
            raise SpecError(f"llama.cpp could not load {label} model {self.path} (corrupt file or unsupported architecture)")
        self._vocab = L.llama_model_get_vocab(self._model)
        self.n_vocab = int(L.llama_vocab_n_tokens(self._vocab))
        self.n_ctx_train = int(L.llama_model_n_ctx_train(self._model))

        threads = n_threads or default_threads()
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
        self._ctx = L.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            L.llama_model_free(self._model)
            self._model = None
            raise SpecError(f"llama.cpp could not create a context of {n_ctx} tokens for {self.path}; try a smaller --ctx")
        self.n_ctx = int(L.llama_n_ctx(self._ctx))
        self.n_batch = int(L.llama_n_batch(self._ctx))
        self.n_threads = threads
        self.n_gpu_layers = n_gpu_layers
        self._mem = L.llama_get_memory(self._ctx)
        self._batch = L.llama_batch_init(self.n_batch, 0, n_seq_max)
        self.n_seq_max = n_seq_max
        self._branches = 0  # sequences 1.._branches hold the branches of the last eval_tree
        self._tree: tuple[list[int], list[int], list[list[int]]] | None = None
        self.tokens: list[int] = []
        # Time spent evaluating: llama_decode and the wait for its results. On GPU backends
        # llama_decode returns before the device has finished, so the wait is timed too.
        self.decode_seconds = 0.0
        self.decode_calls = 0
        self.last_sync_evaluated = 0  # tokens the last sync() had to evaluate
        self._piece_buf = ctypes.create_string_buffer(256)
        # Per-token lookups that every emitted token makes: cached, the vocabulary never changes.
        self._pieces: dict[int, bytes] = {}
        self._eog: dict[int, bool] = {}
        # Backend sampling: a sampler chain on seq 0 runs inside llama.cpp's graph, so a pass
        # hands back token ids (or top-k candidates) instead of a logit row per position.
        # It pays where a row is dear to copy out: on a GPU. On the CPU the sampler's graph nodes cost
        # more than they save (docs/benchmark-log.md, issue 10: greedy plain decoding at 0.92x-0.97x of numpy's
        # argmax on the full row, top-k at 0.92x), so there it is used only with SPEC_BACKEND_SAMPLING=all.
        self.backend_sampling = backend_sampling_available() and (
            os.environ.get("SPEC_BACKEND_SAMPLING", "").strip().lower() == "all"
            or (n_gpu_layers != 0 and gpu_offload_supported())
        )
        self._sampler = None  # the chain attached to seq 0, if any
        self._sampler_kind: tuple | None = None  # what it computes: ("argmax",) or ("top_k", k)
        self._sampler_refused: set[tuple] = set()  # kinds llama.cpp could not run in the graph
        self._rows_addr = None  # where llama.cpp's logits buffer was, and views of it (_logit_rows)
        self._rows_views: dict[int, np.ndarray] = {}

    # --- vocabulary -------------------------------------------------------

    def tokenize(self, text: str, add_bos: bool = True, special: bool = False) -> list[int]:
        L = _lib()
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
        L = _lib()
        n = L.llama_token_to_piece(self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special)
        if n < 0:
            buf = ctypes.create_string_buffer(-n)
            n = L.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, special)
            return buf.raw[:n]
        return self._piece_buf.raw[:n]

    def detokenize(self, tokens: Sequence[int]) -> str:
        return b"".join(self.piece(t) for t in tokens).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> bytes:
        return _lib().llama_vocab_get_text(self._vocab, token) or b""

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(_lib().llama_vocab_is_eog(self._vocab, token))
        return eog

    def vocab_info(self) -> VocabInfo:
        L = _lib()
        return VocabInfo(
            kind=int(L.llama_vocab_type(self._vocab)),
            n_vocab=self.n_vocab,
            bos=int(L.llama_vocab_bos(self._vocab)),
            eos=int(L.llama_vocab_eos(self._vocab)),
            add_bos=bool(L.llama_vocab_get_add_bos(self._vocab)),
        )

    def meta(self, key: str) -> str | None:
        L = _lib()
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

        Wrapping a ctypes pointer in an array (np.ctypeslib.as_array) cost ~55 µs right after
        a pass, when none of its code is in the caches: a quarter of what plain decoding spent
        outside the target's passes. The buffer moves only when llama.cpp grows it, so a view
        per row count is kept until its address changes, and a lookup is all a pass costs.
        """
        addr = _logits_address(self._ctx)
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
            L = _lib()
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
            L = _lib()
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
        L = _lib()
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
            # Plain decoding and each draft step: one token, no chunking (the general loop below
            # cost ~30 µs a pass right after one, when its code is out of the caches).
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
        from .tokentree import check_tree, depths, leaf_sets

        L = _lib()
        self._attach(None)  # every row's logits are read; a sampler on seq 0 would keep the root's back
        self._drop_branches()
        check_tree(tokens, parents)
        n = len(tokens) + 1
        sets = leaf_sets(parents)
        n_branches = max((k + 1 for s in sets for k in s), default=0)
        if n_branches + 1 > self.n_seq_max:
            raise ValueError(f"a tree with {n_branches} branches needs n_seq_max >= {n_branches + 1}, this model has {self.n_seq_max}")
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

        llama_decode only queues the work on GPU backends (CUDA, Metal): the wait
        happens in whatever call next needs the results. Timing llama_decode alone
        made a pass look nearly free there and put its cost on whoever read the
        logits, so every cost curve and controller decision was wrong. Synchronizing
        here books the whole pass to the pass; on the CPU it returns at once.
        """
        L = _lib()
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
        from .tokentree import is_path

        if self._tree is None:
            raise RuntimeError("keep_branch needs an eval_tree first")
        tokens, parents, sets = self._tree
        if not is_path(parents, path):
            self._drop_branches()
            raise ValueError(f"{list(path)} is not a path from the root of the last tree")
        if path:
            seq = sets[path[-1]][0] + 1
            _lib().llama_memory_seq_cp(self._mem, seq, 0, self.n_past, self.n_past + len(path))
            self.tokens.extend(tokens[i] for i in path)
        self._drop_branches()

    def _drop_branches(self) -> None:
        if self._branches:
            # One pass over the cells: untag every sequence but 0, free cells left with none.
            _lib().llama_memory_seq_keep(self._mem, 0)
        self._branches = 0
        self._tree = None

    def _seq_rm(self, p0: int) -> bool:
        return bool(_lib().llama_memory_seq_rm(self._mem, 0, p0, -1))

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
        return int(_lib().llama_memory_seq_pos_max(self._mem, seq))

    def reset(self) -> None:
        _lib().llama_memory_clear(self._mem, True)
        self._branches = 0
        self._tree = None
        self.tokens.clear()

    def sync(self, tokens: Sequence[int], logits: bool = True) -> np.ndarray | None:
        """Make the cache hold exactly `tokens`, evaluating only what is not already there.

        With logits=True the last token is (re)evaluated so that its logits row is
        returned; the cached prefix before it is reused.
        """
        rest = self._sync_prefix(tokens, keep_last=logits)
        if not rest:
            return None
        out = self.eval(rest, logits="last" if logits else "none")
        return out[0] if out is not None else None

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
        rest = tokens[common:]
        self.last_sync_evaluated = len(rest)
        return rest

    def sync_argmax(self, tokens: Sequence[int]) -> int:
        """`sync(tokens)`, returning only the argmax of the last row (backend sampling when available)."""
        rest = self._sync_prefix(tokens, keep_last=True)
        return int(self.eval_argmax(rest, rows="last")[0])

    def sync_top_k(self, tokens: Sequence[int], k: int) -> tuple[np.ndarray, np.ndarray]:
        """`sync(tokens)`, returning only the last row's k highest logits as (ids, logits)."""
        rest = self._sync_prefix(tokens, keep_last=True)
        return self.eval_top_k(rest, k, rows="last")[0]

    def close(self) -> None:
        L = _llama
        if L is None:
            return
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


# --- deriving a draft by requantizing ----------------------------------------

QUANT_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16", "F32")
# F32 and F16 dequantize: the same weights in a bigger, slower file (a stand-in for a costly target).
_FTYPE_NAMES = {"F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """Write `src` requantized to `quant` at `dst` (atomically: a partial file never stays)."""
    L = _lib()
    if quant not in QUANT_TYPES:
        raise SpecError(f"unknown quantization {quant!r}; choose one of {', '.join(QUANT_TYPES)}")
    check_gguf(src)
    params = L.llama_model_quantize_default_params()
    params.ftype = getattr(L, _FTYPE_NAMES.get(quant, f"LLAMA_FTYPE_MOSTLY_{quant}"))
    params.allow_requantize = True
    params.nthread = n_threads or default_threads()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}")
    try:
        rc = L.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(params))
        if rc != 0:
            # llama.cpp only logs why; after a good source file, a full disk is the usual reason.
            raise SpecError(
                f"llama.cpp could not quantize {src.name} to {quant} (code {rc}); "
                f"check that {dst.parent} is writable and has room for the new model, then run again"
            )
        os.replace(tmp, dst)
    finally:
        if tmp.exists():
            tmp.unlink()
