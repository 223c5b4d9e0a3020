"""The only package that imports llama_cpp.

library: llama.cpp's library, its devices and what the build can do; gguf: GGUF files
(checks, requantizing); model: one loaded model (`Model`) and vocabulary compatibility.
"""

from .gguf import GGUF_MAGIC, QUANT_TYPES, check_gguf, quantize
from .library import (
    backend_sampling_available,
    backend_sampling_setting,
    build_info,
    default_threads,
    ggml_lib,
    gpu_offload_supported,
    llama_lib,
)
from .model import (
    VOCAB_CHECK_FROM,
    VOCAB_SIZE_MARGIN,
    ContextFull,
    Model,
    VocabInfo,
    check_compatible,
)

__all__ = [
    "GGUF_MAGIC",
    "QUANT_TYPES",
    "VOCAB_CHECK_FROM",
    "VOCAB_SIZE_MARGIN",
    "ContextFull",
    "Model",
    "VocabInfo",
    "backend_sampling_available",
    "backend_sampling_setting",
    "build_info",
    "check_compatible",
    "check_gguf",
    "default_threads",
    "ggml_lib",
    "gpu_offload_supported",
    "llama_lib",
    "quantize",
]
