#!/usr/bin/env python3
"""CPU and system calls per transaction of two timebox binaries, interleaved (issue 13).

TPS means nothing on a machine others are building on; the proxy's own CPU time per transaction
(user + sys from /proc/<pid>/stat across a pgbench run) and its system calls per transaction (perf
stat on the syscall tracepoints) hold under load. This starts one PostgreSQL (timebox demo-cluster),
one timebox per binary given (bench.py's config: audit `write` by default, JSONL export on) and runs
pgbench -S against them in turns, ROUNDS times, printing medians. Any build flavour works (compare
like with like). Uses bench.py's machinery; run as root or as a user that can run PostgreSQL.

    python3 benches/e2e/cpu_per_tx.py --workdir "$(mktemp -d)" A=path/to/timebox B=other/timebox \\
        [--clients 8] [--mode simple] [--duration 4] [--rounds 3] [--durability write]
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench  # noqa: E402

SYSCALLS = ["sendto", "recvfrom", "write", "pwrite64", "futex", "epoll_wait", "fdatasync"]


class PerTx(bench.Bench):
    """bench.Bench with one timebox instance per named binary."""

    def start_named(self, name, binary, durability):
        bench.TIMEBOX_INSTANCES[name] = (durability, {})
        self.timebox_bin = binary
        self.start_timebox(name)
        self.targets[name]["bin"] = binary

    def spawn_timebox(self, name):
        self.timebox_bin = self.targets[name].get("bin", self.timebox_bin)
        super().spawn_timebox(name)

    def one(self, name, mode, clients, duration):
        pid = self.pids[self.targets[name]["pid"]]
        out_csv = os.path.join(self.work, "perfstat-%s.csv" % name)
        perf = None
        if shutil.which("perf"):
            events = ",".join("syscalls:sys_enter_%s" % c for c in SYSCALLS)
            perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out_csv, "-e", events, "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.3)
        try:
            r = self.pgbench(name, mode, clients, duration, tag="pertx")
        finally:
            if perf:
                perf.send_signal(signal.SIGINT)
                perf.wait(30)
        counts = {}
        if perf and os.path.exists(out_csv):
            with open(out_csv) as f:
                for line in f:
                    parts = line.strip().split(",")
                    if len(parts) >= 3 and parts[2].startswith("syscalls:sys_enter_"):
                        try:
                            counts[parts[2][len("syscalls:sys_enter_"):]] = int(parts[0]) / r["txns"]
                        except ValueError:
                            pass
        return r, counts


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("binaries", nargs="+", metavar="NAME=PATH")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--mode", default="simple", choices=bench.MODES)
    p.add_argument("--duration", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--durability", default="write", choices=["write", "fsync", "async"])
    p.add_argument("--scale", type=int, default=1)
    args = p.parse_args()
    # What bench.Bench reads from its own arguments.
    bargs = argparse.Namespace(workdir=args.workdir, timebox=args.binaries[0].split("=", 1)[1], quick=True,
                               duration=args.duration, reps=1, connect_duration=1, idle_sessions=10,
                               scale=args.scale, max_wal_mib=1024, perf=False, soak=None, soak_simple=0,
                               out=os.path.join(args.workdir, "out"))
    b = PerTx(bargs)
    signal.signal(signal.SIGTERM, bench.on_signal)
    try:
        b.start_postgres()
        names = []
        for spec in args.binaries:
            name, path = spec.split("=", 1)
            name = "timebox-" + name
            b.start_named(name, os.path.abspath(path), args.durability)
            names.append(name)
        results = {n: [] for n in names}
        for rnd in range(args.rounds):
            order = names if rnd % 2 == 0 else list(reversed(names))
            for n in order:
                r, counts = b.one(n, args.mode, args.clients, args.duration)
                results[n].append((r, counts))
                bench.log("%s round %d: %.0f tps, %.1f µs CPU/tx, %s" % (
                    n, rnd + 1, r["tps"], r["cpu_us_per_txn"] or 0,
                    " ".join("%s %.2f" % (c, v) for c, v in sorted(counts.items()))))
        print("\npgbench -S -M %s -c %d, %d s x %d rounds (medians), audit %s + JSONL" % (
            args.mode, args.clients, args.duration, args.rounds, args.durability))
        print("%-16s %8s %9s " % ("instance", "tps", "CPU µs/tx") + " ".join("%9s" % c for c in SYSCALLS))
        for n in names:
            rs = results[n]
            med = lambda f: statistics.median([f(x) for x in rs])  # noqa: E731
            print("%-16s %8.0f %9.1f " % (n, med(lambda x: x[0]["tps"]), med(lambda x: x[0]["cpu_us_per_txn"] or 0))
                  + " ".join("%9.2f" % med(lambda x, c=c: x[1].get(c, 0.0)) for c in SYSCALLS))
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
