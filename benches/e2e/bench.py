#!/usr/bin/env python3
"""End-to-end benchmark: pgbench against PostgreSQL directly, through PgBouncer (session mode) and
through timebox (policy and audit on), on one machine. Run it through `scripts/bench.sh`, which
installs what is missing, builds timebox (with the benchmark-only `bench-knobs` feature), makes the
work directory and cleans up behind us.

What it does, in order:
  1. a throwaway PostgreSQL cluster started by timebox's own launcher (`timebox demo-cluster`, the
     code the tests use; as the `postgres` user when we are root), a login role `bench` owning
     database `bench`, `pgbench -i -s <scale>`;
  2. PgBouncer in session mode on a free port, authenticating clients with SCRAM-SHA-256 against a
     userlist holding bench's SCRAM secret (so it logs in upstream with SCRAM pass-through);
  3. five timebox instances: three identical but for `audit.durability` (write, fsync, async), and
     two with durability=write and one feature switched off by the config's `[bench]` table
     (`timebox-nopolicy`: skip_policy; `timebox-noaudit`: skip_audit); TLS to clients disabled,
     each with a grant for user `bench` on target `bench` (role `rw`: read+write) issued through
     the admin API (`POST /v1/grants`);
  4. memory per idle session: N logged-in sessions that each ran `SELECT 1`, RSS delta / N, for
     timebox (durability=write) and PgBouncer;
  5. `pgbench -n -S` in simple / extended / prepared mode at 1, 8 and 32 clients against direct,
     PgBouncer and timebox(write), plus timebox(fsync), timebox(async), timebox(nopolicy) and
     timebox(noaudit) at 8 and 32 clients in simple and prepared mode; the targets of one (mode,
     clients) cell run back to back (interleaved), the matrix repeated (the cells no target names,
     extended mode and prepared at 1 client, a third as often); medians reported;
  6. connection setup rate: `pgbench -C` (a new connection per transaction);
  7. with --perf: a perf profile of timebox(write) and system calls per transaction;
  8. one table on stdout, raw runs in <out>/runs.csv, the table in <out>/table.txt, the servers'
     logs in <out>/logs/.

With --soak MINUTES it does only this instead (steps 1 and 3, timebox(write) only): pgbench -S
-M prepared with 32 clients (plus, with --soak-simple N, a simple-mode pgbench with N clients at
the same time) for MINUTES without a break, sampling every 10 s TPS (`pgbench -P 10`), timebox's
RSS and CPU, and the audit files' size on disk; then a table and a verdict in <out>/soak.txt and
the samples in <out>/soak.csv.

Standard library only. Every process it starts is stopped in `finally` (and on SIGTERM); the
pids are also written to <workdir>/pids so that bench.sh's trap can stop them if we die hard.
"""

import argparse
import csv
import glob
import hashlib
import json
import os
import platform
import pwd
import re
import resource
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pgclient  # noqa: E402  (sibling module)

REPO = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
CLK_TCK = os.sysconf("SC_CLK_TCK")
NPROC = os.cpu_count() or 1
HOST = "127.0.0.1"
DB = "bench"  # upstream database, PgBouncer database and timebox target: all the same name
USER = "bench"  # upstream login role; also the grant's user name
ROLE = "rw"  # the timebox role of the grant
MODES = ["simple", "extended", "prepared"]
CLIENTS = [1, 8, 32]
VARIANT_MODES = ["simple", "prepared"]  # the modes the targets name
VARIANT_CLIENTS = [8, 32]
# timebox instances: name -> (audit.durability, the config's [bench] knobs). The knobs need a build
# with `--features bench-knobs` (scripts/bench.sh builds one); they exist to show what policy
# enforcement and statement auditing cost, and no other build accepts them.
TIMEBOX_INSTANCES = {
    "timebox-write": ("write", {}),
    "timebox-fsync": ("fsync", {}),
    "timebox-async": ("async", {}),
    "timebox-nopolicy": ("write", {"skip_policy": True}),
    "timebox-noaudit": ("write", {"skip_audit": True}),
}
VARIANTS = ["timebox-fsync", "timebox-async", "timebox-nopolicy", "timebox-noaudit"]
SOAK_INTERVAL = 10  # seconds between soak samples (pgbench -P)
SAMPLING_RATE = 0.1  # share of transactions pgbench logs (-l --sampling-rate) for p99


class Interrupted(Exception):
    pass


def on_signal(signum, _frame):
    raise Interrupted("signal %d" % signum)


def log(msg):
    print("[bench %s] %s" % (time.strftime("%H:%M:%S"), msg), flush=True)


def free_port():
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def wait_port(port, what, timeout=30.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("%s exited (status %s) before listening" % (what, proc.returncode))
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("%s did not listen on %s:%d within %.0f s" % (what, HOST, port, timeout))


def loadavg():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_ticks(pid):
    """utime + stime of a process, in clock ticks (all its threads, exited ones included)."""
    with open("/proc/%d/stat" % pid) as f:
        rest = f.read().rsplit(")", 1)[1].split()
    return int(rest[11]) + int(rest[12])


def status_kib(pid, field):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError("no %s in /proc/%d/status" % (field, pid))


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def percentile(sorted_xs, p):
    if not sorted_xs:
        return None
    k = min(len(sorted_xs) - 1, max(0, int(round(p / 100.0 * len(sorted_xs) + 0.5)) - 1))
    return sorted_xs[k]


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = os.path.abspath(args.workdir)
        self.timebox_bin = os.path.abspath(args.timebox)
        self.root = os.geteuid() == 0
        self.pg_user = pwd.getpwnam("postgres") if self.root else None
        self.runas = self._runas()
        self.pg_bin = None  # the cluster's bin directory, as `timebox demo-cluster` reports it
        self.pgbouncer_bin = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"
        if not os.access(self.pgbouncer_bin, os.X_OK):
            raise RuntimeError("pgbouncer not found (apt-get install pgbouncer)")
        # The poolers timebox is compared with: PgBouncer always, PgCat when its binary is given.
        self.peers = ["pgbouncer"] + (["pgcat"] if getattr(args, "pgcat", None) else [])
        self.pgcat_version = None
        self.children = []  # (name, Popen) in start order
        self.pids = {}  # name -> real pid (for CPU/RSS and for bench.sh's trap)
        self.pg = None  # the `timebox demo-cluster` process that owns the upstream cluster
        self.pg_info = None  # the JSON line it printed: host, port, password, bin_dir, log_path, …
        self.password = secrets.token_hex(16)
        self.targets = {}  # name -> dict(port, password, pid_name)
        self.runs = []
        self.idle = {}
        self.conn_rate = []
        self.profiles = []

    # ---------------------------------------------------------------- environment
    def _runas(self):
        if not self.root:
            return []
        runuser = shutil.which("runuser") or "/usr/sbin/runuser"
        if os.access(runuser, os.X_OK):
            return [runuser, "-u", "postgres", "--"]
        raise RuntimeError("running as root but runuser is missing (util-linux)")

    def _find_tool(self, name):
        own = os.path.join(self.pg_bin, name)
        if os.access(own, os.X_OK):
            return own
        found = shutil.which(name)
        if not found:
            raise RuntimeError("%s not found" % name)
        return found

    def give(self, path):
        if self.pg_user:
            os.chown(path, self.pg_user.pw_uid, self.pg_user.pw_gid)

    def mkdir(self, name, for_postgres=False):
        path = os.path.join(self.work, name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        if for_postgres:
            self.give(path)
        return path

    def write(self, path, text, for_postgres=False):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if for_postgres:
            self.give(path)

    def record_pid(self, name, pid):
        self.pids[name] = pid
        with open(os.path.join(self.work, "pids"), "a") as f:
            f.write("%d %s\n" % (pid, name))

    def client_env(self, password):
        env = dict(os.environ)
        for var in ["PGSERVICE", "PGPASSFILE", "PGOPTIONS", "PGHOST", "PGPORT", "PGUSER", "PGDATABASE"]:
            env.pop(var, None)
        env.update(PGPASSWORD=password, PGSSLMODE="disable", PGGSSENCMODE="disable", PGCONNECT_TIMEOUT="10")
        return env

    def psql_su(self, sql, db="postgres"):
        out = subprocess.run(
            [self.psql, "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", HOST, "-p", str(self.pg_port),
             "-U", "postgres", "-d", db, "-c", sql],
            env=self.client_env(self.su_password), check=True, capture_output=True, text=True)
        return out.stdout.strip()

    # ---------------------------------------------------------------- PostgreSQL
    def start_postgres(self):
        """The upstream cluster, started by timebox's own launcher (src/demo/cluster/, through the
        hidden `timebox demo-cluster` command): initdb, the config below on top of its defaults,
        pg_ctl start on a free port, as the `postgres` user when we are root. It prints one JSON line
        and keeps the cluster until its stdin is closed (or it dies: its guardian stops the cluster)."""
        settings = [
            # The launcher's defaults favour quick tests (fsync off); measure a normal server.
            "fsync=on", "synchronous_commit=on", "full_page_writes=on",
            "max_connections=%d" % (self.args.idle_sessions + 150),
            "shared_buffers=256MB", "max_wal_size=2GB",
        ]
        argv = [self.timebox_bin, "demo-cluster"]
        for setting in settings:
            argv += ["--setting", setting]
        pgdir = self.mkdir("pg")
        self.pg = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=pgdir,
                                   stderr=open(os.path.join(pgdir, "demo-cluster.log"), "w"))
        self.record_pid("timebox-demo-cluster", self.pg.pid)
        line = self.pg.stdout.readline()
        if not line:
            self.pg.wait()
            with open(os.path.join(pgdir, "demo-cluster.log")) as f:
                raise RuntimeError("timebox demo-cluster failed: %s" % f.read().strip())
        self.pg_info = json.loads(line)
        self.pg_port = self.pg_info["port"]
        self.su_password = self.pg_info["password"]
        self.pg_bin = self.pg_info["bin_dir"]
        self.pgbench_bin = self._find_tool("pgbench")
        self.psql = self._find_tool("psql")
        self.pg_version = self.psql_su("SHOW server_version")
        self.psql_su("CREATE ROLE %s LOGIN PASSWORD '%s'" % (USER, self.password))
        self.psql_su("CREATE DATABASE %s OWNER %s" % (DB, USER))
        log("PostgreSQL %s on %s:%d; pgbench -i -s %d …" % (self.pg_version, HOST, self.pg_port, self.args.scale))
        t0 = time.monotonic()
        subprocess.run(
            [self.pgbench_bin, "-i", "-q", "-s", str(self.args.scale), "-h", HOST, "-p", str(self.pg_port), "-U", USER, DB],
            env=self.client_env(self.password), check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        log("pgbench data ready in %.1f s" % (time.monotonic() - t0))
        self.targets["direct"] = dict(port=self.pg_port, password=self.password, pid=None)

    def stop_postgres(self):
        """Keep the server log with the results, then close the launcher's stdin: it stops and deletes
        the cluster and exits."""
        if self.pg is None:
            return
        if self.pg_info:
            try:
                shutil.copyfile(self.pg_info["log_path"], os.path.join(self.work, "pg", "server.log"))
            except OSError:
                pass
        try:
            self.pg.stdin.close()
            self.pg.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.pg.terminate()
            self.pg.wait()
        self.pg = None

    def wait_backends(self, at_most, timeout=30.0):
        """Wait until no more than `at_most` sessions of USER are left on the server."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            n = int(self.psql_su("SELECT count(*) FROM pg_stat_activity WHERE usename = '%s'" % USER))
            if n <= at_most:
                return
            time.sleep(0.2)
        log("warning: %d %s sessions still open upstream" % (n, USER))

    # ---------------------------------------------------------------- PgBouncer
    def start_pgbouncer(self):
        d = self.mkdir("pgbouncer", for_postgres=True)
        if not hasattr(self, "pgb_port"):
            self.pgb_port = free_port()
            secret = self.psql_su("SELECT rolpassword FROM pg_authid WHERE rolname = '%s'" % USER)
            self.write(os.path.join(d, "userlist.txt"), '"%s" "%s"\n' % (USER, secret), for_postgres=True)
            self.write(os.path.join(d, "pgbouncer.ini"), (
                "[databases]\n"
                "%(db)s = host=%(host)s port=%(pg_port)d dbname=%(db)s\n\n"
                "[pgbouncer]\n"
                "listen_addr = %(host)s\n"
                "listen_port = %(port)d\n"
                "unix_socket_dir =\n"
                "auth_type = scram-sha-256\n"
                "auth_file = %(dir)s/userlist.txt\n"
                "pool_mode = session\n"
                "max_client_conn = %(max_client)d\n"
                "default_pool_size = %(pool)d\n"
                "pidfile = %(dir)s/pgbouncer.pid\n"
                "logfile = %(dir)s/pgbouncer.log\n"
            ) % dict(db=DB, host=HOST, pg_port=self.pg_port, port=self.pgb_port, dir=d,
                     max_client=self.args.idle_sessions + 1000, pool=self.args.idle_sessions + 100),
                for_postgres=True)
            version = subprocess.run([self.pgbouncer_bin, "--version"], capture_output=True, text=True).stdout
            self.pgb_version = version.splitlines()[0] if version else "?"
        pidfile = os.path.join(d, "pgbouncer.pid")
        # runuser's PAM session resets the soft open-files limit (often to 1024): raise it again.
        fds = 2 * self.args.idle_sessions + 1000
        argv = ["sh", "-c", 'ulimit -n %d 2>/dev/null || ulimit -n "$(ulimit -Hn)"; exec "$0" "$@"' % fds,
                self.pgbouncer_bin, os.path.join(d, "pgbouncer.ini")]
        proc = subprocess.Popen(self.runas + argv,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=d)
        self.children.append(("pgbouncer", proc))
        wait_port(self.pgb_port, "PgBouncer", proc=proc)
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile) and time.monotonic() < deadline:
            time.sleep(0.05)
        with open(pidfile) as f:
            self.record_pid("pgbouncer", int(f.read().strip()))
        self.targets["pgbouncer"] = dict(port=self.pgb_port, password=self.password, pid="pgbouncer")

    def start_pgcat(self):
        """PgCat (session mode, md5 from the clients as PgCat supports, SCRAM to the server), when
        --pgcat (PGCAT_BIN in scripts/bench.sh) names its binary."""
        d = self.mkdir("pgcat")
        if not hasattr(self, "pgcat_port"):
            self.pgcat_port = free_port()
            pool = self.args.idle_sessions + 100
            self.write(os.path.join(d, "pgcat.toml"), (
                "[general]\n"
                "host = \"%(host)s\"\n"
                "port = %(port)d\n"
                "admin_username = \"pgcat\"\n"
                "admin_password = \"%(admin)s\"\n"
                "worker_threads = %(threads)d\n"
                "\n"
                "[pools.%(db)s]\n"
                "pool_mode = \"session\"\n\n"
                "[pools.%(db)s.users.0]\n"
                "username = \"%(user)s\"\n"
                "password = \"%(password)s\"\n"
                "pool_size = %(pool)d\n"
                "pool_mode = \"session\"\n\n"
                "[pools.%(db)s.shards.0]\n"
                "servers = [[\"%(host)s\", %(pg_port)d, \"primary\"]]\n"
                "database = \"%(db)s\"\n"
            ) % dict(host=HOST, port=self.pgcat_port, admin=secrets.token_hex(8), threads=NPROC, db=DB,
                     user=USER, password=self.password, pool=pool, pg_port=self.pg_port))
            version = subprocess.run([self.args.pgcat, "--version"], capture_output=True, text=True).stdout
            self.pgcat_version = (version.splitlines()[0] if version else "PgCat ?").strip()
        env = dict(os.environ, RUST_LOG="warn")
        with open(os.path.join(d, "pgcat.log"), "a") as logf:
            proc = subprocess.Popen([self.args.pgcat, "--log-level", "warn", "--no-color",
                                     os.path.join(d, "pgcat.toml")],
                                    stdout=logf, stderr=subprocess.STDOUT, env=env, cwd=d)
        self.children.append(("pgcat", proc))
        self.record_pid("pgcat", proc.pid)
        wait_port(self.pgcat_port, "PgCat", proc=proc)
        self.targets["pgcat"] = dict(port=self.pgcat_port, password=self.password, pid="pgcat")

    def restart_peer(self, name):
        """Stop a pooler and start it again (it keeps server connections pooled)."""
        self.stop_child(name)
        self.wait_backends(0)
        (self.start_pgbouncer if name == "pgbouncer" else self.start_pgcat)()

    def stop_child(self, name, timeout=15.0):
        for i, (n, proc) in enumerate(self.children):
            if n != name:
                continue
            pid = self.pids.get(name, proc.pid)
            if proc.poll() is None:
                try:
                    os.kill(pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    os.kill(pid, signal.SIGKILL)
                    proc.wait(5)
            del self.children[i]
            self.pids.pop(name, None)
            return

    # ---------------------------------------------------------------- timebox
    def start_timebox(self, name):
        durability, knobs = TIMEBOX_INSTANCES[name]
        d = self.mkdir("tb-" + name[len("timebox-"):])
        port, admin_port = free_port(), free_port()
        admin_token = "tbxa_" + secrets.token_hex(16)
        config = os.path.join(d, "timebox.toml")
        bench_toml = ("\n# benchmark-only switches (a --features bench-knobs build)\n[bench]\n" +
                      "".join("%s = %s\n" % (k, "true" if v else "false") for k, v in sorted(knobs.items()))
                      if knobs else "")
        self.write(config, """\
# timebox e2e benchmark instance {name} (durability = {durability}); written by benches/e2e/bench.py
[proxy]
listen = "{host}:{port}"
tls = "disabled"
max_connections = {max_conn}
shutdown_grace = "2s"

[admin]
listen = "{host}:{admin_port}"

[[admin.tokens]]
name = "bench"
sha256 = "{sha}"
roles = ["admin"]

[store]
url = "sqlite://{d}/timebox.db"

[audit]
durability = "{durability}"
jsonl = "{d}/audit.jsonl"

[targets.{db}]
host = "{host}"
port = {pg_port}
database = "{db}"
tls = "disable"

[targets.{db}.credentials.{role}]
user = "{user}"
password = "{password}"

[roles.{role}]
allow = ["read", "write"]
max_ttl = "8h"
{bench}""".format(name=name, durability=durability, host=HOST, port=port, admin_port=admin_port,
           sha=hashlib.sha256(admin_token.encode()).hexdigest(), d=d, db=DB, pg_port=self.pg_port,
           role=ROLE, user=USER, password=self.password, max_conn=self.args.idle_sessions + 1000,
           bench=bench_toml))
        if knobs:
            # A build without the feature refuses the [bench] table: say so plainly, before starting.
            out = subprocess.run([self.timebox_bin, "check-config", "--config", config], capture_output=True,
                                 text=True)
            if out.returncode != 0:
                raise RuntimeError("%s needs a timebox built with --features bench-knobs (scripts/bench.sh "
                                   "without --no-build does that); check-config says:\n%s" % (
                                       name, (out.stderr or out.stdout).strip()))
        self.targets[name] = dict(port=port, admin_port=admin_port, password=None, pid=name, dir=d, config=config,
                                  restarts=0, txns=0)
        self.spawn_timebox(name)
        body = json.dumps(dict(user=USER, target=DB, role=ROLE, ttl="4h", reason="e2e benchmark")).encode()
        req = urllib.request.Request("http://%s:%d/v1/grants" % (HOST, admin_port), data=body, method="POST",
                                     headers={"Authorization": "Bearer " + admin_token,
                                              "Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                token = json.load(resp)["token"]
        except urllib.error.HTTPError as e:
            raise RuntimeError("POST /v1/grants on %s: %s %s" % (name, e.code, e.read()[:500]))
        self.targets[name]["password"] = token
        log("%s on %s:%d (admin %d), grant issued" % (name, HOST, port, admin_port))

    def spawn_timebox(self, name):
        t = self.targets[name]
        env = dict(os.environ, RUST_LOG="info")  # the shipped default level
        with open(os.path.join(t["dir"], "timebox.log"), "a") as logf:
            proc = subprocess.Popen([self.timebox_bin, "serve", "--config", t["config"]], stdout=logf,
                                    stderr=subprocess.STDOUT, env=env, cwd=t["dir"])
        self.children.append((name, proc))
        self.record_pid(name, proc.pid)
        try:
            wait_port(t["admin_port"], name + " admin API", proc=proc)
            wait_port(t["port"], name + " proxy", proc=proc)
        except RuntimeError as e:
            with open(os.path.join(t["dir"], "timebox.log"), errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError("%s; its log ends with:\n%s" % (e, tail))

    def audit_disk_bytes(self, name):
        """Disk space (allocated blocks) of every audit file of an instance (audit.db, -wal, -shm, …)."""
        total = 0
        for path in glob.glob(os.path.join(self.targets[name]["dir"], "audit*")):
            try:
                total += os.stat(path).st_blocks * 512
            except OSError:
                pass
        return total

    def audit_bytes(self, name):
        d = self.targets[name]["dir"]
        sizes = {}
        for f in ["audit.db", "audit.db-wal"]:
            try:
                sizes[f] = os.path.getsize(os.path.join(d, f))
            except OSError:
                sizes[f] = 0
        return sizes

    def maybe_restart(self, name):
        """The audit WAL grows without bound under sustained load (passive checkpoints never get to
        reset it); restart an instance whose WAL passed the limit, which empties it (the grant, in
        the instance's store, stays valid). Counted and reported."""
        wal = self.audit_bytes(name)["audit.db-wal"]
        if wal < self.args.max_wal_mib * 1024 * 1024:
            return
        log("%s: audit WAL is %d MiB, restarting the instance to empty it" % (name, wal >> 20))
        self.stop_child(name, timeout=120)
        self.spawn_timebox(name)
        self.targets[name]["restarts"] += 1

    # ---------------------------------------------------------------- measurements
    def idle_memory(self, target):
        t = self.targets[target]
        pid = self.pids[t["pid"]]
        n = self.args.idle_sessions
        # Warm up: a few sessions first, so one-time allocations are not charged to the sessions.
        warm = [pgclient.connect(HOST, t["port"], USER, DB, t["password"]) for _ in range(8)]
        for s in warm:
            pgclient.close(s)
        time.sleep(1.0)
        rss0, anon0 = status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon")
        t0 = time.monotonic()
        socks = []
        try:
            for _ in range(n):
                socks.append(pgclient.connect(HOST, t["port"], USER, DB, t["password"]))
            elapsed = time.monotonic() - t0
            time.sleep(1.0)
            rss1, anon1 = status_kib(pid, "VmRSS"), status_kib(pid, "RssAnon")
        finally:
            for s in socks:
                pgclient.close(s)
        res = dict(target=target, sessions=n, rss_before_kib=rss0, rss_after_kib=rss1,
                   kib_per_session=(rss1 - rss0) / n, anon_kib_per_session=(anon1 - anon0) / n,
                   logins_per_s=n / elapsed)
        self.idle[target] = res
        log("idle sessions via %s: %d sessions, RSS %d → %d KiB, %.1f KiB/session (anon %.1f), %.0f logins/s" % (
            target, n, rss0, rss1, res["kib_per_session"], res["anon_kib_per_session"], res["logins_per_s"]))

    def pgbench(self, target, mode, clients, duration, connect_each=False, tag="tps", transactions=None):
        """One pgbench run of `duration` seconds (or of `transactions` per client, if given)."""
        t = self.targets[target]
        jobs = min(clients, NPROC)
        logdir = self.mkdir("logs")
        prefix = os.path.join(logdir, "run%d" % len(self.runs))
        length = ["-t", str(transactions)] if transactions else ["-T", str(duration)]
        cmd = [self.pgbench_bin, "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(jobs)] + length + [
               "-h", HOST, "-p", str(t["port"]), "-U", USER]
        if connect_each:
            cmd.append("-C")
        else:
            cmd += ["-l", "--sampling-rate", str(SAMPLING_RATE), "--log-prefix", prefix]
        cmd.append(DB)
        if target.startswith("timebox-"):
            self.maybe_restart(target)
        load = loadavg()
        pid = self.pids.get(t["pid"]) if t["pid"] else None
        wal0 = self.audit_bytes(target)["audit.db-wal"] if "dir" in t else None
        ticks0 = cpu_ticks(pid) if pid else None
        out = subprocess.run(cmd, env=self.client_env(t["password"]), capture_output=True, text=True)
        ticks1 = cpu_ticks(pid) if pid else None
        wal1 = self.audit_bytes(target)["audit.db-wal"] if "dir" in t else None
        text = out.stdout
        aborted = len(re.findall(r"client \d+ script \d+ aborted", out.stderr))
        if out.returncode != 0 and (not aborted or "tps = " not in text):
            raise RuntimeError("pgbench against %s failed (%d): %s\n%s" % (target, out.returncode, " ".join(cmd),
                                                                          (out.stderr or out.stdout)[-2000:]))
        error = ""
        if aborted:
            # Clients that lost their session (e.g. the proxy refused to go on): keep the run, flag it.
            first = re.search(r"aborted in command \d+ query \d+: (.*)", out.stderr)
            error = first.group(1).strip() if first else "see pgbench output"
            log("%s: %d of %d pgbench clients aborted: %s" % (target, aborted, clients, error))
        txns = int(re.search(r"number of transactions actually processed: (\d+)", text).group(1))
        failed = re.search(r"number of failed transactions: (\d+)", text)
        tps = float(re.search(r"tps = ([\d.]+)", text).group(1))
        lat = re.search(r"latency average = ([\d.]+) ms", text)
        conn = re.search(r"average connection time = ([\d.]+) ms", text)
        lats = []
        for path in glob.glob(prefix + ".*"):
            with open(path) as f:
                for line in f:
                    parts = line.split()
                    if len(parts) >= 3:
                        lats.append(int(parts[2]))
            os.unlink(path)
        lats.sort()
        cpu_us = None
        if pid and txns:
            cpu_us = (ticks1 - ticks0) * 1e6 / CLK_TCK / txns
        run = dict(tag=tag, target=target, mode=mode, clients=clients, jobs=jobs, duration=duration, load=load,
                   tps=tps, txns=txns, failed=int(failed.group(1)) if failed else 0, aborted=aborted, error=error,
                   lat_avg_ms=float(lat.group(1)) if lat else None,
                   lat_p99_ms=(percentile(lats, 99) / 1000.0) if lats else None, samples=len(lats),
                   conn_ms=float(conn.group(1)) if conn else None, cpu_us_per_txn=cpu_us,
                   # Growth of the audit WAL during the run (None if it was reset meanwhile).
                   wal_bytes_per_txn=(wal1 - wal0) / txns if wal0 is not None and wal1 >= wal0 and txns else None)
        self.runs.append(run)
        t["txns"] = t.get("txns", 0) + txns
        return run

    def profile(self):
        """perf record (cpu-clock, DWARF call graphs) of timebox(write) during a simple and a prepared
        8-client run; prints where the CPU goes. These runs are not part of the table."""
        pid_name = "timebox-write"
        for mode in ["simple", "prepared"]:
            data = os.path.join(self.work, "perf-%s.data" % mode)
            self.maybe_restart(pid_name)  # now, not inside pgbench() once perf follows the old pid
            pid = self.pids[pid_name]
            perf = subprocess.Popen(["perf", "record", "-q", "-e", "cpu-clock", "-F", "499", "--call-graph",
                                     "dwarf,16384", "-p", str(pid), "-o", data],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(0.5)
            try:
                r = self.pgbench(pid_name, mode, 8, self.args.duration, tag="perf")
            finally:
                perf.send_signal(signal.SIGINT)
                perf.wait(60)
            threads = subprocess.run(["perf", "report", "-i", data, "--stdio", "--no-children", "-g", "none",
                                      "--sort", "comm"], capture_output=True, text=True).stdout
            symbols = subprocess.run(["perf", "report", "-i", data, "--stdio", "--children", "-g", "none",
                                      "--sort", "sym", "--percent-limit", "0.5"],
                                     capture_output=True, text=True).stdout
            os.makedirs(self.args.out, exist_ok=True)
            with open(os.path.join(self.args.out, "perf-%s.txt" % mode), "w") as f:
                f.write(threads + "\n" + symbols)
            lines = ["perf, timebox(write), %s, 8 clients (%.0f tps, %.1f µs CPU/txn); share of timebox's CPU "
                     "samples:" % (mode, r["tps"], r["cpu_us_per_txn"] or 0)]
            for line in threads.splitlines():
                if line.strip() and not line.startswith("#"):
                    lines.append("  thread %s" % " ".join(line.split()))
            wanted = [("timebox::audit::writer::Writer::run", "audit writer thread (Writer::run)"),
                      ("timebox::audit::writer::Writer::commit", "  of which Writer::commit"),
                      ("pagerWalFrames", "  of which SQLite writing WAL frames at commit"),
                      ("unixWrite", "    of which pwrite(2) of the frames"),
                      ("timebox::audit::writer::Checkpointer::run", "audit checkpointer thread"),
                      ("timebox::policy::ClassifyCache::classify", "statement classification (cache + parse)"),
                      ("pg_query::query::parse", "  of which pg_query parse"),
                      ("sqlparser::parser::Parser::parse_sql", "  of which sqlparser parse"),
                      ("timebox::audit::AuditLog::submit", "audit event submit (relay side)"),
                      ("__libc_send", "send(2) to sockets"),
                      ("__libc_recv", "recv(2) from sockets"),
                      ("epoll_wait", "epoll_wait (idle/wakeups)"),
                      ("__x64_sys_futex", "futex (thread hand-offs)")]
            best = {}
            for line in symbols.splitlines():
                m = re.match(r"\s*([\d.]+)%\s+([\d.]+)%\s+\[[.k]\]\s+(.*?)\s*(\(inlined\))?$", line)
                if m:
                    sym = m.group(3)
                    best[sym] = max(best.get(sym, 0.0), float(m.group(1)))
            for sym, label in wanted:
                if sym in best:
                    lines.append("  %5.1f%%  %s" % (best[sym], label))
            text = "\n".join(lines)
            print(text, flush=True)
            self.profiles.append(text)
            os.unlink(data)

    SYSCALLS = ["sendto", "recvfrom", "writev", "write", "read", "pwrite64", "futex", "epoll_wait"]

    def syscall_counts(self):
        """System calls per transaction of timebox(write) and PgBouncer (perf stat on syscall
        tracepoints during an 8-client run). Not part of the table."""
        events = ",".join("syscalls:sys_enter_%s" % c for c in self.SYSCALLS)
        lines = ["System calls per transaction of the proxy process (perf stat, 8 clients; not in the table):",
                 "  %-16s %-8s %s" % ("target", "mode", " ".join("%9s" % c for c in self.SYSCALLS))]
        for mode in ["simple", "prepared"]:
            for name in self.peers + ["timebox-write"]:
                if name.startswith("timebox-"):
                    self.maybe_restart(name)
                pid = self.pids[self.targets[name]["pid"]]
                out_csv = os.path.join(self.work, "perfstat.csv")
                perf = subprocess.Popen(["perf", "stat", "-x", ",", "-o", out_csv, "-e", events, "-p", str(pid)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                time.sleep(0.3)
                try:
                    r = self.pgbench(name, mode, 8, self.args.duration, tag="syscalls")
                finally:
                    perf.send_signal(signal.SIGINT)
                    perf.wait(30)
                counts = {}
                with open(out_csv) as f:
                    for line in f:
                        parts = line.strip().split(",")
                        if len(parts) >= 3 and parts[2].startswith("syscalls:sys_enter_"):
                            try:
                                counts[parts[2][len("syscalls:sys_enter_"):]] = int(parts[0])
                            except ValueError:
                                pass
                lines.append("  %-16s %-8s %s" % (name, mode, " ".join(
                    "%9.2f" % (counts[c] / r["txns"]) if c in counts else "%9s" % "?" for c in self.SYSCALLS)))
        text = "\n".join(lines)
        print(text, flush=True)
        self.profiles.append(text)

    def matrix(self):
        cells = []
        for mode in MODES:
            for c in CLIENTS:
                names = ["direct"] + self.peers + ["timebox-write"]
                if mode in VARIANT_MODES and c in VARIANT_CLIENTS:
                    names += VARIANTS
                cells.append((mode, c, names))
        return cells

    @staticmethod
    def primary(mode, clients):
        """The cells an issue-6 target names (simple at 1, 8, 32 clients; prepared at 8, 32)."""
        return mode in VARIANT_MODES and (clients in VARIANT_CLIENTS or mode == "simple")

    def cell_reps(self, mode, clients):
        """Repetitions of a cell: all of them for the cells the targets name, a third for the others
        (extended mode, prepared at 1 client), which keeps the default run within 10 minutes."""
        reps = self.args.reps
        return reps if self.primary(mode, clients) else max(1, reps // 3)

    def run_matrix(self):
        cells = self.matrix()
        d, reps = self.args.duration, self.args.reps
        total = sum(len(n) * self.cell_reps(m, c) for m, c, n in cells)
        log("throughput: %d pgbench runs of %d s (%d cells × targets × up to %d reps), ~%.0f s" % (
            total, d, len(cells), reps, total * (d + 0.4)))
        done = 0
        for rep in range(reps):
            for mode, c, names in cells:
                if rep >= self.cell_reps(mode, c):
                    continue
                for name in names:
                    r = self.pgbench(name, mode, c, d)
                    r["rep"] = rep
                    done += 1
                    print("  [%3d/%d] rep %d %-8s %2d clients %-16s %9.0f tps  avg %.3f ms  p99 %s  load %.2f%s" % (
                        done, total, rep + 1, mode, c, name, r["tps"], r["lat_avg_ms"] or 0,
                        "%.3f ms" % r["lat_p99_ms"] if r["lat_p99_ms"] is not None else "-", r["load"],
                        "  cpu %.1f µs/txn" % r["cpu_us_per_txn"] if r["cpu_us_per_txn"] is not None else ""),
                        flush=True)

    def run_connect_rate(self):
        d = self.args.connect_duration
        for rep in range(self.args.reps):
            for name in ["direct"] + self.peers + ["timebox-write"]:
                r = self.pgbench(name, "simple", 8, d, connect_each=True, tag="connect")
                r["rep"] = rep
                print("  connect rate rep %d %-16s %7.0f conn/s  avg connection time %s ms  load %.2f" % (
                    rep + 1, name, r["tps"], r["conn_ms"], r["load"]), flush=True)

    # ---------------------------------------------------------------- report
    def summarize(self):
        def cell(tag, target, mode, clients):
            rs = [r for r in self.runs if r["tag"] == tag and r["target"] == target and r["mode"] == mode
                  and r["clients"] == clients]
            if not rs:
                return None
            return dict(tps=median([r["tps"] for r in rs]), lat=median([r["lat_avg_ms"] for r in rs]),
                        p99=median([r["lat_p99_ms"] for r in rs]), cpu=median([r["cpu_us_per_txn"] for r in rs]),
                        conn=median([r["conn_ms"] for r in rs]), n=len(rs),
                        failed=sum(r["failed"] for r in rs),
                        aborted=sum(1 for r in rs if r["aborted"]),
                        error=next((r["error"] for r in rs if r["error"]), ""))
        self.cell = cell
        lines = []
        pgcat = "pgcat" in self.peers
        hdr = "%-8s %3s  %-16s %9s %8s %8s%s %9s %9s %10s" % (
            "mode", "cl", "target", "TPS", "×direct", "×pgbnc", " %8s" % "×pgcat" if pgcat else "",
            "avg ms", "p99 ms", "CPU µs/tx")
        lines.append(hdr)
        lines.append("-" * len(hdr))
        for mode, c, names in self.matrix():
            base = cell("tps", "direct", mode, c)
            pgb = cell("tps", "pgbouncer", mode, c)
            pgc = cell("tps", "pgcat", mode, c) if pgcat else None
            for name in names:
                m = cell("tps", name, mode, c)
                lines.append("%-8s %3d  %-16s %9.0f %8.2f %8s%s %9.3f %9s %10s%s" % (
                    mode, c, name, m["tps"], m["tps"] / base["tps"],
                    "%.2f" % (m["tps"] / pgb["tps"]) if name != "direct" else "",
                    (" %8s" % ("%.2f" % (m["tps"] / pgc["tps"]) if name != "direct" else "")) if pgcat else "",
                    m["lat"], "%.3f" % m["p99"] if m["p99"] is not None else "-",
                    "%.1f" % m["cpu"] if m["cpu"] is not None else "",
                    "  (%d failed)" % m["failed"] if m["failed"] else "") +
                    ("  (%d run%s)" % (m["n"], "" if m["n"] == 1 else "s") if m["n"] != self.args.reps else "") +
                    ("  [%d of %d runs had clients aborted: %s]" % (m["aborted"], m["n"], m["error"])
                     if m["aborted"] else ""))
            lines.append("")
        lines.append("What each feature costs (timebox durability=write against the same with one feature off "
                     "through [bench]; medians):")
        hdr = "  %-8s %3s  %9s %9s %9s  %8s %8s %8s  %-22s %-22s" % (
            "mode", "cl", "TPS write", "nopolicy", "noaudit", "CPU write", "nopolicy", "noaudit",
            "policy costs", "audit (write) costs")
        lines.append(hdr)
        for mode in VARIANT_MODES:
            for c in VARIANT_CLIENTS:
                w, np_, na = (cell("tps", n, mode, c) for n in ["timebox-write", "timebox-nopolicy", "timebox-noaudit"])

                def cost(off):
                    cpu = "%.1f µs CPU" % (w["cpu"] - off["cpu"]) if None not in (w["cpu"], off["cpu"]) else "? µs CPU"
                    return "%s, %.0f%% TPS" % (cpu, 100.0 * (1 - w["tps"] / off["tps"]))

                lines.append("  %-8s %3d  %9.0f %9.0f %9.0f  %8s %8s %8s  %-22s %-22s" % (
                    mode, c, w["tps"], np_["tps"], na["tps"],
                    *("%.1f" % x["cpu"] if x["cpu"] is not None else "-" for x in (w, np_, na)),
                    cost(np_), cost(na)))
        lines.append("  (CPU = timebox's µs per transaction; a cost is write's CPU minus the variant's, and the "
                     "share of the variant's TPS that write loses)")
        lines.append("")
        lines.append("Connection setup (pgbench -C -S -M simple, 8 clients, a new connection per transaction):")
        base = cell("connect", "direct", "simple", 8)
        for name in ["direct"] + self.peers + ["timebox-write"]:
            m = cell("connect", name, "simple", 8)
            if m:
                lines.append("  %-16s %7.0f connections/s (×direct %.2f)  avg connection time %s ms%s" % (
                    name, m["tps"], m["tps"] / base["tps"], m["conn"],
                    "  CPU %.0f µs/connection" % m["cpu"] if m["cpu"] is not None else ""))
        lines.append("")
        lines.append("Memory per idle session (%d sessions logged in, each ran SELECT 1; RSS delta / sessions):"
                     % self.args.idle_sessions)
        for name, r in self.idle.items():
            lines.append("  %-16s %6.1f KiB/session (RssAnon %.1f KiB), RSS %d → %d KiB, %.0f logins/s" % (
                name, r["kib_per_session"], r["anon_kib_per_session"], r["rss_before_kib"], r["rss_after_kib"],
                r["logins_per_s"]))
        lines.append("")
        lines.append("Audit database after the runs (SQLite WAL mode; restarts = instance restarted because its "
                     "WAL passed %d MiB):" % self.args.max_wal_mib)
        for name in TIMEBOX_INSTANCES:
            t = self.targets[name]
            sz = self.audit_bytes(name)
            wal = median([r["wal_bytes_per_txn"] for r in self.runs if r["target"] == name and r["tag"] == "tps"])
            lines.append("  %-16s %8d transactions, WAL growth %s/transaction (median of runs); now audit.db %d MiB, "
                         "audit.db-wal %d MiB; restarts %d" % (
                             name, t["txns"], "%.1f KiB" % (wal / 1024) if wal is not None else "?",
                             sz["audit.db"] >> 20, sz["audit.db-wal"] >> 20, t["restarts"]))
        return "\n".join(lines)

    def targets_report(self):
        cell = self.cell
        out = []

        def ratio(name, mode, c):
            return cell("tps", name, mode, c)["tps"] / cell("tps", "pgbouncer", mode, c)["tps"]

        def verdict(ok):
            return "MET   " if ok else "MISSED"

        for mode in VARIANT_MODES:
            for c in VARIANT_CLIENTS:
                r = ratio("timebox-write", mode, c)
                out.append("%s durability=write, %s, %d clients: TPS %.2f× PgBouncer (target ≥ 1.10)" % (
                    verdict(r >= 1.10), mode, c, r))
        added_us = (cell("tps", "timebox-write", "simple", 1)["lat"] - cell("tps", "direct", "simple", 1)["lat"]) * 1000
        out.append("%s durability=write, simple, 1 client: added latency %.0f µs over direct (target ≤ 25 µs)" % (
            verdict(added_us <= 25), added_us))
        for mode in VARIANT_MODES:
            r = ratio("timebox-fsync", mode, 32)
            out.append("%s durability=fsync, %s, 32 clients: TPS %.2f× PgBouncer (target ≥ 1.0; 8 clients: %.2f×)" % (
                verdict(r >= 1.0), mode, r, ratio("timebox-fsync", mode, 8)))
        cpus = [(cell("tps", "timebox-write", m, c)["cpu"], m, c) for m, c, _ in self.matrix()]
        worst = max(cpus)
        best = min(cpus)
        out.append("%s proxy CPU per transaction (durability=write): %.1f–%.1f µs (best %s/%d, worst %s/%d; "
                   "target ≤ 10 µs)" % (verdict(worst[0] <= 10), best[0], worst[0], best[1], best[2], worst[1],
                                        worst[2]))
        if "timebox-write" in self.idle:
            kib = self.idle["timebox-write"]["kib_per_session"]
            out.append("%s RSS per idle session: %.1f KiB (target ≤ 64 KiB)" % (verdict(kib <= 64), kib))
        out.append("n/a    no degradation over a 10-minute soak: measured separately by scripts/bench.sh --soak 10")
        return "\n".join(out)

    @staticmethod
    def git_commit():
        commit = subprocess.run(["git", "-C", REPO, "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True).stdout.strip()
        return (commit or "?") + (" (with uncommitted changes in the working tree)" if dirty else "")

    def machine(self):
        model = "?"
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as f:
            mem_kib = int(f.readline().split()[1])
        return dict(date=time.strftime("%Y-%m-%d %H:%M:%S %Z"), nproc=NPROC, cpu=model,
                    mem_gib=round(mem_kib / 1048576, 1), kernel=platform.release(),
                    commit=self.commit,
                    postgres=self.pg_version, pgbouncer=self.pgb_version, pgbench=subprocess.run(
                        [self.pgbench_bin, "--version"], capture_output=True, text=True).stdout.strip())

    # ---------------------------------------------------------------- main
    def use_private_copy(self):
        """Run a private copy of the binary, so a rebuild of target/release during the run cannot
        change what is measured; note its commit and build time for the report."""
        built = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(os.path.getmtime(self.timebox_bin)))
        copy = os.path.join(self.work, "timebox")
        shutil.copy2(self.timebox_bin, copy)
        self.timebox_bin = copy
        self.commit = self.git_commit() + ", binary built %s" % built

    def run(self):
        t_start = time.monotonic()
        self.use_private_copy()
        self.start_postgres()
        self.start_pgbouncer()
        if "pgcat" in self.peers:
            self.start_pgcat()
        for name in TIMEBOX_INSTANCES:
            self.start_timebox(name)
        # A smoke pgbench through every target first: a policy refusal or login failure stops here.
        for name in self.targets:
            self.pgbench(name, "prepared", 1, None, tag="smoke", transactions=100)
        self.runs.clear()

        log("memory per idle session (%d sessions each) …" % self.args.idle_sessions)
        # PgBouncer keeps the server connection of the smoke run pooled: restart it, so that the only
        # sessions upstream are the ones each test opens.
        for peer in self.peers:
            self.restart_peer(peer)
        self.idle_memory("timebox-write")
        for peer in self.peers:
            self.wait_backends(0)
            self.idle_memory(peer)
            self.restart_peer(peer)

        self.run_matrix()
        log("connection setup rate (pgbench -C) …")
        self.run_connect_rate()
        if self.args.perf:
            log("profiling timebox(write) with perf …")
            self.profile()
            self.syscall_counts()

        m = self.machine()
        loads = [r["load"] for r in self.runs]
        table = self.summarize()
        head = ("timebox e2e benchmark: pgbench -n -S (select only), scale %d, %d s per run, %d repetition(s), "
                "medians; pgbench -j min(clients, %d)\n"
                "%s; %d CPUs (%s), %.1f GiB; kernel %s; PostgreSQL %s; %s\n"
                "timebox %s; 1-min load average before runs: min %.2f, median %.2f, max %.2f; total %.0f s\n" % (
                    self.args.scale, self.args.duration, self.args.reps, NPROC, m["date"], m["nproc"], m["cpu"],
                    m["mem_gib"], m["kernel"], m["postgres"],
                    m["pgbouncer"] + ("; %s" % self.pgcat_version if self.pgcat_version else ""), m["commit"], min(loads),
                    statistics.median(loads), max(loads), time.monotonic() - t_start))
        report = head + "\n" + table + "\n\nTargets (issue 6):\n" + self.targets_report() + "\n"
        if self.profiles:
            report += "\n" + "\n\n".join(self.profiles) + "\n"
        print()
        print(report)
        out = os.path.abspath(self.args.out)
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, "table.txt"), "w") as f:
            f.write(report)
        with open(os.path.join(out, "runs.csv"), "w", newline="") as f:
            fields = ["tag", "rep", "target", "mode", "clients", "jobs", "duration", "load", "tps", "txns",
                      "failed", "aborted", "error", "lat_avg_ms", "lat_p99_ms", "samples", "conn_ms", "cpu_us_per_txn", "wal_bytes_per_txn"]
            w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.runs)
        with open(os.path.join(out, "meta.json"), "w") as f:
            json.dump(dict(machine=m, args=vars(self.args), idle=self.idle), f, indent=2)
        log("written: %s/{table.txt,runs.csv,meta.json}" % out)

    # ---------------------------------------------------------------- soak
    def soak(self):
        """pgbench without a break against timebox(write) for --soak minutes, sampled every 10 s."""
        t_start = time.monotonic()
        self.use_private_copy()
        self.pgb_version = "PgBouncer not used"
        self.start_postgres()
        name = "timebox-write"
        self.start_timebox(name)
        self.pgbench(name, "prepared", 1, None, tag="smoke", transactions=100)
        self.runs.clear()
        t = self.targets[name]
        pid = self.pids[name]
        seconds = max(SOAK_INTERVAL, int(round(self.args.soak * 60)))
        loads = [("prepared", 32)] + ([("simple", self.args.soak_simple)] if self.args.soak_simple else [])
        # The audit trail grows by about 1 KiB per transaction (~1.2 GiB a minute at 20k tps).
        free = shutil.disk_usage(self.work).free
        if free < seconds / 60.0 * 1.5 * 2 ** 30:
            log("warning: only %.1f GiB free in %s; the audit files may need ~1.5 GiB per minute of soak" % (
                free / 2 ** 30, self.work))
        log("soak: %s against %s for %d s, a sample every %d s …" % (
            " + ".join("pgbench -S -M %s -c %d" % l for l in loads), name, seconds, SOAK_INTERVAL))

        progress = re.compile(r"progress: ([\d.]+) s, ([\d.]+) tps, lat ([\d.]+) ms")
        samples = {}  # interval number -> dict
        lock = threading.Lock()
        procs = []
        readers = []
        t0 = time.monotonic()
        ticks0 = [cpu_ticks(pid)]

        def read_progress(mode, proc, sink):
            for line in proc.stderr:
                sink.append(line)
                m = progress.search(line)
                if not m:
                    continue
                k = int(round(float(m.group(1)) / SOAK_INTERVAL))
                with lock:
                    s = samples.setdefault(k, dict(interval=k, t=k * SOAK_INTERVAL, tps={}, lat={}))
                    s["tps"][mode] = float(m.group(2))
                    s["lat"][mode] = float(m.group(3))
                    if mode == "prepared":
                        # Taken when the main load reports, i.e. at the end of its interval.
                        ticks = cpu_ticks(pid)
                        s.update(rss_kib=status_kib(pid, "VmRSS"), anon_kib=status_kib(pid, "RssAnon"),
                                 audit_bytes=self.audit_disk_bytes(name), cpu_ticks=ticks - ticks0[0],
                                 wall=time.monotonic() - t0)
                        ticks0[0] = ticks
                if mode == "prepared":
                    print("  %5d s  %8.0f tps  lat %6.3f ms  RSS %7.1f MiB  audit files %8.1f MiB" % (
                        k * SOAK_INTERVAL, float(m.group(2)), float(m.group(3)), s["rss_kib"] / 1024.0,
                        s["audit_bytes"] / 1048576.0), flush=True)

        rss_start, audit_start = status_kib(pid, "VmRSS"), self.audit_disk_bytes(name)
        outputs = {}
        try:
            for mode, clients in loads:
                cmd = [self.pgbench_bin, "-n", "-S", "-M", mode, "-c", str(clients), "-j", str(min(clients, NPROC)),
                       "-T", str(seconds), "-P", str(SOAK_INTERVAL), "-h", HOST, "-p", str(t["port"]), "-U", USER, DB]
                proc = subprocess.Popen(cmd, env=self.client_env(t["password"]), stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True)
                procs.append((mode, clients, proc))
                outputs[mode] = []
                th = threading.Thread(target=read_progress, args=(mode, proc, outputs[mode]), daemon=True)
                th.start()
                readers.append(th)
            results = {}
            for mode, clients, proc in procs:
                out = proc.stdout.read()
                proc.wait()
                results[mode] = (proc.returncode, out)
            for th in readers:
                th.join(10)
        finally:
            for _, _, proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()

        summary = []
        for mode, clients, _ in procs:
            code, out = results[mode]
            err = "".join(outputs[mode])
            aborted = len(re.findall(r"client \d+ script \d+ aborted", err))
            txns = re.search(r"number of transactions actually processed: (\d+)", out)
            failed = re.search(r"number of failed transactions: (\d+)", out)
            tps = re.search(r"tps = ([\d.]+)", out)
            if code != 0 and not tps:
                raise RuntimeError("soak pgbench (%s) failed (%d):\n%s" % (mode, code, (err or out)[-2000:]))
            summary.append("pgbench -M %s -c %d: %s transactions, %s tps, %s failed%s" % (
                mode, clients, txns.group(1) if txns else "?", tps.group(1) if tps else "?",
                failed.group(1) if failed else "0", ", %d clients aborted" % aborted if aborted else ""))

        rows = [samples[k] for k in sorted(samples) if "rss_kib" in samples[k]]
        report = self.soak_report(rows, loads, seconds, rss_start, audit_start, summary, time.monotonic() - t_start)
        print()
        print(report)
        out_dir = os.path.abspath(self.args.out)
        os.makedirs(out_dir, exist_ok=True)
        with open(os.path.join(out_dir, "soak.txt"), "w") as f:
            f.write(report)
        with open(os.path.join(out_dir, "soak.csv"), "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s"] + ["tps_%s" % m for m, _ in loads] + ["lat_ms_%s" % m for m, _ in loads] +
                       ["rss_kib", "rss_anon_kib", "audit_disk_bytes", "cpu_us_per_txn"])
            for r in rows:
                w.writerow([r["t"]] + [r["tps"].get(m, "") for m, _ in loads] + [r["lat"].get(m, "") for m, _ in loads]
                           + [r["rss_kib"], r["anon_kib"], r["audit_bytes"], "%.2f" % r["cpu_us"]
                              if r["cpu_us"] is not None else ""])
        log("written: %s/{soak.txt,soak.csv}" % out_dir)

    def soak_report(self, rows, loads, seconds, rss_start, audit_start, summary, elapsed):
        for r in rows:
            total = sum(r["tps"].values())
            r["tps_total"] = total
            r["cpu_us"] = r["cpu_ticks"] * 1e6 / CLK_TCK / (total * SOAK_INTERVAL) if total else None
        m = self.machine()
        lines = ["timebox soak: %s against timebox(write) for %d s without a break; a sample every %d s" % (
                     " + ".join("pgbench -n -S -M %s -c %d" % l for l in loads), seconds, SOAK_INTERVAL),
                 "%s; %d CPUs (%s), %.1f GiB; kernel %s; PostgreSQL %s; timebox %s; total %.0f s" % (
                     m["date"], m["nproc"], m["cpu"], m["mem_gib"], m["kernel"], m["postgres"], m["commit"], elapsed),
                 ""]
        hdr = "%6s %9s %s %9s %10s %9s %12s" % (
            "t s", "TPS", " ".join("%9s" % ("TPS " + mode[:4]) for mode, _ in loads) if len(loads) > 1 else "",
            "lat ms" if len(loads) == 1 else "lat prep", "CPU µs/tx", "RSS MiB", "audit MiB")
        lines += [hdr, "-" * len(hdr)]
        for r in rows:
            lines.append("%6d %9.0f %s %9.3f %10s %9.1f %12.1f" % (
                r["t"], r["tps_total"],
                " ".join("%9.0f" % r["tps"].get(mode, 0) for mode, _ in loads) if len(loads) > 1 else "",
                r["lat"].get("prepared", 0), "%.1f" % r["cpu_us"] if r["cpu_us"] is not None else "-",
                r["rss_kib"] / 1024.0, r["audit_bytes"] / 1048576.0))
        lines.append("")
        lines += summary
        lines.append("")
        third = len(rows) // 3
        if third < 1:
            lines.append("Verdict: n/a (%d samples; a soak needs at least 3, i.e. %d s)" % (len(rows), 3 * SOAK_INTERVAL))
            return "\n".join(lines) + "\n"
        first, last = rows[:third], rows[-third:]

        def mean(xs):
            return sum(xs) / len(xs)

        tps_first, tps_last = mean([r["tps_total"] for r in first]), mean([r["tps_total"] for r in last])
        tps_change = (tps_last / tps_first - 1) * 100 if tps_first else float("nan")
        rss_first, rss_last = mean([r["rss_kib"] for r in first]), mean([r["rss_kib"] for r in last])
        rss_change = (rss_last / rss_first - 1) * 100
        # Least-squares slope of RSS over time, all samples and after the first third (warm-up).
        def slope(rs):
            if len(rs) < 2:
                return float("nan")
            xs = [r["t"] / 60.0 for r in rs]
            ys = [r["rss_kib"] / 1024.0 for r in rs]
            mx, my = mean(xs), mean(ys)
            den = sum((x - mx) ** 2 for x in xs)
            return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / den if den else float("nan")

        minutes = rows[-1]["t"] / 60.0
        audit_growth = (rows[-1]["audit_bytes"] - audit_start) / 1048576.0
        txns = sum(r["tps_total"] * SOAK_INTERVAL for r in rows)
        tps_ok = abs(tps_change) <= 10
        rss_ok = rss_change <= 10
        lines.append("Verdict (first third = first %d samples, last third = last %d):" % (third, third))
        tps_word = "FLAT    " if tps_ok else ("DROPPED " if tps_change < 0 else "ROSE    ")
        lines.append("  %s TPS: first third %.0f, last third %.0f: %+.1f %% (flat = within ±10 %%)" % (
            tps_word, tps_first, tps_last, tps_change))
        lines.append("  %s RSS: %.1f MiB before the load, %.1f MiB at the first sample, %.1f MiB at the last: "
                     "%+.1f MiB over the soak; mean of last third %+.1f %% against the first (flat = at most "
                     "+10 %%); slope %+.2f MiB/min over all samples, %+.2f MiB/min after the first third" % (
                         "FLAT    " if rss_ok else "GROWING ", rss_start / 1024.0, rows[0]["rss_kib"] / 1024.0,
                         rows[-1]["rss_kib"] / 1024.0, (rows[-1]["rss_kib"] - rows[0]["rss_kib"]) / 1024.0,
                         rss_change, slope(rows), slope(rows[third:])))
        lines.append("  audit files on disk: %.1f MiB → %.1f MiB (+%.1f MiB, %.1f MiB/min, %.0f bytes/transaction)" % (
            audit_start / 1048576.0, rows[-1]["audit_bytes"] / 1048576.0, audit_growth,
            audit_growth / minutes if minutes else 0, audit_growth * 1048576.0 / txns if txns else 0))
        problems = [w for w, bad in [("TPS dropped", tps_change < -10),
                                     ("TPS rose (other load on the machine changed?)", tps_change > 10),
                                     ("RSS grew", not rss_ok)] if bad]
        lines.append("  overall: %s" % ("no degradation (TPS and RSS flat)" if not problems else
                                        "NOT FLAT: " + "; ".join(problems)))
        return "\n".join(lines) + "\n"

    def cleanup(self):
        for name, _ in reversed(list(self.children)):
            try:
                self.stop_child(name)
            except Exception as e:  # keep going: the cluster must still be stopped
                log("warning: stopping %s: %s" % (name, e))
        self.stop_postgres()
        # Keep the servers' logs (not the data) with the results, for a look after a surprise.
        logs = os.path.join(os.path.abspath(self.args.out), "logs")
        shutil.rmtree(logs, ignore_errors=True)
        os.makedirs(logs, exist_ok=True)
        for src, dst in [("pg/server.log", "postgresql.log"), ("pgbouncer/pgbouncer.log", "pgbouncer.log")] + [
                ("tb-%s/timebox.log" % n[len("timebox-"):], "%s.log" % n) for n in TIMEBOX_INSTANCES]:
            try:
                shutil.copyfile(os.path.join(self.work, src), os.path.join(logs, dst))
            except OSError:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="empty scratch directory (removed by bench.sh)")
    p.add_argument("--timebox", required=True, help="path of the timebox binary (release build)")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 s runs, 1 repetition, 500 idle sessions (< 2 min)")
    p.add_argument("--duration", type=int, help="seconds per pgbench run (default 4; --quick 2)")
    p.add_argument("--reps", type=int, help="repetitions of the whole matrix (default 3; --quick 1)")
    p.add_argument("--connect-duration", type=int, help="seconds per pgbench -C run (default 3; --quick 1)")
    p.add_argument("--idle-sessions", type=int, help="sessions for the idle-memory test (default 1000; --quick 500)")
    p.add_argument("--scale", type=int, default=10, help="pgbench scale factor (default 10)")
    p.add_argument("--max-wal-mib", type=int, default=1024,
                   help="restart a timebox instance whose audit WAL passed this size (default 1024)")
    p.add_argument("--perf", action="store_true",
                   help="also profile timebox(write) with perf (not available everywhere; adds ~2 min)")
    p.add_argument("--soak", type=float, metavar="MINUTES",
                   help="instead of the matrix: pgbench -M prepared -c 32 against timebox(write) for MINUTES, "
                        "sampling TPS, RSS and audit file size every 10 s")
    p.add_argument("--soak-simple", type=int, default=0, metavar="CLIENTS",
                   help="with --soak: also run pgbench -M simple with CLIENTS clients at the same time")
    p.add_argument("--pgcat", metavar="BIN", help="also measure PgCat (session mode) from this binary, beside "
                                                  "PgBouncer in every table (scripts/bench.sh: PGCAT_BIN=…)")
    p.add_argument("--out", help="where results are written (default target/bench-e2e; with --soak "
                                 "target/bench-e2e/soak)")
    args = p.parse_args()
    if args.out is None:
        args.out = os.path.join(REPO, "target", "bench-e2e", *(["soak"] if args.soak else []))
    if args.soak_simple and not args.soak:
        p.error("--soak-simple needs --soak")
    if args.soak is not None and args.soak <= 0:
        p.error("--soak needs a positive number of minutes")
    if args.duration is None:
        args.duration = 2 if args.quick else 4
    if args.reps is None:
        args.reps = 1 if args.quick else 3
    if args.connect_duration is None:
        args.connect_duration = 1 if args.quick else 3
    if args.idle_sessions is None:
        args.idle_sessions = 500 if args.quick else 1000

    # Every session through a proxy holds two sockets; children inherit the raised limit.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 4 * args.idle_sessions + 1000
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want if hard == resource.RLIM_INFINITY else min(want, hard), hard))

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    bench = None
    try:
        bench = Bench(args)
        if args.soak:
            bench.soak()
        else:
            bench.run()
        return 0
    except Interrupted as e:
        log("interrupted (%s); cleaning up" % e)
        return 130
    except (RuntimeError, subprocess.CalledProcessError, pgclient.PgError, OSError) as e:
        detail = getattr(e, "stderr", None)
        log("error: %s%s" % (e, ("\n" + detail.decode() if isinstance(detail, bytes) else "\n" + detail)
                            if detail else ""))
        return 1
    finally:
        if bench is not None:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
