"""Token tree against a chain on the same target/draft pair, greedy, prompt by prompt.

    python scripts/tree_vs_chain.py [--max-tokens 64] [--depth 4] [--threshold 0.2]

Both run in the same process on the same models (the target loaded with 5 sequences,
which does not change a chain's results), alternating per prompt, so machine noise
hits both alike. Prints acceptance, tokens per target pass, and where the time went.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # for tests.neartie

from spec_cli.backend import Model
from spec_cli.decode import Engine, GenerateOptions
from spec_cli.drafters import ModelDrafter
from spec_cli.drafters.tree import TreeDrafter
from spec_cli.presets import resolve
from spec_cli.strategy import FixedStrategy
from tests.neartie import first_difference, tie_gap

PROMPTS = [
    "The capital of France is",
    "My favourite thing to do on a rainy afternoon is",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "The history of the printing press begins",
    "Here is a list of fruits:\n1. Apple\n2.",
    "In a small village by the sea, there lived",
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--threshold", type=float, default=0.2)
    ap.add_argument("--branches", type=int, default=4)
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads per model (1 is steadier on a busy machine)")
    ap.add_argument("--no-check", action="store_true", help="skip the target-only reference run and the near-tie check")
    ap.add_argument(
        "--forced", action="store_true",
        help="instead of generating, draft at every position of the target-only output and count how much of it each drafter gets right",
    )
    args = ap.parse_args()
    target = Model(resolve("gemma-3-270m"), n_ctx=1024, n_seq_max=args.branches + 1, n_threads=args.threads, label="target")
    draft = Model(resolve("gemma-3-270m-q2k"), n_ctx=1024, n_threads=args.threads, label="draft")
    if args.forced:
        return forced(target, draft, args)
    opts = GenerateOptions(max_tokens=args.max_tokens, draft_len=args.depth)
    totals = {k: dict(gen=0, passes=0, drafted=0, accepted=0, t_target=0.0, t_draft=0.0, t_total=0.0) for k in ("chain", "tree")}
    same = 0
    for prompt in PROMPTS:
        toks = target.tokenize(prompt)
        target.reset()
        outs = {}
        if not args.no_check:
            outs["target"] = Engine(target).generate(toks, GenerateOptions(max_tokens=args.max_tokens, draft_len=0)).tokens
        for kind in ("chain", "tree"):
            target.reset()
            draft.reset()
            drafter = ModelDrafter(draft) if kind == "chain" else TreeDrafter(
                draft, threshold=args.threshold, max_branches=args.branches, max_nodes=args.nodes
            )
            res = Engine(target, strategy=FixedStrategy(drafter, args.depth)).generate(toks, opts)
            s = res.stats
            outs[kind] = res.tokens
            t = totals[kind]
            t["gen"] += s.generated
            t["passes"] += s.target_passes
            t["drafted"] += s.drafted
            t["accepted"] += s.accepted
            t["t_target"] += s.t_target
            t["t_draft"] += s.t_draft
            t["t_total"] += s.t_total
            extra = ""
            if kind == "tree":
                extra = f"  {drafter.nodes / max(drafter.trees, 1):.1f} nodes/tree, {drafter.branches / max(drafter.trees, 1):.2f} branches/tree, side wins {drafter.side_wins}"
            print(
                f"{kind:5s} {prompt[:28]!r:32s} tok/pass {s.tokens_per_pass:.2f}  accepted/drafted {s.accepted}/{s.drafted}"
                f"  accepted/pass {s.accepted / max(s.target_passes, 1):.2f}  tok/s {s.tokens_per_second:.1f}{extra}"
            )
        same += outs["chain"] == outs["tree"]
        for kind in ("chain", "tree") if not args.no_check else ():
            k = first_difference(outs["target"], outs[kind])
            if k is not None:
                gap = tie_gap(target, toks, outs["target"][:k], outs["target"][k], outs[kind][k])
                print(f"      {kind} leaves the target-only output at token {k}: top-two logit gap {gap:.3f}")
    print(f"\nidentical chain/tree outputs: {same}/{len(PROMPTS)} prompts")
    for kind, t in totals.items():
        print(
            f"{kind:5s} total: {t['gen']} tokens in {t['passes']} target passes = {t['gen'] / t['passes']:.2f} tok/pass; "
            f"acceptance {t['accepted'] / t['drafted']:.2f} ({t['accepted']}/{t['drafted']} drafted nodes); "
            f"target {1000 * t['t_target'] / t['passes']:.1f} ms/pass, draft {1000 * t['t_draft'] / t['passes']:.1f} ms/round; "
            f"{t['gen'] / t['t_total']:.1f} tok/s"
        )


def forced(target, draft, args) -> None:
    """Both drafters on exactly the same contexts: the prompt plus each prefix of the target-only output.

    A round's accepted length is how far the chain, or the best branch of the tree,
    agrees with what the target alone produced next; 1 + that is the tokens the
    round's target pass would yield. Running the loop instead lets near-ties send
    chain and tree down different texts, which muddies the comparison.
    """
    from spec_cli.sampling import SamplingParams
    from spec_cli.tokentree import accept_tree_greedy, depths

    greedy = SamplingParams()
    rng = None
    sums = {"chain": [0, 0, 0], "tree": [0, 0, 0]}  # rounds, accepted, drafted
    for prompt in PROMPTS:
        toks = target.tokenize(prompt)
        target.reset()
        ref = Engine(target).generate(toks, GenerateOptions(max_tokens=args.max_tokens, draft_len=0)).tokens
        chain = ModelDrafter(draft)
        tree = TreeDrafter(draft, threshold=args.threshold, max_branches=args.branches, max_nodes=args.nodes)
        for i in range(len(ref) - args.depth):
            context = toks + ref[:i]
            future = ref[i : i + args.depth + 1]
            for kind, drafter in (("chain", chain), ("tree", tree)):
                prop = drafter.propose(context, args.depth, greedy, rng)
                parents = prop.parents if prop.parents is not None else list(range(-1, len(prop.tokens) - 1))
                # The target's argmax after node n is future[depth(n)] wherever n's path agrees
                # with the reference, and the greedy walk only ever reaches such nodes.
                argmax = [future[0], *(future[d] for d in depths(parents))]
                path, _ = accept_tree_greedy(prop.tokens, parents, argmax)
                r = sums[kind]
                r[0] += 1
                r[1] += len(path)
                r[2] += len(prop.tokens)
    for kind, (rounds, acc, drafted) in sums.items():
        print(
            f"{kind:5s} forced: {rounds} rounds, accepted {acc / rounds:.2f} per round -> {1 + acc / rounds:.2f} tokens per pass; "
            f"{drafted / rounds:.1f} drafted nodes per round, acceptance {acc / drafted:.2f}"
        )


if __name__ == "__main__":
    main()
