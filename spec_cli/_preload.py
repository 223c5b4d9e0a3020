"""Load llama.cpp's shared library before anything else in the process.

On a CUDA build of llama-cpp-python, loading a model segfaulted when numpy had
been imported before llama_cpp (docs/machine-notes.md, "GPU"); llama-cpp-python's users report
the same with pandas (llama-cpp-python #1581), and the workaround they found is
the import order. The likely cause is the dynamic linker binding symbols of
llama.cpp's libraries (or of the CUDA runtime they pull in) to copies that a
package loaded earlier brought along. `import spec_cli` therefore dlopens
libllama, and with it every ggml library it links, first: a few milliseconds,
without importing llama_cpp's Python package (which itself imports numpy).
Plotting after llama.cpp crashed too; spec draws its plots in a child process
that never loads llama.cpp (see the bench's plot module).
"""

from __future__ import annotations

import ctypes
import importlib.util
import os
import sys
from pathlib import Path

_handle = None


def library_path() -> Path | None:
    """Where llama-cpp-python's libllama is, found without importing the package."""
    override = os.environ.get("LLAMA_CPP_LIB_PATH")
    if override:
        base = Path(override)
    else:
        try:
            spec = importlib.util.find_spec("llama_cpp")
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        base = Path(next(iter(spec.submodule_search_locations))) / "lib"
    if sys.platform == "win32":
        names = ["llama.dll", "libllama.dll"]
    elif sys.platform == "darwin":
        names = ["libllama.so", "libllama.dylib"]
    else:
        names = ["libllama.so"]
    for name in names:
        if (base / name).exists():
            return base / name
    return None


def preload() -> bool:
    """dlopen libllama (and the ggml libraries it links) now; True when it is loaded."""
    global _handle
    if _handle is not None:
        return True
    if "llama_cpp" in sys.modules or os.environ.get("SPEC_NO_PRELOAD"):
        return False  # too late to matter, or turned off
    path = library_path()
    if path is None:
        return False
    try:
        if sys.platform == "win32":
            os.add_dll_directory(str(path.parent))
        _handle = ctypes.CDLL(str(path), mode=getattr(ctypes, "RTLD_GLOBAL", 0))
    except OSError:
        return False  # llama_cpp's own import will report what is wrong
    return True
