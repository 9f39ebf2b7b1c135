#!/usr/bin/env python3
"""The figures scripts/bench-compare.sh collected, side by side.

usage: bench-compare.py DIR RUNS TARGET...

Reads DIR/{before,after}-TARGET-N.txt (the output of `make TARGET`) and
prints one markdown table per target: each figure as printed, one column
per run."""
import os
import re
import sys


def rx(txt, pat, g=1):
    m = re.search(pat, txt, re.S)
    return m.group(g) if m else "-"


def attach(txt, which):
    m = re.search(r"attach latency, 200 endpoints, last step " + which +
                  r".*?event seen by tap -> AddInterface\s+\S+ ms\s+(\S+) ms\s+(\S+) ms", txt, re.S)
    return f"{m.group(1)} / {m.group(2)}" if m else "-"


def churn(txt, kind, pat):
    return rx(txt, r"unrelated events: " + kind + r".*?" + pat)


BENCH = [
    ("ready event -> AddInterface, 200 endpoints, RUNNING last: p50 / p99 ms", lambda t: attach(t, "RUNNING")),
    ("ready event -> AddInterface, 200 endpoints, address last: p50 / p99 ms", lambda t: attach(t, "NEWADDR")),
    ("idle monitor: goroutines", lambda t: rx(t, r"monitor: (\d+) goroutines \(heap")),
    ("idle monitor: heap, stacks (bytes)", lambda t: rx(t, r"monitor: \d+ goroutines \(heap (\S+) B") + ", " + rx(t, r"monitor: \d+ goroutines \(heap \S+ B, stacks (\S+) B")),
    ("idle: context switches/s, no monitor / monitor", lambda t: rx(t, r"context switches/s, all threads \(vol\+invol\)\s+(\S+)") + " / " + rx(t, r"context switches/s, all threads \(vol\+invol\)\s+\S+\s+(\S+)")),
    ("link up/down churn: events applied/s; resyncs", lambda t: churn(t, "link-up-down", r"applied events/s\s+-\s+(\d+)") + "; " + churn(t, "link-up-down", r"during the churn: \d+ sandbox calls, (\d+) resyncs")),
    ("link up/down churn: monitor CPU per applied event", lambda t: churn(t, "link-up-down", r"monitor CPU \S+, (\S+) per applied event")),
    ("address churn: events applied/s; resyncs", lambda t: churn(t, "address-add-delete", r"applied events/s\s+-\s+(\d+)") + "; " + churn(t, "address-add-delete", r"during the churn: \d+ sandbox calls, (\d+) resyncs")),
    ("address churn: monitor CPU per applied event", lambda t: churn(t, "address-add-delete", r"monitor CPU \S+, (\S+) per applied event")),
    ("load, idle per monitor: goroutines, RSS, fds", lambda t: rx(t, r"idle, per monitor: (\S+) goroutines") + ", " + rx(t, r"idle, per monitor: .*?, (\S+ KiB) RSS") + ", " + rx(t, r"idle, per monitor: .*? RSS, (\S+) fds")),
    ("load, idle per monitor: heap+stacks", lambda t: rx(t, r"idle, per monitor: \S+ goroutines, (\S+ KiB) heap\+stacks")),
    ("load, idle CPU per monitor", lambda t: rx(t, r"idle CPU: .*?\((\S+ µs/s) per monitor")),
    ("load, churn CPU per monitor", lambda t: rx(t, r"churn: .*?\((\S+ ms/s) per monitor")),
    ("load, decision, lone monitor: p50 / p99 ms", lambda t: rx(t, r"decision, lone monitor \(RUNNING event -> Add\)\s+\d+\s+(\S+)") + " / " + rx(t, r"decision, lone monitor \(RUNNING event -> Add\)\s+\d+\s+\S+\s+\S+\s+(\S+)")),
    ("load, decision, 200 monitors: p50 / p99 ms", lambda t: rx(t, r"decision, 200 monitors\s+\d+\s+(\S+)") + " / " + rx(t, r"decision, 200 monitors\s+\d+\s+\S+\s+\S+\s+(\S+)")),
    ("load, decision p99, 200 monitors / lone", lambda t: rx(t, r"under load / lone: (\S+)")),
    ("load, kernel (driver's up -> RUNNING event), 200 monitors: p99 ms", lambda t: rx(t, r"kernel, 200 monitors\s+\d+\s+\S+\s+\S+\s+(\S+)")),
]

# bench-guest: (section heading prefix, row label prefix)
GUEST = [
    ("docker network connect", "connect returned -> guest answers on eth1"),
    ("docker network connect", "decision: last netlink event -> AddInterface start"),
    ("docker network connect", "of which ListInterfaces"),
    ("docker network connect", "AddInterface (hot-plug call), total"),
    ("docker network disconnect", "disconnect returned -> NIC gone from the guest"),
    ("docker network disconnect", "decision: last netlink event -> RemoveInterface start"),
    ("first attach, kata-netmon", "Start -> eth0 usable in the guest"),
    ("first attach, kata-netmon", "workload runs without network"),
    ("first attach, kata-netmon", "Start -> AddInterface start (detection)"),
    ("first attach, upstream", "Start -> eth0 usable in the guest"),
]


def guest_tables(txt):
    """{(section, label): "p50 / [p99 /] max"} from the markdown tables."""
    out, section, cols = {}, None, []
    for line in txt.splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
            cols = []
            continue
        if not line.startswith("|") or section is None:
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not cells[0] and cells[1:] and cells[1] == "p50":
            cols = cells[1:]
            continue
        if cells[0] and cols and not set(cells[0]) <= set("-"):
            out[(section, cells[0])] = " / ".join(c.replace(" ms", "") for c in cells[1:1 + len(cols)])
    return out, cols


def main():
    d, runs, targets = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    for target in targets:
        texts = {}
        for side in ("before", "after"):
            for n in range(1, runs + 1):
                p = os.path.join(d, f"{side}-{target}-{n}.txt")
                texts[side, n] = open(p).read() if os.path.exists(p) else ""
        head = [f"{side} {n}" for side in ("before", "after") for n in range(1, runs + 1)]
        print(f"\n### `make {target}`\n")
        if target == "bench-guest":
            parsed = {k: guest_tables(t) for k, t in texts.items()}
            colnames = {k: "/".join(c for c in v[1]) for k, v in parsed.items()}
            print("| figure (ms; columns as printed: " + ", ".join(sorted(set(c for c in colnames.values() if c))) + ") | " + " | ".join(head) + " |")
            print("|---|" + "---|" * len(head))
            for sec, label in GUEST:
                cells = []
                for k in texts:
                    tab = parsed[k][0]
                    v = next((v for (s, l), v in tab.items() if s.startswith(sec) and l.startswith(label)), "-")
                    cells.append(v)
                print(f"| {sec}: {label} | " + " | ".join(cells) + " |")
        else:
            print("| figure | " + " | ".join(head) + " |")
            print("|---|" + "---|" * len(head))
            for name, f in BENCH:
                print(f"| {name} | " + " | ".join(f(texts[k]) if texts[k] else "-" for k in texts) + " |")


if __name__ == "__main__":
    main()
