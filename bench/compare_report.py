#!/usr/bin/env python3
"""The table of bench/compare.sh: medians per cell from OUT/runs.jsonl, ratios ours/etcd.

Usage: compare_report.py OUT DURATION RUNS. Prints the table (ending with the two ratio lines)
and writes OUT/medians.jsonl (one line per system, 100% PUT cell; what `client bench chart`
draws).
"""
import json
import statistics
import sys

out, duration, runs = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(f"{out}/runs.jsonl") if l.strip()]


def key(r):
    return (r["system_key"], r["workload"], r["concurrency"], r["cell_target"])


cells = {}
for r in rows:
    cells.setdefault(key(r), []).append(r)


def med(rs, f):
    return statistics.median(f(r) for r in rs)


def summary(rs):
    ops = med(rs, lambda r: r["ops_per_sec"])
    cpu = med(rs, lambda r: 1e3 * r["server_cpu_s"] / max(r["ops"], 1) * 1e3)
    return {
        "ops_per_sec": ops,
        "p50_ms": med(rs, lambda r: r["p50_ms"]),
        "p99_ms": med(rs, lambda r: r["p99_ms"]),
        # CPU milliseconds per 1,000 commands (= microseconds per command).
        "cpu_ms_per_1k": cpu,
        "errors": sum(r["errors"] for r in rs),
        "runs": len(rs),
    }


med_rows = {k: summary(v) for k, v in cells.items()}


def fmt(s):
    if s is None:
        return "-"
    return f"{s['ops_per_sec']:>8,.0f} ({s['p50_ms']:.2f} / {s['p99_ms']:.2f}) {s['cpu_ms_per_1k']:>6.0f}"


def ratio(a, b, f):
    if a is None or b is None or f(b) == 0:
        return "-"
    return f"{f(a) / f(b):.2f}"


print(f"side by side: {runs} run(s) of {duration} s per cell and system, alternated; medians.")
print("cells: ops/s (p50 / p99 ms) and server CPU ms per 1,000 commands; ratios are ours / etcd")
print()
head = f"| {'workload':<8} | {'c':>4} | {'target':<11} | {'etcd':<36} | {'ours (durable)':<36} | ops  | p50  | p99  | cpu  |"
print(head)
print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
workloads = ["put", "get50"]
concs = sorted({k[2] for k in med_rows})
targets = ["single", "round-robin"]
for w in workloads:
    for c in concs:
        for t in targets:
            e = med_rows.get(("etcd", w, c, t))
            o = med_rows.get(("ours", w, c, t))
            if e is None and o is None:
                continue
            print(
                f"| {w:<8} | {c:>4} | {t:<11} | {fmt(e):<36} | {fmt(o):<36} | "
                f"{ratio(o, e, lambda s: s['ops_per_sec'])} | {ratio(o, e, lambda s: s['p50_ms'])} | "
                f"{ratio(o, e, lambda s: s['p99_ms'])} | {ratio(o, e, lambda s: s['cpu_ms_per_1k'])} |"
            )
print()
print("our ceilings, 100% PUT:")
for name, sys_key, t in [("1 replica, single", "one", "single"), ("3 replicas --sync none, round-robin", "nosync", "round-robin")]:
    for c in concs:
        s = med_rows.get((sys_key, "put", c, t))
        if s is not None:
            print(f"  {name:<36} c{c:<4} {fmt(s)}")
errors = sum(s["errors"] for s in med_rows.values())
print(f"errors over all runs: {errors}")

with open(f"{out}/medians.jsonl", "w") as f:
    for sys_key, label in [("etcd", "etcd"), ("ours", "ours")]:
        for t in targets:
            for c in concs:
                s = med_rows.get((sys_key, "put", c, t))
                if s is not None:
                    f.write(json.dumps(dict(s, label=f"{label} {t}", concurrency=c)) + "\n")

def final(c, f):
    o = med_rows.get(("ours", "put", c, "round-robin"))
    e = med_rows.get(("etcd", "put", c, "round-robin"))
    return ratio(o, e, f)

print()
print(f"ratio put c128 rr: {final(128, lambda s: s['ops_per_sec'])}")
print(f"ratio p50 c1 rr: {final(1, lambda s: s['p50_ms'])}")
