"""Replay every explore policy on a built workspace and compare them with exploitation.

Runs :func:`profiler.explore.simulate` (what ``profiler simulate`` runs) for each policy
with the workspace's explore settings, the same shoppers and seed, then the paired A/B of
the default (Thompson) against pure exploitation, and a sweep of Thompson's strength.
Writes one JSON file and prints a table: the numbers in the README come from here.

    .venv/bin/python scripts/explore_replay.py --workspace index/movielens \
        --out index/movielens-explore.json
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import profiler
from profiler.explore import POLICIES, compare, simulate
from profiler.storage import write_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strengths", default="0.1,0.3,0.5,0.8")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    ws = profiler.open(args.workspace)
    base = ws.explore_config()
    options = dict(rounds=args.rounds, k=args.k, seed=args.seed, max_users=args.users)
    rows = []
    print(f"{args.workspace}: default explore settings {base.to_dict()}")
    print(
        f"{'policy':<22} {'reward':>7} {'hit rate':>9} {'rounds to hit':>14} {'coverage':>9} "
        f"{'novelty':>8}"
    )
    configs = [(p, replace(base, policy=p)) for p in POLICIES]
    configs += [
        (f"thompson@{s}", replace(base, policy="thompson", strength=float(s)))
        for s in args.strengths.split(",")
    ]
    for name, config in configs:
        result = simulate(ws, config, **options)
        summary = dict(result.summary(), name=name, curve=result.curve)
        rows.append(summary)
        print(
            f"{name:<22} {summary['cumulative_reward']:>7.0f} "
            f"{summary['cumulative_reward'] / summary['users']:>9.3f} "
            f"{summary['mean_rounds_to_first_hit']:>14.3f} {summary['coverage']:>9.4f} "
            f"{summary['novelty']:>8.3f}"
        )
    ab = compare(ws, replace(base, policy="exploit"), base, **options)
    print("\nA/B: A = exploit, B = the default (", json.dumps(base.to_dict()), ")")
    for row in ab:
        print(
            f"  {row['metric']:>20}: B-A {row['diff']:+.4f} [{row['low']:+.4f}, "
            f"{row['high']:+.4f}] {row['verdict']}"
        )
    if args.out is not None:
        write_json(
            args.out,
            {"workspace": str(args.workspace), "options": options, "policies": rows, "ab": ab},
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
