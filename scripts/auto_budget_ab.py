"""auto with and without its budget for trying a drafter, side by side in one process (issue 11).

For each bench prompt, in turn: the target alone, auto as spec runs it, auto with the budget
lifted (adaptive.EXPLORE_ALLOWANCE set out of reach), and the target alone again (the noise).
Prints each one's tokens/s over the first target run, medians over the repeats.

    .venv/bin/python scripts/auto_budget_ab.py [--preset NAME] [--temp T] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import statistics

from auto_ab_setup import PROMPTS, setup

from spec_cli import adaptive
from spec_cli.decode import Engine
from spec_cli.session import build_strategy

MODES = ("target", "auto", "auto without budget", "target again")


def main() -> None:
    args, texts, choice, pair, opts = setup(MODES, "standin-gemma-smollm2", 32, 22)
    allowance = adaptive.EXPLORE_ALLOWANCE
    try:
        for pid in PROMPTS:
            prompt = pair.target.tokenize(texts[pid])
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            for _ in range(args.repeats):
                for mode in MODES:
                    pair.target.reset()
                    pair.draft.reset()
                    adaptive.EXPLORE_ALLOWANCE = 1e9 if mode == "auto without budget" else allowance
                    strategy = build_strategy(pair, choice, None) if mode.startswith("auto") else None
                    gen = Engine(pair.target, strategy=strategy).generate(prompt, opts)
                    rates[mode].append(len(gen.tokens) / gen.stats.t_total)
            base = statistics.median(rates["target"])
            print(f"{pid:24}" + "".join(f"{statistics.median(rates[m]) / base:>21.2f}x" for m in MODES[1:]))
    finally:
        adaptive.EXPLORE_ALLOWANCE = allowance
        pair.close()


if __name__ == "__main__":
    main()
