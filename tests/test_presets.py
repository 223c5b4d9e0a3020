"""Model references: local paths, models.toml names, Hugging Face files (through a loopback stand-in)."""

from __future__ import annotations

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from spec_cli.errors import SpecError
from spec_cli.loading import ModelChoice, resolve_refs
from spec_cli.presets import load_catalog, pair, resolve


def test_bundled_catalog_has_default_and_chat_pairs():
    cat = load_catalog()
    assert pair("default", cat) == ("gemma-3-270m", "gemma-3-270m-q2k")
    assert pair("chat", cat)[0] == "smollm2-135m-instruct"
    for name in ("qwen2.5-7b", "llama-3.1-8b", "gemma-3-12b"):
        t, d = pair(name, cat)
        assert cat.models[t]["hf"].endswith(".gguf") and cat.models[d]["hf"].endswith(".gguf")


def test_bundled_qwen_coder_pairs():
    cat = load_catalog()
    assert pair("qwen-coder", cat) == ("qwen2.5-coder-1.5b-instruct", "qwen2.5-coder-0.5b-instruct")
    assert pair("qwen-coder-f16", cat) == ("qwen2.5-coder-1.5b-instruct-f16", "qwen2.5-coder-0.5b-instruct")
    f16 = cat.models["qwen2.5-coder-1.5b-instruct-f16"]
    assert (f16["derive"], f16["quant"]) == ("qwen2.5-coder-1.5b-instruct", "F16")
    for name, size in (("qwen2.5-coder-1.5b-instruct", 1_117_320_768), ("qwen2.5-coder-0.5b-instruct", 491_400_064)):
        m = cat.models[name]
        assert m["file"] == f"{name}-q4_k_m.gguf" and m["size"] == size and m["extra"] == "qwen"


def test_models_listing_fits_80_columns_without_cutting_names(monkeypatch):
    from rich.console import Console

    from spec_cli import ui
    from spec_cli.cli.models import models_cmd

    console = Console(width=80, record=True, highlight=False, force_terminal=False)
    monkeypatch.setattr(ui, "out", console)
    with console.capture() as captured:
        models_cmd()
    text = captured.get()
    lines = text.splitlines()
    assert all(len(ln) <= 80 for ln in lines), [ln for ln in lines if len(ln) > 80]
    assert "\u2026" not in text  # no name or description cut short with an ellipsis
    cat = load_catalog()
    words = {w for ln in lines for w in ln.split()}
    for name in [*cat.pairs, *cat.models]:
        assert name in words, name  # whole, as one word
    desc = cat.pairs["qwen-coder"]["description"]
    assert " ".join(text.split()).count(desc) == 1  # wrapped, not truncated


def test_local_path_is_returned_as_is(tmp_path):
    f = tmp_path / "m.gguf"
    f.write_bytes(b"GGUF")
    assert resolve(str(f)) == f


def test_unknown_reference_is_a_clear_error():
    with pytest.raises(SpecError, match="unknown model"):
        resolve("definitely-not-a-model")
    with pytest.raises(SpecError, match="not found"):
        resolve("missing/dir/model.gguf")


def test_user_models_toml_adds_entries(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HOME", str(tmp_path))
    f = tmp_path / "mine.gguf"
    f.write_bytes(b"GGUF")
    (tmp_path / "models.toml").write_text(f'[models.mine]\npath = "{f}"\n[pairs.mypair]\ntarget = "mine"\ndraft = "mine"\n')
    assert resolve("mine") == f
    assert pair("mypair") == ("mine", "mine")


def test_bad_user_models_toml(tmp_path, monkeypatch):
    monkeypatch.setenv("SPEC_HOME", str(tmp_path))
    (tmp_path / "models.toml").write_text("[models.x\n")
    with pytest.raises(SpecError, match="not valid TOML"):
        load_catalog()
    (tmp_path / "models.toml").write_text('[models.x]\nderive = "x"\nquant = "Q2_K"\n')
    with pytest.raises(SpecError, match="derives from itself"):
        resolve("x")


def test_target_alone_takes_its_pairs_draft():
    assert resolve_refs(ModelChoice(target="gemma-3-270m"), "default") == ("gemma-3-270m", "gemma-3-270m-q2k")
    assert resolve_refs(ModelChoice(), "chat") == ("smollm2-135m-instruct", "smollm2-135m-instruct-q2k")
    assert resolve_refs(ModelChoice(no_spec=True), "default") == ("gemma-3-270m", None)
    with pytest.raises(SpecError, match="no draft"):
        resolve_refs(ModelChoice(target="/some/where.gguf", drafter="model"), "default")
    # auto with no draft model falls back to the n-gram lookup alone
    assert resolve_refs(ModelChoice(target="/some/where.gguf"), "default") == ("/some/where.gguf", None)


def test_derived_draft_is_written_once_and_atomically(gemma_q2k_path):
    cache = Path(os.environ["SPEC_CACHE"]) / "models"
    assert gemma_q2k_path.parent == cache
    assert not list(cache.glob("*.tmp*"))
    mtime = gemma_q2k_path.stat().st_mtime_ns
    assert resolve("gemma-3-270m-q2k") == gemma_q2k_path
    assert gemma_q2k_path.stat().st_mtime_ns == mtime  # reused, not rewritten


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    payload = b"GGUF\x03\x00\x00\x00" + b"\x00" * 56

    def _headers(self):
        if self.path != "/owner/repo/resolve/main/tiny.gguf":
            self.send_response(404)
            self.send_header("X-Error-Code", "EntryNotFound")
            self.end_headers()
            return False
        self.send_response(200)
        self.send_header("ETag", '"' + hashlib.sha256(self.payload).hexdigest() + '"')
        self.send_header("X-Repo-Commit", "0" * 40)
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        return True

    def do_HEAD(self):
        self._headers()

    def do_GET(self):
        if self._headers():
            self.wfile.write(self.payload)

    def log_message(self, *args):
        pass


def test_hf_reference_downloads_through_huggingface_hub(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = dict(os.environ, HF_ENDPOINT=f"http://127.0.0.1:{server.server_port}", HF_HOME=str(tmp_path / "hf"))
        env.pop("HF_HUB_OFFLINE", None)
        code = "from spec_cli.presets import resolve; print(resolve('owner/repo:tiny.gguf'))"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        path = Path(proc.stdout.strip().splitlines()[-1])
        assert path.read_bytes() == _HubStandIn.payload
        assert str(tmp_path / "hf") in str(path)

        # a file the repository does not have: one clear error
        code = "from spec_cli.cli import main; main(['run', '--no-spec', '--target', 'owner/repo:other.gguf', 'hi'])"
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
        assert proc.returncode != 0 and "Traceback" not in proc.stderr
        assert "other.gguf" in proc.stderr
    finally:
        server.shutdown()
