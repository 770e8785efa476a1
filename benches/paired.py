#!/usr/bin/env python3
"""Paired comparison of two `azr eval` runs on the same problems (greedy, n = 1): accuracy of
each, their difference, the exact McNemar test on the discordant problems, and a paired
bootstrap 95% interval of the difference.

    python3 benches/paired.py BASE.results.jsonl NEW.results.jsonl

Only problems in both files count. Standard library only.
"""
import json
import math
import random
import sys


def verdicts(path):
    """task_id -> passed (the first result per task: n = 1)."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                out.setdefault(str(row["task_id"]), row.get("passed", row.get("result") == "passed"))
    return out


def mcnemar_exact(b, c):
    """Two-sided exact p-value: under H0 the b + c discordant problems split 1/2 : 1/2."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def main():
    base, new = verdicts(sys.argv[1]), verdicts(sys.argv[2])
    ids = sorted(set(base) & set(new))
    pairs = [(bool(base[i]), bool(new[i])) for i in ids]
    n = len(pairs)
    b = sum(1 for x, y in pairs if x and not y)  # base right, new wrong
    c = sum(1 for x, y in pairs if y and not x)  # new right, base wrong
    acc_base = sum(x for x, _ in pairs) / n
    acc_new = sum(y for _, y in pairs) / n
    rng = random.Random(0)
    diffs = []
    for _ in range(10000):
        sample = [pairs[rng.randrange(n)] for _ in range(n)]
        diffs.append(sum(y - x for x, y in sample) / n)
    diffs.sort()
    low, high = diffs[249], diffs[9749]
    print(json.dumps({
        "problems": n,
        "base": round(acc_base, 4),
        "new": round(acc_new, 4),
        "difference": round(acc_new - acc_base, 4),
        "base_only": b,
        "new_only": c,
        "mcnemar_p": round(mcnemar_exact(b, c), 4),
        "bootstrap_95": [round(low, 4), round(high, 4)],
    }))


main()
