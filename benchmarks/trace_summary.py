"""Where the time of a jax.profiler trace goes, without TensorBoard: busy time per timeline, then per op.

  shotstream-bench --model=wan-1.3b-random --shots=1 --profile_dir=/tmp/trace
  python benchmarks/trace_summary.py /tmp/trace [--top 20]

Reads the newest `*.trace.json.gz` under the directory (jax.profiler writes one
beside its xplane.pb). For each timeline (a process and thread: a GPU stream,
an "XLA Ops" line, a CPU thread pool) with at least 1% of the busiest one's
time, prints its busy time and its `--top` op names by summed duration, with
numbered names (fusion.12, fusion.13) counted together as one (fusion). Nested
events on one timeline are counted at every level, so shares can pass 100%.
"""
import argparse
import collections
import glob
import gzip
import json
import os
import re
import sys

_NUMBERED = re.compile(r"[._]\d+$")


def summarize(trace: dict, top: int = 20) -> list[tuple[str, float, list[tuple[str, float, int]]]]:
    """[(timeline name, busy microseconds, [(op name, microseconds, count), ...])], busiest first."""
    events = trace["traceEvents"]
    process = {e["pid"]: e["args"]["name"] for e in events
               if e.get("ph") == "M" and e.get("name") == "process_name"}
    thread = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
              if e.get("ph") == "M" and e.get("name") == "thread_name"}
    per_line = collections.defaultdict(lambda: collections.defaultdict(lambda: [0.0, 0]))
    for e in events:
        if e.get("ph") == "X":
            op = per_line[(e["pid"], e.get("tid"))][_NUMBERED.sub("", e["name"])]
            op[0] += e.get("dur", 0.0)
            op[1] += 1
    lines = []
    for key, ops in per_line.items():
        name = f"{process.get(key[0], key[0])} / {thread.get(key, key[1])}"
        ranked = sorted(((n, t, c) for n, (t, c) in ops.items()), key=lambda x: -x[1])
        lines.append((name, sum(t for _, t, _ in ranked), ranked[:top]))
    lines.sort(key=lambda x: -x[1])
    busiest = lines[0][1] if lines else 0.0
    return [line for line in lines if line[1] >= 0.01 * busiest]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace_dir", help="the --profile_dir of a run (or any folder holding a *.trace.json.gz)")
    ap.add_argument("--top", type=int, default=20, help="ops listed per timeline")
    args = ap.parse_args()
    found = glob.glob(os.path.join(args.trace_dir, "**", "*.trace.json.gz"), recursive=True)
    if not found:
        print(f"trace_summary.py: error: no *.trace.json.gz under {args.trace_dir}", file=sys.stderr)
        return 1
    path = max(found, key=os.path.getmtime)
    with gzip.open(path, "rt") as f:
        trace = json.load(f)
    print(f"{path}")
    for name, busy, ops in summarize(trace, args.top):
        print(f"\n{name}: {busy / 1e3:.1f} ms busy")
        for op, t, count in ops:
            print(f"  {100 * t / busy:5.1f}%  {t / 1e3:10.2f} ms  x{count:<6d} {op[:110]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
