"""`spec doctor` on this machine's build (CPU-only here), in process and as a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.metadata import version

from typer.testing import CliRunner

from spec_cli import doctor
from spec_cli.cli import app
from spec_cli.llama import backend_sampling_available
from tests.pins import pinned


def test_doctor_reports_this_build_and_exits_0():
    r = CliRunner().invoke(app, ["doctor"], env={"SPEC_WIDTH": "120", "COLUMNS": "120"})
    assert r.exit_code == 0, r.output
    assert "llama-cpp-python" in r.output and version("llama-cpp-python") in r.output  # the installed build's
    assert "backends compiled in" in r.output and "CPU" in r.output
    report = doctor.diagnose(check_offload=False)
    if not report["gpu_offload"]:
        assert "GPU offload support" in r.output and "CPU-only build" in r.output


def test_doctor_json_as_a_subprocess():
    p = subprocess.run(
        [sys.executable, "-m", "spec_cli", "doctor", "--json"], capture_output=True, text=True, timeout=120, check=False
    )
    assert p.returncode == 0, p.stderr
    report = json.loads(p.stdout)
    assert "CPU" in report["backends"]
    assert any(d["type"] == "CPU" and d["total_bytes"] > 0 for d in report["devices"])
    assert report["threads"] >= 1
    assert set(report["paths"]) >= {"spec cache", "calibration cache", "Hugging Face cache"}
    assert isinstance(report["gpu_offload"], bool) and isinstance(report["rpc"], bool)
    # GPU offload means a GPU device: an RPC-enabled CPU build must not claim it
    assert report["gpu_offload"] == any(d["type"] in ("GPU", "integrated GPU") for d in report["devices"])
    # backend sampling as this build has it, and SPEC_BACKEND_SAMPLING=0 reports it off
    assert report["backend_sampling"] is backend_sampling_available()
    off = subprocess.run([sys.executable, "-m", "spec_cli", "doctor", "--json", "--no-offload"], capture_output=True, text=True,
                         timeout=120, check=False, env={**os.environ, "SPEC_BACKEND_SAMPLING": "0"})  # fmt: skip
    assert json.loads(off.stdout)["backend_sampling"] is False


def test_a_gpu_with_a_cpu_only_build_gets_the_reinstall_command(monkeypatch):
    monkeypatch.setattr(doctor, "gpu_present", lambda: "NVIDIA")
    real = doctor.build_info
    monkeypatch.setattr(doctor, "build_info", lambda: {**real(), "gpu_offload": False})
    report = doctor.diagnose(check_offload=False)
    # the command installs the version pyproject.toml pins, whatever this machine has
    command = (
        f'CMAKE_ARGS="-DGGML_CUDA=on -DGGML_RPC=on" pip install --force-reinstall --no-cache-dir {pinned("llama-cpp-python")}'
    )
    assert any(command in a for a in report["advice"]), report["advice"]
