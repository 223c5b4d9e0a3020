"""GGUF files: checking one before llama.cpp loads it, and writing one requantized."""

from __future__ import annotations

import ctypes
import os
import struct
from pathlib import Path

from ..errors import SpecError
from .library import default_threads, llama_lib

GGUF_MAGIC = b"GGUF"


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


# --- deriving a draft by requantizing ----------------------------------------

QUANT_TYPES = ("Q2_K", "Q3_K_S", "Q3_K_M", "Q4_0", "Q4_K_M", "Q5_K_M", "Q6_K", "Q8_0", "F16", "F32")
# F32 and F16 dequantize: the same weights in a bigger, slower file (a stand-in for a costly target).
_FTYPE_NAMES = {"F32": "LLAMA_FTYPE_ALL_F32", "F16": "LLAMA_FTYPE_MOSTLY_F16"}


def quantize(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """Write `src` requantized to `quant` at `dst` (atomically: a partial file never stays)."""
    L = llama_lib()
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
