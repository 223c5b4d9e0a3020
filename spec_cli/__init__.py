"""spec: speculative decoding for local GGUF models on llama.cpp."""

from . import _preload

_preload.preload()  # before numpy or anything else that ships its own native libraries

__version__ = "0.1.0"
