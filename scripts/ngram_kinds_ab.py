"""auto as spec runs it against two older ways of weighing the n-gram lookup, side by side in one process.

auto asks the drafter with the best predicted gain first; for the lookup that gain uses the
acceptance of the kind of match behind this round's guess (strategy._Source.order_gain,
NgramDrafter.guess_kind). And when another drafter drafted, the lookup's unverified guess is
checked against every token the target produced that round (strategy.shadow_evidence). The two
older ways: ordering by the lookup's one overall estimate, and checking only the guess's first
token. For each bench prompt and repeat: the target alone, auto, each older way, and the target
alone again (the noise). Prints tokens/s over the first target run per prompt (medians over the
repeats) and the ratio of auto to each older way taken run by run, then their medians over prompts.

    .venv/bin/python scripts/ngram_kinds_ab.py [--preset NAME] [--temp T] [--tokens N] [--repeats R]
"""

from __future__ import annotations

import statistics

from auto_ab_setup import PROMPTS, setup

from spec_cli.decode import Engine
from spec_cli.session import build_strategy

OLD_ORDER, ONE_TOKEN = "auto, old order", "auto, 1-token shadow"
MODES = ("target", "auto", OLD_ORDER, ONE_TOKEN, "target again")


def strategy_for(mode: str, pair, choice):
    if not mode.startswith("auto"):
        return None
    strategy = build_strategy(pair, choice, None)
    if mode == OLD_ORDER:
        for src in strategy.sources:
            src.order_gain = src.ctl.best_speedup  # the lookup's kinds of match left out of the order
    elif mode == ONE_TOKEN:
        propose = strategy.propose

        def first_token_only(*args, **kw):
            prop = propose(*args, **kw)
            for src in strategy.sources:
                src.shadow = src.shadow[:1]
            return prop

        strategy.propose = first_token_only
    return strategy


def main() -> None:
    args, texts, choice, pair, opts = setup(MODES, "default", 64, 22)
    paired: dict[str, list[float]] = {OLD_ORDER: [], ONE_TOKEN: []}
    try:
        for pid in PROMPTS:
            prompt = pair.target.tokenize(texts[pid])
            rates: dict[str, list[float]] = {m: [] for m in MODES}
            autos = list(MODES[1:4])
            for r in range(args.repeats):
                turn = autos[r % 3 :] + autos[: r % 3]  # each auto first in turn
                for mode in (MODES[0], *turn, MODES[-1]):
                    pair.target.reset()
                    if pair.draft is not None:
                        pair.draft.reset()
                    gen = Engine(pair.target, strategy=strategy_for(mode, pair, choice)).generate(prompt, opts)
                    rates[mode].append(len(gen.tokens) / gen.stats.t_total if gen.tokens else float("nan"))
            base = statistics.median(rates["target"])
            ratios = []
            for old in paired:
                x = statistics.median(n / o for n, o in zip(rates["auto"], rates[old]))
                paired[old].append(x)
                ratios.append(f"auto/{old.removeprefix('auto, ')} {x:.3f}")
            print(f"{pid:24}" + "".join(f"{statistics.median(rates[m]) / base:>21.2f}x" for m in MODES[1:]) + "   " + ", ".join(ratios))
    finally:
        pair.close()
    for old, xs in paired.items():
        ok = [x for x in xs if x == x]
        print(f"median over prompts of auto / {old}: {statistics.median(ok):.3f}")


if __name__ == "__main__":
    main()
