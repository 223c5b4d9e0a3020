"""auto ordering its drafters by the n-gram lookup's acceptance per kind of match, and without, side by side.

auto asks the drafter with the best predicted gain first; for the lookup that gain now uses the
acceptance of the kind of match behind this round's guess (strategy._Source.order_gain,
NgramDrafter.guess_kind). This compares that with ordering by the lookup's one overall estimate,
in one process: for each bench prompt and repeat, the target alone, auto as spec runs it, auto
ordered the old way, and the target alone again (the noise). Prints tokens/s over the first
target run per prompt (medians over the repeats), then the median over prompts of the new/old
ratio taken run by run.

    .venv/bin/python scripts/ngram_kinds_ab.py [--preset NAME] [--temp T] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import statistics

from auto_ab_setup import PROMPTS, setup

from spec_cli.decode import Engine
from spec_cli.session import build_strategy

MODES = ("target", "auto", "auto, ordered by one estimate", "target again")


def strategy_for(mode: str, pair, choice):
    if not mode.startswith("auto"):
        return None
    strategy = build_strategy(pair, choice, None)
    if mode != "auto":
        for src in strategy.sources:
            src.order_gain = src.ctl.best_speedup  # the lookup's kinds of match left out of the order
    return strategy


def main() -> None:
    args, texts, choice, pair, opts = setup(MODES, "default", 64, 28)
    paired = []
    try:
        for pid in PROMPTS:
            prompt = pair.target.tokenize(texts[pid])
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            for r in range(args.repeats):
                order = MODES if r % 2 == 0 else (MODES[0], MODES[2], MODES[1], MODES[3])  # neither auto always first
                for mode in order:
                    pair.target.reset()
                    if pair.draft is not None:
                        pair.draft.reset()
                    gen = Engine(pair.target, strategy=strategy_for(mode, pair, choice)).generate(prompt, opts)
                    rates[mode].append(len(gen.tokens) / gen.stats.t_total if gen.tokens else float("nan"))
            base = statistics.median(rates["target"])
            ratio = statistics.median(n / o for n, o in zip(rates[MODES[1]], rates[MODES[2]]))
            paired.append(ratio)
            print(f"{pid:24}" + "".join(f"{statistics.median(rates[m]) / base:>27.2f}x" for m in MODES[1:])
                  + f"   new/old {ratio:.3f}")  # fmt: skip
    finally:
        pair.close()
    ok = [x for x in paired if x == x]
    print(f"median over prompts of new/old: {statistics.median(ok):.3f}")


if __name__ == "__main__":
    main()
