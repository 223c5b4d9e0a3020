"""`spec doctor`: versions, backends, devices, offload, threads and caches, on one screen."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from .. import ui
from ..doctor import diagnose
from . import app


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


@app.command("doctor")
def doctor_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as one JSON object.")] = False,
    offload: Annotated[
        bool, typer.Option("--offload/--no-offload", help="Try a one-layer GPU load of the default target (GPU builds only).")
    ] = True,
) -> None:
    """What this installation of spec and llama.cpp can do."""
    with ui.status("checking"):
        r = diagnose(check_offload=offload, notify=ui.info)
    if as_json:
        ui.write_text(json.dumps(r) + "\n")
        return
    yes = {True: "yes", False: "no"}
    offload_line = "not tried (no GPU backend in this build)"
    if r["offload"] is not None:
        offload_line = ("works: " if r["offload"]["ok"] else "FAILED: ") + r["offload"]["detail"]
    elif r["gpu_offload"]:
        offload_line = "not tried (--no-offload)"
    rows = [
        ["llama-cpp-python", r["llama_cpp_python"]],
        ["ggml (llama.cpp)", f"{r['ggml_version']} ({r['ggml_commit']})"],
        ["python, platform", f"{r['python']}, {r['platform']}"],
        ["backends compiled in", ", ".join(r["backends"]) or "-"],
        ["GPU offload support", yes[r["gpu_offload"]]],
        ["RPC support", yes[r["rpc"]]],
        [
            "backend sampling",
            yes[r["backend_sampling"]]
            + (
                " (ids and top-k candidates picked in llama.cpp's graph for models on a GPU; on the CPU numpy reads the rows, which is faster there)"
                if r["backend_sampling"]
                else " (numpy reads full logit rows)"
            ),
        ],
        ["GPU on this machine", r["gpu_present"] or "none found"],
        ["GPU offload check", offload_line],
        ["threads spec uses", str(r["threads"])],
        ["CPU features", r["system_info"]],
    ]
    for d in r["devices"]:
        rows.append(
            [f"device {d['name']}", f"{d['type']}, {d['description']}, {_gib(d['free_bytes'])} free of {_gib(d['total_bytes'])}"]
        )
    for what, where in r["paths"].items():
        rows.append([what, where])
    ui.table("spec doctor", ["what", "this installation"], rows, right_from=2)
    for line in r["advice"]:
        ui.line(line)
