"""A self-play run's metrics.jsonl as BENCHMARKS.md's step tables, one row per N steps.

    python3 benches/steps_table.py runs/RUN/metrics.jsonl [N]   # N defaults to 5

Columns: valid/proposed and solved/answered per task type; how many (step, type) pairs had a
positive mean learnability; in how many steps the proposer and the solver had a TRR++ group
with non-zero advantage spread; rejection reasons; mean answer tokens; mean seconds per step.
"""
import collections
import json
import sys

TYPES = ["deduction", "abduction", "induction"]


def nonzero(step, role):
    """Whether any group of `role` (0 proposer, 1 solver) had advantages that differ."""
    return any(
        g["advantage_std"] > 0 and g["group"] % 2 == role for g in step["update"]["groups"]
    )


def row(steps):
    total = lambda t, k: sum(s[t][k] for s in steps)
    cells = " | ".join(
        f"{total(t, 'valid_proposals')}/{total(t, 'proposals')}, "
        f"{total(t, 'solver_correct')}/{total(t, 'solver_answers')}"
        for t in TYPES
    )
    learnable = sum(1 for s in steps for t in TYPES if s[t]["mean_learnability"] > 0)
    rejections = collections.Counter()
    for s in steps:
        rejections.update(s["rejections"])
    reasons = ", ".join(f"{k} {v}" for k, v in rejections.most_common())
    n = len(steps)
    answer = sum(s["mean_answer_tokens"] for s in steps) / n
    seconds = sum(s["seconds"] for s in steps) / n
    proposer = sum(nonzero(s, 0) for s in steps)
    solver = sum(nonzero(s, 1) for s in steps)
    span = f"{steps[0]['step']}-{steps[-1]['step']}"
    return (
        f"| {span} | {cells} | {learnable} | {proposer}/{n}, {solver}/{n} | {reasons} "
        f"| {answer:.0f} | {seconds:.0f} |"
    )


def main():
    steps = [json.loads(line) for line in open(sys.argv[1])]
    every = int(sys.argv[2]) if len(sys.argv) > 2 else 5
    for i in range(0, len(steps), every):
        print(row(steps[i : i + every]))


if __name__ == "__main__":
    main()
