"""How many of a run's format rejections (self-play steps, not the cold start) hold the blocks a
proposal needs somewhere in the completion, i.e. how many a looser frame would have let through
to the sandbox.

    python3 benches/format_rejections.py runs/NAME/buffer.sqlite
"""
import collections
import re
import sqlite3
import sys


def block(text, kind):
    # A fenced block of `kind`; the completion's end may close the last one.
    return re.search(r"```" + kind + r"\s*\n(.*?)(```|$)", text, re.S | re.I)


def main(path):
    rows = sqlite3.connect(path).execute(
        "select task_type, detail, completion from rejections where step > 0 and kind = 'format'"
    ).fetchall()
    counts = collections.Counter()
    for task_type, detail, completion in rows:
        needed = ("input", "message") if task_type == "induction" else ("python", "input")
        counts[(detail, all(block(completion, k) for k in needed))] += 1
    print(f"format rejections: {len(rows)}, with the needed blocks somewhere: "
          f"{sum(n for (_, has), n in counts.items() if has)}")
    for (detail, has), n in sorted(counts.items()):
        print(f"{n:4} {'has blocks' if has else 'no blocks '} {detail}")


if __name__ == "__main__":
    main(sys.argv[1])
