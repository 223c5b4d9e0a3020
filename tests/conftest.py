"""Shared fixtures. Real-model fixtures use the embedded models that the test extra installs.

Each test session gets its own spec cache and config directory, so nothing from
the user's machine leaks in and derived drafts are made fresh (a few seconds).

`slow` (loads real GGUF models) is given here: a test is slow when it asks for a real-model
fixture below, directly or through a fixture of its own. Only a heavy test that needs none is
marked by hand. `pytest -m "not slow"` is then the unit suite, and a test outside `slow` that
loads a model all the same fails and says so.
"""

from __future__ import annotations

import os
import signal

import pytest

# The Ctrl-C tests send SIGINT to spec, in this process and in children. A shell that starts
# the suite in the background (`.ci/run &` without job control) hands it SIGINT ignored, which
# children inherit and Python then leaves ignored: those tests would fail for the shell's sake.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# The fixtures that resolve a real GGUF model (and those built on them: they ask for these).
REAL_MODEL_FIXTURES = frozenset({"gemma_path", "gemma_q2k_path", "smollm2_path", "smollm2_q2k_path", "smollm2_f32_path"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_MODEL_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """Outside `slow`, loading a model in this process fails the test: the rule above missed it."""
    if item.get_closest_marker("slow") is not None:
        yield
        return
    import llama_cpp
    import llama_cpp.llama_cpp as low

    import spec_cli  # noqa: F401  (its preload goes first: spec_cli/_preload.py)

    real = llama_cpp.llama_model_load_from_file, low.llama_model_load_from_file

    def refuse(path, *args, **kwargs):
        pytest.fail(
            f"{item.nodeid} loads a real model ({os.fsdecode(path)}) but is not marked slow: "
            "have it ask for a real-model fixture of tests/conftest.py, or mark it slow",
            pytrace=False,
        )

    llama_cpp.llama_model_load_from_file = low.llama_model_load_from_file = refuse
    try:
        yield
    finally:
        llama_cpp.llama_model_load_from_file, low.llama_model_load_from_file = real


@pytest.fixture(scope="session", autouse=True)
def isolated_spec_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("spec")
    old = {k: os.environ.get(k) for k in ("SPEC_CACHE", "SPEC_HOME", "HF_HUB_OFFLINE")}
    os.environ["SPEC_CACHE"] = str(root / "cache")
    os.environ["SPEC_HOME"] = str(root / "home")
    os.environ["HF_HUB_OFFLINE"] = "1"
    yield root
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _resolve(name):
    from spec_cli.presets import resolve

    return resolve(name)


@pytest.fixture(scope="session")
def gemma_path():
    return _resolve("gemma-3-270m")


@pytest.fixture(scope="session")
def gemma_q2k_path(gemma_path):
    return _resolve("gemma-3-270m-q2k")


@pytest.fixture(scope="session")
def smollm2_path():
    return _resolve("smollm2-135m-instruct")


@pytest.fixture(scope="session")
def smollm2_q2k_path(smollm2_path):
    return _resolve("smollm2-135m-instruct-q2k")


@pytest.fixture(scope="session")
def smollm2_f32_path(smollm2_path):
    """The stand-in for an expensive target: SmolLM2's own weights dequantized to F32."""
    return _resolve("smollm2-135m-instruct-f32")


@pytest.fixture(scope="session")
def target_model(gemma_path):
    from spec_cli.llama import Model

    m = Model(gemma_path, n_ctx=2048, label="target")
    yield m
    m.close()


@pytest.fixture(scope="session")
def draft_model(gemma_q2k_path):
    from spec_cli.llama import Model

    m = Model(gemma_q2k_path, n_ctx=2048, label="draft")
    yield m
    m.close()


@pytest.fixture(scope="session")
def target_only(target_model):
    """prompt -> (prompt tokens, 32 greedy tokens of the target alone): the reference outputs,
    decoded once per session whichever module asks first."""
    from spec_cli.decode import Engine, GenerateOptions

    done: dict[str, tuple[list[int], list[int]]] = {}

    def run(prompt: str) -> tuple[list[int], list[int]]:
        if prompt not in done:
            target_model.reset()
            toks = target_model.tokenize(prompt)
            done[prompt] = (toks, Engine(target_model).generate(toks, GenerateOptions(max_tokens=32, draft_len=0)).tokens)
        return done[prompt]

    return run


@pytest.fixture
def target(target_model):
    """The session's target model with an empty cache."""
    target_model.reset()
    return target_model


@pytest.fixture
def draft(draft_model):
    draft_model.reset()
    return draft_model
