"""Summarises perf-record's JSON lines as a markdown table (median, min, max per config)."""
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
configs = []
for r in rows:
    if r["config"] not in configs:
        configs.append(r["config"])


def fmt(vals, scale=1.0, digits=0):
    vals = [v * scale for v in vals]
    med = statistics.median(vals)
    return f"{med:,.{digits}f} ({min(vals):,.{digits}f} to {max(vals):,.{digits}f})"


chaos = any(r["report"] and r["report"].get("resumes") for r in rows)
redis = any(r["report"] and r["report"].get("engine") == "redis" for r in rows)
extra = " resumes / replayed (from spool) / gaps / redelivered |" if chaos else ""
if redis:
    extra += " events per Redis round trip | Redis CPU s per million events |"
print("| flags | runs | events/s | vs first row | frames/write | p50 us | p99 us | p99.9 us | generator lag p99 us | lost | misrouted | CPU s: reactor / producers / clients |" + extra)
print("| --- " * (12 + chaos + 2 * redis) + "|")
first = None
for c in configs:
    reps = [r["report"] for r in rows if r["config"] == c and r["report"]]
    if not reps:
        print(f"| `{c}` | 0 | failed |" + " |" * (9 + chaos + 2 * redis))
        continue
    lat = lambda k: [x["latency_us"][k] for x in reps]
    lag = lambda reps: (
        fmt([x["schedule_lag_us"]["p99"] for x in reps])
        if all(x.get("schedule_lag_us") for x in reps)
        else "-"
    )
    rate = statistics.median([x["events_per_sec"] for x in reps])
    first = first or rate
    cpu = " / ".join(
        f"{statistics.median([x[k] for x in reps]):.2f}"
        for k in ("reactor_cpu_seconds", "producer_cpu_seconds", "client_cpu_seconds")
    )
    print(
        f"| `{c}` | {len(reps)} | {fmt([x['events_per_sec'] for x in reps])} | {rate / first:.2f} "
        f"| {fmt([x['frames_per_write'] for x in reps], digits=1)} | {fmt(lat('p50'))} | {fmt(lat('p99'))} "
        f"| {fmt(lat('p999'))} | {lag(reps)} | {sum(x['lost'] for x in reps)} | {sum(x['misrouted'] for x in reps)} | {cpu} |"
        + (
            f" {sum(x.get('resumes', 0) for x in reps)} / {sum(x.get('replayed', 0) for x in reps)}"
            f" ({sum(x.get('replayed_from_spool', 0) for x in reps)}) / {sum(x.get('gaps', 0) for x in reps)}"
            f" / {sum(x.get('redelivered', 0) for x in reps)} |"
            if chaos
            else ""
        )
        + (
            f" {fmt([x.get('events_per_round_trip', 0) for x in reps])}"
            f" | {fmt([x.get('redis_cpu_seconds_per_million_events', 0) for x in reps], digits=2)} |"
            if redis
            else ""
        )
    )
print()
print("Values: median (min to max) over the runs; lost and misrouted are totals over all runs.")
print("`vs first row`: this row's median events/s over the first row's, from the same interleaved runs.")
print("Generator lag: how late the open-loop generator sent events against its schedule; it is")
print("included in the latency, which counts from the schedule (`-` without `--rate`).")
if chaos:
    print("Resumes, replayed and gaps are totals over all runs.")
