"""Lift report over a million users: `loopwire.analysis.lift.compute` against a plain pass.

The data is synthetic and seeded: users assigned by `loopwire.audiences.holdouts.assign` (10 %
holdout) over a week, about 11 % converting within 14 days (some twice, some outside the window),
and every treated user exposed to a random subset of sms, email and push. The subject is `compute`
on it (join, window, statistics, cumulative curve, exposure breakdown); the baseline is one plain
Python pass over the same three inputs that does the least a report needs — read every assignment
into a dict, look every conversion up in it, look every exposure up in it. Each side runs
`--rounds` times in alternation and keeps its best round. The target is under 5 s for 1,000,000 users.

    python -m bench.lift_bench [--users 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from bench.common import Result, report

if TYPE_CHECKING:
    from loopwire.analysis.lift import Assignment, Conversion

TARGET_S = 5.0
DAY_MS = 86_400_000
WINDOW_MS = 14 * DAY_MS
HOLDOUT_PERCENT = 10.0
CHANNEL_SETS: tuple[frozenset[str], ...] = (
    frozenset(),
    frozenset({"sms"}),
    frozenset({"email"}),
    frozenset({"sms", "email"}),
    frozenset({"email", "push"}),
    frozenset({"sms", "email", "push"}),
)


Data = tuple[list["Assignment"], list["Conversion"], dict[str, frozenset[str]]]


def dataset(users: int, seed: int = 7) -> Data:
    from loopwire.analysis.lift import Assignment, Conversion
    from loopwire.audiences.holdouts import assign

    rng = random.Random(seed)
    start = 1_700_000_000_000
    assignments: list[Assignment] = []
    conversions: list[Conversion] = []
    exposures: dict[str, frozenset[str]] = {}
    for n in range(users):
        user_id = f"user-{n:07d}"
        group = assign(user_id, "bench_v1", HOLDOUT_PERCENT)
        at = start + rng.randrange(7 * DAY_MS)
        assignments.append(Assignment(user_id, group, at))
        if group == "treatment":
            exposures[user_id] = CHANNEL_SETS[rng.randrange(len(CHANNEL_SETS))]
        if rng.random() < (0.12 if group == "treatment" else 0.10):
            for _ in range(1 + (rng.random() < 0.2)):
                when = at + rng.randrange(-DAY_MS, WINDOW_MS + 2 * DAY_MS)
                conversions.append(Conversion(user_id, when, round(rng.uniform(10, 200), 2)))
    return assignments, conversions, exposures


def plain_pass(
    assignments: Sequence[Assignment],
    conversions: Sequence[Conversion],
    exposures: Mapping[str, frozenset[str]],
) -> int:
    start = {a.user_id: a.assigned_ms for a in assignments}
    hits = 0
    for c in conversions:
        if c.user_id in start:
            hits += 1
    for user_id in exposures:
        if user_id in start:
            hits += 1
    return hits


def run(users: int = 1_000_000, rounds: int = 3) -> list[Result]:
    from loopwire.analysis.lift import compute

    began = time.perf_counter()
    assignments, conversions, exposures = dataset(users)
    built = time.perf_counter() - began

    def subject() -> object:
        return compute(assignments, conversions, exposures, WINDOW_MS, HOLDOUT_PERCENT)

    def baseline() -> object:
        return plain_pass(assignments, conversions, exposures)

    best = {"compute": float("inf"), "baseline": float("inf")}
    every: dict[str, list[float]] = {"compute": [], "baseline": []}
    for number in range(rounds):
        order = [("baseline", baseline), ("compute", subject)]
        for name, work in order if number % 2 == 0 else reversed(order):
            gc.collect()
            started = time.perf_counter()
            work()
            elapsed = time.perf_counter() - started
            every[name].append(round(elapsed, 3))
            best[name] = min(best[name], elapsed)

    return [
        Result(
            name="lift report",
            value=best["compute"],
            unit="s",
            baseline=best["baseline"],
            baseline_label="plain pass over the same inputs",
            target=TARGET_S,
            target_kind="value<=",
            higher_is_better=False,
            details={
                "users": users,
                "conversions": len(conversions),
                "exposed_users": len(exposures),
                "rounds": rounds,
                "seconds_per_round": every,
                "dataset_build_s": round(built, 1),
                "command": "python -m bench.lift_bench",
            },
        )
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Lift report over a million users against a plain pass.")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = run(args.users, args.rounds)
    report(results)
    for result in results:
        print(f"  {result.details}")


if __name__ == "__main__":
    main()
