"""llama.cpp's own programs as the yardstick for `spec bench`.

`llama-speculative-simple` is llama.cpp's reference speculative decoder: with a draft
model (`--spec-type draft-simple`), and without one, drafting from the context with
`--spec-type ngram-mod` (its defaults), the yardstick for spec's n-gram and auto drafters.
`llama-completion` is its plain decoder.
scripts/build-reference.sh builds both from the llama.cpp revision vendored in the
pinned llama-cpp-python. They are run as subprocesses and their own timing lines are
parsed, so what they report is what they measured, with no Python in the loop.
"""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ..errors import SpecError

ENV_VAR = "SPEC_REFERENCE"
SPECULATIVE_NAME = "llama-speculative-simple"
PLAIN_NAME = "llama-completion"
RUN_TIMEOUT_S = 600

# "decoded   64 tokens in    1.958 seconds, speed:   32.683 t/s"
_DECODED = re.compile(r"decoded\s+(\d+)\s+tokens\s+in\s+([0-9.]+)\s+seconds")
_DRAFTED = re.compile(r"n_drafted\s*=\s*(\d+)")
_ACCEPTED = re.compile(r"n_accept\s*=\s*(\d+)")
# common_perf_print: "llama_perf_context_print:        eval time =  950.53 ms /    63 runs   (..."
_EVAL = re.compile(r"\beval time\s*=\s*([0-9.]+)\s*ms\s*/\s*(\d+)\s*(?:runs|tokens)")
_PROMPT_EVAL = re.compile(r"prompt eval time")
_SAMPLING = re.compile(r"sampling time\s*=\s*([0-9.]+)\s*ms")


class ReferenceError(SpecError):
    """The reference binary is missing, does not run, or printed something we cannot read."""


@dataclass
class Reference:
    speculative: Path
    plain: Path | None  # llama-completion beside it, for the target-only reference figure


@dataclass
class ReferenceRun:
    generated: int
    seconds: float
    drafted: int | None = None
    accepted: int | None = None

    @property
    def tokens_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0


def locate(path: str | os.PathLike | None) -> Reference | None:
    """The reference binaries from --reference (a file or the folder holding it) or $SPEC_REFERENCE.

    None when neither is given. Raises ReferenceError with a readable message when the
    path is given but does not lead to a runnable llama-speculative-simple.
    """
    raw = path if path is not None else os.environ.get(ENV_VAR)
    if raw is None or str(raw) == "":
        return None
    p = Path(raw).expanduser()
    if p.is_dir():
        p = p / SPECULATIVE_NAME
    if not p.exists():
        raise ReferenceError(
            f"reference binary not found: {p} (build it with scripts/build-reference.sh and pass the path it prints)"
        )
    if not p.is_file() or not os.access(p, os.X_OK):
        raise ReferenceError(f"reference binary is not an executable file: {p}")
    plain = p.with_name(PLAIN_NAME)
    return Reference(speculative=p, plain=plain if plain.is_file() and os.access(plain, os.X_OK) else None)


def _run(cmd: list[str], prompt: str) -> str:
    with tempfile.NamedTemporaryFile("w", suffix=".txt", encoding="utf-8", delete=False) as f:
        f.write(prompt)
        prompt_file = f.name
    try:
        proc = subprocess.run(
            [*cmd, "-f", prompt_file],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=RUN_TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        raise ReferenceError(f"{Path(cmd[0]).name} did not finish within {RUN_TIMEOUT_S} s") from None
    except OSError as e:
        raise ReferenceError(f"cannot run {cmd[0]}: {e.strerror or e}") from None
    finally:
        os.unlink(prompt_file)
    out = proc.stdout.decode("utf-8", errors="replace") + "\n" + proc.stderr.decode("utf-8", errors="replace")
    if proc.returncode != 0:
        raise ReferenceError(f"{Path(cmd[0]).name} exited with status {proc.returncode}: {_last_line(out)}")
    return out


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"


def parse_speculative(output: str) -> ReferenceRun:
    """Read llama-speculative-simple's summary: tokens decoded, seconds, drafted, accepted."""
    m = _DECODED.search(output)
    if m is None:
        raise ReferenceError(f"no 'decoded N tokens in S seconds' line in the reference output: {_last_line(output)}")
    drafted = _DRAFTED.search(output)
    accepted = _ACCEPTED.search(output)
    return ReferenceRun(
        generated=int(m.group(1)),
        seconds=float(m.group(2)),
        drafted=int(drafted.group(1)) if drafted else None,
        accepted=int(accepted.group(1)) if accepted else None,
    )


def parse_plain(output: str) -> ReferenceRun:
    """Read llama-completion's performance lines: generation eval time plus sampling time.

    Generation is timed as eval + sampling, which is what a decoding loop spends apart
    from printing; the prompt ("prompt eval time") is left out, as it is for spec.
    """
    for line in output.splitlines():
        if _PROMPT_EVAL.search(line):
            continue
        m = _EVAL.search(line)
        if m is not None:
            ms, n = float(m.group(1)), int(m.group(2))
            s = _SAMPLING.search(output)
            sampling_ms = float(s.group(1)) if s else 0.0
            return ReferenceRun(generated=n, seconds=(ms + sampling_ms) / 1000.0)
    raise ReferenceError(f"no 'eval time = ... ms / N runs' line in the llama-completion output: {_last_line(output)}")


@dataclass
class ReferenceSettings:
    target: Path
    draft: Path | None  # None: no draft model, so only the target-only and ngram-mod rows
    max_tokens: int
    ctx: int
    threads: int
    ngl: int = 0
    ngl_draft: int = 0
    temp: float = 0.0  # 0: greedy
    top_k: int = 40  # 0: the whole vocabulary, in spec and in llama.cpp alike
    top_p: float = 1.0
    seed: int = 0


# spec shapes logits as temperature, top-k, top-p (sampling.shape); top-k commutes with the
# temperature. llama.cpp's default chain adds penalties, DRY, min-p 0.05 and more, puts the
# temperature last, and lets a GGUF's own sampling defaults stand in for any flag not given:
# naming the chain and every value makes it sample from the distribution spec samples from.
SAMPLERS = "top_k;temperature;top_p"


def sampling_args(s: ReferenceSettings) -> list[str]:
    if s.temp <= 0:
        return ["--temp", "0", "--seed", str(s.seed)]
    return [
        "--samplers", SAMPLERS, "--temp", repr(float(s.temp)), "--top-k", str(s.top_k), "--top-p", repr(float(s.top_p)),
        "--min-p", "0", "--seed", str(s.seed),
    ]  # fmt: skip


def _common_args(s: ReferenceSettings) -> list[str]:
    # spec's sampling settings (greedy by default), seed, token budget and threads.
    return ["-n", str(s.max_tokens), *sampling_args(s), "-c", str(s.ctx), "-t", str(s.threads), "-ngl", str(s.ngl)]


def speculative_command(ref: Reference, s: ReferenceSettings, draft_len: int) -> list[str]:
    return [
        str(ref.speculative), "-m", str(s.target), "-md", str(s.draft), "--spec-type", "draft-simple",
        "--spec-draft-n-max", str(draft_len), "--spec-draft-n-min", "0", "--spec-draft-p-min", "0",
        "-td", str(s.threads), "-ngld", str(s.ngl_draft), *_common_args(s),
    ]  # fmt: skip


def ngram_command(ref: Reference, s: ReferenceSettings) -> list[str]:
    # ngram-mod with llama.cpp's own defaults, as a user of llama.cpp would run it
    return [str(ref.speculative), "-m", str(s.target), "--spec-type", "ngram-mod", *_common_args(s)]


def plain_command(ref: Reference, s: ReferenceSettings) -> list[str]:
    assert ref.plain is not None
    return [str(ref.plain), "-m", str(s.target), "-no-cnv", "--no-display-prompt", *_common_args(s)]


def run_speculative(ref: Reference, s: ReferenceSettings, prompt: str, draft_len: int) -> ReferenceRun:
    return parse_speculative(_run(speculative_command(ref, s, draft_len), prompt))


def run_ngram(ref: Reference, s: ReferenceSettings, prompt: str) -> ReferenceRun:
    return parse_speculative(_run(ngram_command(ref, s), prompt))


def run_plain(ref: Reference, s: ReferenceSettings, prompt: str) -> ReferenceRun:
    return parse_plain(_run(plain_command(ref, s), prompt))
