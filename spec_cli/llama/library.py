"""llama.cpp's library as llama-cpp-python ships it: loading it, its devices, what the build can do.

`llama_lib()` is the llama_cpp module, imported and initialised on first use; `ggml_lib()`
is ggml's shared library beside it, for the calls llama-cpp-python does not bind (the
backend registry, devices, RPC). Nothing here loads a model.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

_llama = None  # the llama_cpp module, imported on first use (it loads a shared library)


def llama_lib():
    """The llama_cpp module (llama-cpp-python's C bindings), with the backend initialised and its logs silenced."""
    global _llama
    if _llama is None:
        import llama_cpp

        llama_cpp.llama_backend_init()
        if not os.environ.get("SPEC_VERBOSE"):
            _silence_logs(llama_cpp)
        _llama = llama_cpp
    return _llama


def ggml_lib():
    """ggml's shared library from llama-cpp-python's lib folder (a new ctypes handle), None where it is missing."""
    lib_dir = Path(llama_lib().__file__).parent / "lib"
    for name in ("libggml.so", "libggml.dylib", "ggml.dll"):
        if (lib_dir / name).exists():
            try:
                return ctypes.CDLL(str(lib_dir / name))
            except OSError:
                return None
    return None


_get_logits_addr = None


def logits_address(ctx) -> int:
    """llama_get_logits as a plain address (0 for NULL), without building a ctypes pointer object."""
    global _get_logits_addr
    if _get_logits_addr is None:
        fn = llama_lib().llama_cpp._lib["llama_get_logits"]  # a new function object: its own restype
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
    L = llama_lib()
    if not L.llama_supports_gpu_offload():
        return False
    devices = _devices()
    if devices is None:
        return True  # ggml's library not found: trust llama.cpp's answer
    return any(d["type"] in ("GPU", "integrated GPU") for d in devices)


def backend_sampling_setting() -> str:
    """SPEC_BACKEND_SAMPLING: "off" (0, off, no, false), "all" (every model, the CPU too) or "gpu" (the default)."""
    value = os.environ.get("SPEC_BACKEND_SAMPLING", "").strip().lower()
    if value in ("0", "off", "no", "false"):
        return "off"
    return "all" if value == "all" else "gpu"


def backend_sampling_available() -> bool:
    """Whether passes can hand back token ids picked inside llama.cpp's graph (backend sampling).

    Needs a llama.cpp with llama_set_sampler (experimental there); SPEC_BACKEND_SAMPLING=0
    turns it off, so that the numpy path can be compared with it or fallen back to. A model
    uses it where it is offloaded to a GPU, or everywhere with SPEC_BACKEND_SAMPLING=all (Model).
    """
    if backend_sampling_setting() == "off":
        return False
    L = llama_lib()
    return all(hasattr(L, f) for f in ("llama_set_sampler", "llama_get_sampled_token_ith", "llama_get_sampled_candidates_ith"))


# ggml's enum ggml_backend_dev_type
_DEVICE_TYPES = {0: "CPU", 1: "GPU", 2: "integrated GPU", 3: "accelerator"}


def build_info() -> dict:
    """What this llama.cpp build can do: versions, compiled-in backends, devices and their memory.

    The backend registry and device calls are ggml's; llama-cpp-python binds few of them,
    so they are called through ctypes on the ggml library it ships (already loaded).
    """
    import importlib.metadata

    L = llama_lib()
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
    ggml = ggml_lib()
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
    ggml = ggml_lib()
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
