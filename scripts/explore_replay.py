"""Replay every explore policy on a built workspace and compare them with exploitation.

Runs :func:`profiler.explore.simulate` (what ``profiler simulate`` runs) for each policy
with the workspace's explore settings, the same shoppers and seed, then the paired A/B of
the default (Thompson) against pure exploitation, and a sweep of Thompson's strength.
Writes one JSON file and prints a table: the numbers in the README come from here.
``--two-fold`` also checks the build's choice out of sample (:func:`two_fold`).

    .venv/bin/python scripts/explore_replay.py --workspace index/movielens \
        --out index/movielens-explore.json [--two-fold]
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import replace
from pathlib import Path

import numpy as np

import profiler
from profiler.explore import POLICIES, Replay, choose_config, compare, simulate
from profiler.storage import write_json


def two_fold(ws, *, rounds: int, k: int, seed: int, max_users: int | None) -> list[dict]:
    """An out-of-sample check of the build's choice: the replay's shoppers split in two
    halves (by ``seed``); :func:`choose_config` chooses on one half, and its choice and
    exploitation with the same prior strength are replayed on the other; then the other
    way round."""
    full = Replay(ws, k=k, seed=seed, max_users=max_users)
    held = np.array(sorted(full.held_users))
    order = np.random.default_rng(seed).permutation(len(held))
    halves = [set(held[order[: len(held) // 2]]), set(held[order[len(held) // 2 :]])]
    everyone = set(ws.events["user_id"])
    rows = []
    for fold, (choose_on, test_on) in enumerate([halves, halves[::-1]]):
        config, report = choose_config(
            ws,
            users=None,
            rounds=rounds,
            k=k,
            skip_users=everyone - choose_on,
            min_history=full.min_history,  # a half's own count could pick another
        )
        test = Replay(
            ws,
            k=k,
            seed=seed,
            max_users=None,
            skip_users=everyone - test_on,
            min_history=full.min_history,
        )
        runs = {
            name: test.run(c, rounds=rounds).summary()
            for name, c in (("thompson", config), ("exploit", replace(config, policy="exploit")))
        }
        rows.append({"fold": fold, "chosen": config.to_dict(), "why": report["why"], **runs})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True, type=Path)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--strengths", default="0.1,0.3,0.5,0.8")
    parser.add_argument(
        "--two-fold",
        action="store_true",
        help="also check the build's choice out of sample: choose on half the shoppers, "
        "replay on the other half",
    )
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
    folds = two_fold(ws, **options) if args.two_fold else []
    if folds:
        print("\nOut of sample: chosen on one half of the shoppers, replayed on the other")
        for row in folds:
            t, e, c = row["thompson"], row["exploit"], row["chosen"]
            print(
                f"  fold {row['fold']}: strength {c['strength']}, prior {c['prior_strength']}; "
                f"{t['users']} shoppers: thompson {t['cumulative_reward']:.0f} / "
                f"{t['mean_rounds_to_first_hit']:.3f} rounds / coverage {t['coverage']:.4f}, "
                f"exploit {e['cumulative_reward']:.0f} / {e['mean_rounds_to_first_hit']:.3f} / "
                f"{e['coverage']:.4f}"
            )
    if args.out is not None:
        write_json(
            args.out,
            {
                "workspace": str(args.workspace),
                "options": options,
                "policies": rows,
                "ab": ab,
                "two_fold": folds,
            },
        )
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
