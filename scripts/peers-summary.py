"""Summarises compare-peers' JSON lines: medians per server and ratios to floodgate."""
import json
import statistics
import sys

rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
servers = []
for r in rows:
    if r["server"] not in servers:
        servers.append(r["server"])


def med(vals):
    return statistics.median(vals) if vals else float("nan")


def rates(s):
    return [r["report"]["events_per_sec"] for r in rows if r["server"] == s and r["report"] and r["exit"] == 0]


base = med(rates("floodgate"))
print("| server | runs ok | events/s, median (min to max) | vs floodgate | p50 latency | p99 latency | errors |")
print("| --- | --- | --- | --- | --- | --- | --- |")
for s in servers:
    reps = [r for r in rows if r["server"] == s]
    ok = [r["report"] for r in reps if r["report"] and r["exit"] == 0]
    rs = rates(s)
    if not rs:
        codes = ", ".join(str(r["exit"]) for r in reps)
        print(f"| {s} | 0 of {len(reps)} | failed (exit {codes}) | | | | |")
        continue
    p50 = med([x["latency_us"]["p50"] for x in ok if x["latency_us"]])
    p99 = med([x["latency_us"]["p99"] for x in ok if x["latency_us"]])
    errs = sum(r["report"]["errors_total"] for r in reps if r["report"])
    ms = lambda v: f"{v / 1000:,.1f} ms" if v >= 1000 else f"{v:,.0f} us"
    print(
        f"| {s} | {len(ok)} of {len(reps)} | {med(rs):,.0f} ({min(rs):,.0f} to {max(rs):,.0f}) | "
        f"{med(rs) / base:.3f} | {ms(p50)} | {ms(p99)} | {errs} |"
    )
print()
print("`blast` writes pre-encoded frames and does nothing else: its row is the measuring client's own")
print("ceiling on this machine. A server whose rate approaches it is limited by the client, not itself.")
print("Latency counts from each event's production time at the server, so it includes the time an event")
print("waits in the server's queues behind the ones produced before it (the producers run flat out).")
