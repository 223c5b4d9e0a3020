"""The names and limits of the options that several commands share (run, chat, bench, doctor).

Each is checked where a command reads it; this module says what it is, once.
"""

from __future__ import annotations

from .errors import SpecError

# --drafter: who proposes the drafts. auto (spec run's default) chooses drafter and length round
# by round; model, ngram and tree draft a fixed length; self is the model drafter over a draft cut
# from the target's own blocks (selfdraft.py). The names are also words of the bench's JSON and CSV
# files, so they do not change lightly.
MODEL, NGRAM, TREE, AUTO, SELF = "model", "ngram", "tree", "auto", "self"
DRAFTERS = (MODEL, NGRAM, TREE, AUTO, SELF)

# --drafter tree: the target verifies up to this many branches at once, each in its own
# llama.cpp sequence beside seq 0; and the tree's depth when --draft-len is auto.
TREE_BRANCHES = 4
TREE_DEPTH = 4

# --draft-len (and /draft-len, and the bench's --draft-lens): tokens drafted per round.
MAX_DRAFT_LEN = 64

# --seed: numpy's generators take any whole number from 0 up; this bound keeps it an int64.
SEED_END = 2**63

# The llama-cpp-python this project is built and tested against (pyproject.toml pins the same);
# its C API changes often, so a reinstall names this version.
LLAMA_CPP_PYTHON_PIN = "llama-cpp-python==0.3.36"


def check_seed(seed: int | None) -> None:
    if seed is not None and not 0 <= seed < SEED_END:
        raise SpecError(f"--seed must be a whole number from 0 up, got {seed}")


def check_prompt_fits(prompt_tokens: int, n_ctx: int) -> None:
    """A prompt must leave the context room for at least the token generated after it."""
    if prompt_tokens >= n_ctx:
        raise SpecError(
            f"the prompt is {prompt_tokens} tokens but the context holds {n_ctx}; use a larger --ctx or a shorter prompt"
        )
