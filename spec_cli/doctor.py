"""`spec doctor`: what this installation can do, gathered into one dictionary (the CLI renders it).

The first question users of GPU builds of llama.cpp ask is whether the GPU is used at
all. A CPU-only llama-cpp-python wheel on a machine with an NVIDIA card is the usual
answer, and it is fixed by reinstalling with the right CMAKE_ARGS.
"""

from __future__ import annotations

import os
import platform
import shutil
from collections.abc import Callable
from pathlib import Path

from .errors import SpecError
from .limits import LLAMA_CPP_PYTHON_PIN
from .llama import Model, build_info, default_threads
from .presets import cache_dir, load_catalog, pair, resolve, spec_home

PIN = LLAMA_CPP_PYTHON_PIN


def gpu_present() -> str | None:
    """A GPU this machine has that llama.cpp could use, by name of its kind, or None."""
    if shutil.which("nvidia-smi") or Path("/proc/driver/nvidia/version").exists():
        return "NVIDIA"
    if platform.system() == "Darwin" and platform.machine() == "arm64":
        return "Apple Silicon"
    return None


def reinstall_command(gpu: str) -> str:
    cmake = ("-DGGML_CUDA=on" if gpu == "NVIDIA" else "-DGGML_METAL=on") + " -DGGML_RPC=on"
    return f'CMAKE_ARGS="{cmake}" pip install --force-reinstall --no-cache-dir {PIN}'


def offload_check(notify: Callable[[str], None]) -> dict:
    """Load the default target with one layer on the GPU: does offloading work here?"""
    try:
        target_ref, _ = pair("default", load_catalog())
        path = resolve(target_ref, notify)
        with Model(path, n_ctx=256, n_gpu_layers=1, label="target") as m:
            out = m.eval(m.tokenize("Hello"), logits="last")
            ok = out is not None and out.shape[1] == m.n_vocab
        return {"ok": bool(ok), "model": str(path), "detail": "one layer offloaded, one pass evaluated"}
    except SpecError as e:
        return {"ok": False, "model": None, "detail": str(e)}


def diagnose(check_offload: bool = True, notify: Callable[[str], None] = lambda s: None) -> dict:
    info = build_info()
    gpu = gpu_present()
    report = {
        **info,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "threads": default_threads(),
        "gpu_present": gpu,
        "offload": None,
        "advice": [],
        "paths": {
            "spec cache": str(cache_dir()),
            "calibration cache": str(cache_dir() / "calibration.json"),
            "user models.toml": str(spec_home() / "models.toml"),
            "Hugging Face cache": _hf_cache(),
        },
    }
    if info["gpu_offload"] and check_offload:
        report["offload"] = offload_check(notify)
    if gpu and not info["gpu_offload"]:
        report["advice"].append(
            f"this machine has an {gpu} GPU but llama-cpp-python was built for the CPU only; reinstall it with: "
            + reinstall_command(gpu)
        )
    elif not info["gpu_offload"]:
        report["advice"].append("CPU-only build, and no GPU found: spec runs on the CPU (that is fine; see `spec bench`)")
    if report["offload"] is not None and not report["offload"]["ok"]:
        report["advice"].append(f"GPU offload failed: {report['offload']['detail']}")
    return report


def _hf_cache() -> str:
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except Exception:  # noqa: BLE001  (a report line, not a failure)
        return os.environ.get("HF_HUB_CACHE", "~/.cache/huggingface/hub")
