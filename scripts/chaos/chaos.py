#!/usr/bin/env python3
"""Chaos run for pii-ingest: kill it, stop it, damage its ledger, cut Postgres and pause SQS while it
drains, then check that every message sent ended as exactly one row or one quarantine record.

Started by scripts/chaos.sh (which builds the binary and picks the interpreter: the LocalStack venv,
for boto3). Every scenario gets its own queue and its own database, both seeded the same way (same
generator seed), so each scenario's outcome can be compared message by message with a clean drain
(`baseline`, always run first).

Per scenario:
  rows, quarantined   count(*) of user_logins and quarantined_messages
  dup rows            count(*) - count(DISTINCT message_id) over both tables together
  dup events          the same over the generated content (user_id is a fresh UUID per generated body,
                      and bodies never repeat: --repeat-share is 0), so a message stored twice under
                      two ids would show here
  fate diff           -missing/+extra against the baseline, over the multiset
                      {"L:" user_id for rows} + {"Q:" reason ":" body_hmac for quarantine records}: a
                      valid login quarantined, or a bad message stored under another reason, shows here
  lost                sent - rows - quarantined - left in queue
  left in queue       visible + in flight + delayed after the final drain
Success: dup rows, dup events, fate diff, lost and left all zero, and the scenario's own checks (exit
codes, SIGTERM stop time) pass. Exit status 1 otherwise.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import boto3
from botocore.config import Config as BotoConfig
from urllib.parse import urlparse

import marathon
import operations

REPO = Path(__file__).resolve().parents[2]
PG_SERVER = os.environ.get("PII_INGEST_CHAOS_POSTGRES", "postgres://postgres@127.0.0.1:5432")
_pg = urlparse(PG_SERVER)
PG_HOST, PG_PORT, PG_USER = _pg.hostname or "127.0.0.1", str(_pg.port or 5432), _pg.username or "postgres"
SQS_ENDPOINT = os.environ.get("PII_INGEST_CHAOS_SQS", "http://127.0.0.1:4566")
EMULATOR_PID_FILE = REPO / os.environ.get("PII_INGEST_CHAOS_EMULATOR_PID_FILE", "var/emulator/localstack.pid")
MASKING_KEY = "chaos-run-masking-key-0123456789abcdef0123"
ALL_SCENARIOS = ["kill9", "sigterm", "four-workers", "ledger-damage", "postgres-cut", "postgres-stall", "sqs-pause",
                 "restore", "key-conflicts", "archive"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class Timeout(Exception):
    pass


def psql(db: str, sql: str, timeout: float = 30, stdin: str | None = None) -> str:
    cmd = ["psql", "-X", "-h", PG_HOST, "-p", PG_PORT, "-U", PG_USER, "-d", db, "-Atq", "-v", "ON_ERROR_STOP=1"]
    cmd += ["-f", "-"] if stdin is not None else ["-c", sql]
    out = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"psql on {db} failed: {out.stderr.strip()}")
    return out.stdout


def sqs_client():
    return boto3.client(
        "sqs", endpoint_url=SQS_ENDPOINT, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
        config=BotoConfig(connect_timeout=3, read_timeout=15, retries={"max_attempts": 3}),
    )


def emulator_pid() -> int:
    """The LocalStack process: from this checkout's pid file, else the one listening on the SQS port
    (an emulator that another checkout's scripts/emulator.sh started)."""
    if EMULATOR_PID_FILE.exists():
        pid = int(EMULATOR_PID_FILE.read_text().strip())
    else:
        port = urlparse(SQS_ENDPOINT).port or 4566
        listing = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True).stdout
        found = re.search(r"pid=(\d+)", listing)
        if not found:
            raise RuntimeError(f"no {EMULATOR_PID_FILE} and no process found listening on port {port}")
        pid = int(found.group(1))
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    if "localstack" not in cmdline:
        raise RuntimeError(f"pid {pid} from {EMULATOR_PID_FILE} is not LocalStack ({cmdline[:80]!r})")
    return pid


class Scenario:
    def __init__(self, ctx: "Chaos", name: str):
        self.ctx, self.name = ctx, name
        slug = name.replace("-", "_")
        self.db = f"pii_chaos_{ctx.run_id}_{slug}"
        self.db_url = f"{PG_SERVER}/{self.db}"
        self.queue = f"chaos-{ctx.run_id}-{name}"
        self.queue_url: str | None = None
        self.dir = ctx.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rng = random.Random(f"{ctx.args.seed}-{name}")
        self.procs: list[subprocess.Popen] = []
        self.nproc = 0
        self.failures: list[str] = []
        self.notes: list[str] = []
        self.reports: list[dict] = []
        self.restarts = 0
        self.sent = 0
        self.deadline = time.monotonic() + ctx.args.scenario_timeout
        self.wall = 0.0
        self.result: dict = {}
        # What a scenario may change in the harness's checks (operations.py): fates it accounts for
        # itself, events it stores twice on purpose, and whether the baseline applies at all.
        self.fate_filter = None
        self.expected_dup_events = 0
        self.compare_baseline = True

    # ------------------------------------------------------------ processes

    def env(self, ledger: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PII_INGEST__") and k != "RUST_LOG"}
        env.update({
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "PII_INGEST__POSTGRES__URL": self.db_url,
            "PII_INGEST__SQS__ENDPOINT_URL": SQS_ENDPOINT,
            "PII_INGEST__SQS__QUEUE_NAME": self.queue,
            "PII_INGEST__SQS__WAIT_TIME_SECONDS": "1",
            "PII_INGEST__SQS__VISIBILITY_TIMEOUT_SECONDS": str(self.ctx.args.visibility),
            "PII_INGEST__LEDGER__PATH": str(self.dir / f"ledger-{ledger}"),
            "PII_INGEST__MASKING__KEY": MASKING_KEY,
            "PII_INGEST__LOG__FILTER": "warn",
            # Several processes at once (four-workers): each serves /metrics on a port of its own.
            "PII_INGEST__METRICS__LISTEN": "127.0.0.1:0",
        })
        for setting in self.ctx.args.set:
            key, _, value = setting.partition("=")
            env["PII_INGEST__" + key.strip().upper().replace(".", "__")] = value
        return env

    def start(self, args: list[str], ledger: str = "a") -> subprocess.Popen:
        self.nproc += 1
        tag = f"{self.nproc:03d}-{args[0]}"
        out = open(self.dir / f"{tag}.out", "w")
        err = open(self.dir / f"{tag}.err", "w")
        p = subprocess.Popen(
            [str(self.ctx.binary), "--config", "/dev/null", *args],
            env=self.env(ledger), stdout=out, stderr=err, stdin=subprocess.DEVNULL, cwd=self.dir,
        )
        out.close()
        err.close()
        p.tag = tag  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def output(self, p: subprocess.Popen) -> tuple[str, str]:
        tag = p.tag  # type: ignore[attr-defined]
        return (self.dir / f"{tag}.out").read_text(errors="replace"), (self.dir / f"{tag}.err").read_text(errors="replace")

    def remaining(self) -> float:
        return self.deadline - time.monotonic()

    def wait(self, p: subprocess.Popen, limit: float | None = None) -> int:
        """Waits for p within min(limit, the scenario's deadline); kills it and raises Timeout past that."""
        budget = self.remaining() if limit is None else min(limit, self.remaining())
        try:
            return p.wait(timeout=max(budget, 0.1))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise Timeout(f"{p.tag} did not exit within {budget:.0f} s; killed")  # type: ignore[attr-defined]

    def run(self, args: list[str], ledger: str = "a", limit: float | None = None) -> tuple[int, str, str]:
        p = self.start(args, ledger)
        code = self.wait(p, limit)
        out, err = self.output(p)
        return code, out, err

    def report_of(self, p: subprocess.Popen) -> dict | None:
        out, _ = self.output(p)
        start = out.find("{")
        if start < 0:
            return None
        try:
            report = json.loads(out[start:])
        except json.JSONDecodeError:
            return None
        self.reports.append(report)
        return report

    def finish(self, p: subprocess.Popen, label: str = "the drain") -> tuple[int | None, dict | None]:
        """Waits for a `run --until-empty --json`; records a timeout or a failed exit as a failure and its
        report as a note. Returns (exit code, report); the code is None after a timeout."""
        try:
            code = self.wait(p)
        except Timeout as e:
            self.failures.append(str(e))
            return None, None
        report = self.report_of(p)
        if code != 0:
            self.failures.append(f"{label} exited {code}: {self.tail(p)}")
        if report:
            self.notes.append(("drain" if label == "the drain" else label) + ": " + summarize(report))
        return code, report

    def tail(self, p: subprocess.Popen, n: int = 3) -> str:
        _, err = self.output(p)
        lines = [l for l in err.strip().splitlines() if l.strip()]
        return " | ".join(lines[-n:]) if lines else "(no stderr)"

    def sleep_alive(self, p: subprocess.Popen, seconds: float) -> bool:
        """Sleeps up to `seconds`; False if p exited meanwhile."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if p.poll() is not None:
                return False
            time.sleep(0.05)
        return p.poll() is None

    def kill9(self, p: subprocess.Popen) -> None:
        p.kill()  # SIGKILL
        p.wait()
        self.restarts += 1

    def cleanup_procs(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait()

    # ------------------------------------------------------------ queue and database

    def sql(self, sql: str) -> str:
        return psql(self.db, sql)

    def prepare(self) -> None:
        if self.name in operations.PREPARE:
            return operations.PREPARE[self.name](self)
        code, out, err = self.run(["migrate"], limit=120)
        if code != 0:
            raise RuntimeError(f"migrate failed: {err.strip()}")
        args = self.ctx.args
        code, out, err = self.run(
            ["seed", "--generate", str(args.messages), "--bad-share", str(args.bad_share), "--seed", str(args.seed)], limit=600,
        )
        m = re.search(r"sent (\d+) messages", out)
        if code != 0 or not m:
            raise RuntimeError(f"seed failed ({code}): {err.strip()[-400:]}")
        self.sent = int(m.group(1))
        self.queue_url = self.ctx.sqs.get_queue_url(QueueName=self.queue)["QueueUrl"]

    def depth(self) -> tuple[int, int, int]:
        attrs = self.ctx.sqs.get_queue_attributes(
            QueueUrl=self.queue_url,
            AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible", "ApproximateNumberOfMessagesDelayed"],
        )["Attributes"]
        return (int(attrs.get("ApproximateNumberOfMessages", 0)), int(attrs.get("ApproximateNumberOfMessagesNotVisible", 0)),
                int(attrs.get("ApproximateNumberOfMessagesDelayed", 0)))

    def processed(self) -> int | None:
        try:
            return int(psql(self.db, "SELECT (SELECT count(*) FROM user_logins) + (SELECT count(*) FROM quarantined_messages)", timeout=10))
        except Exception:
            return None

    def wait_processed(self, p: subprocess.Popen | None, target: int, limit: float) -> bool:
        """Polls until rows + quarantined >= target; False when p exits first or `limit` passes."""
        end = time.monotonic() + min(limit, self.remaining())
        while time.monotonic() < end:
            n = self.processed()
            if n is not None and n >= target:
                return True
            if p is not None and p.poll() is not None:
                return False
            time.sleep(0.1)
        return False

    def final_drain(self, ledger: str = "a") -> bool:
        p = self.start(["run", "--until-empty", "--json"], ledger)
        try:
            code = self.wait(p)
        except Timeout as e:
            self.failures.append(f"final drain: {e}")
            return False
        report = self.report_of(p)
        if code != 0:
            self.failures.append(f"final drain exited {code}: {self.tail(p)}")
            return False
        if report:
            self.notes.append("final drain: " + summarize(report))
        return True

    def measure(self) -> None:
        db = self.db
        rows = int(psql(db, "SELECT count(*) FROM user_logins"))
        quarantined = int(psql(db, "SELECT count(*) FROM quarantined_messages"))
        dup_rows = int(psql(db, "SELECT count(*) - count(DISTINCT message_id) FROM "
                                "(SELECT message_id FROM user_logins UNION ALL SELECT message_id FROM quarantined_messages) ids"))
        dup_events = int(psql(db, """
            SELECT (SELECT count(*) - count(DISTINCT user_id) FROM user_logins)
                 + (SELECT count(u) - count(DISTINCT u) FROM
                      (SELECT substring(masked_body from '"user_id" *: *"([^"]+)"') AS u FROM quarantined_messages) q)
                 + (SELECT count(*) FROM user_logins l JOIN
                      (SELECT substring(masked_body from '"user_id" *: *"([^"]+)"') AS u FROM quarantined_messages) q
                      ON q.u = l.user_id)"""))
        by_reason = dict(
            (line.split("|")[0], int(line.split("|")[1]))
            for line in psql(db, "SELECT reason, count(*) FROM quarantined_messages GROUP BY reason ORDER BY reason").splitlines() if line
        )
        fates = collections.Counter(psql(db, "SELECT 'L:' || user_id FROM user_logins UNION ALL "
                                             "SELECT 'Q:' || reason || ':' || body_hmac FROM quarantined_messages").splitlines())
        try:
            visible, inflight, delayed = self.depth()
            left = visible + inflight + delayed
        except Exception as e:  # noqa: BLE001
            self.failures.append(f"queue depth unavailable: {e}")
            left = -1
        lost = self.sent - rows - quarantined - max(left, 0)
        baseline = self.ctx.baseline_fates
        if self.fate_filter is not None and baseline is not None:
            fates = collections.Counter({k: v for k, v in fates.items() if self.fate_filter(k)})
            baseline = collections.Counter({k: v for k, v in baseline.items() if self.fate_filter(k)})
        dup_events -= self.expected_dup_events
        if baseline is None or self.name == "baseline" or not self.compare_baseline:
            missing = extra = 0
        else:
            missing = sum((baseline - fates).values())
            extra = sum((fates - baseline).values())
            if missing or extra:
                examples = list((fates - baseline).keys())[:3]
                self.failures.append(f"fate differs from the baseline: {missing} missing, {extra} extra (extra e.g. {[e[:40] for e in examples]})")
        self.fates = fates
        self.result = dict(sent=self.sent, rows=rows, quarantined=quarantined, dup_rows=dup_rows, dup_events=dup_events,
                           missing=missing, extra=extra, lost=lost, left=left, by_reason=by_reason)
        if dup_rows:
            self.failures.append(f"{dup_rows} duplicate message ids")
        if dup_events:
            self.failures.append(f"{dup_events} duplicate events")
        if lost:
            self.failures.append(f"{lost} messages lost")
        if left:
            self.failures.append(f"{left} messages left in the queue")
        if by_reason.get("db_rejected"):
            self.failures.append(f"{by_reason['db_rejected']} messages quarantined as db_rejected (the generator makes none)")

    def drop(self) -> None:
        try:
            url = self.queue_url or self.ctx.sqs.get_queue_url(QueueName=self.queue)["QueueUrl"]
            self.ctx.sqs.delete_queue(QueueUrl=url)
        except Exception:  # noqa: BLE001
            pass
        if self.ctx.args.keep or self.failures:
            return
        try:
            psql("postgres", f'DROP DATABASE IF EXISTS "{self.db}" WITH (FORCE)')
        except Exception as e:  # noqa: BLE001
            log(f"{self.name}: could not drop {self.db}: {e}")
        shutil.rmtree(self.dir, ignore_errors=True)


def summarize(r: dict) -> str:
    q = sum(r.get("quarantined", {}).values())
    parts = [f"received {r.get('received')}", f"written {r.get('written')}", f"quarantined {q}",
             f"dup ledger/db/batch {r.get('duplicate_ledger')}/{r.get('duplicate_database')}/{r.get('duplicate_in_batch')}"]
    for key in ("abandoned", "delete_failed", "retries", "visibility_extended"):
        if r.get(key):
            parts.append(f"{key} {r[key]}")
    return ", ".join(parts)


# ---------------------------------------------------------------- scenarios


def scenario_baseline(sc: Scenario) -> None:
    sc.final_drain()


def scenario_kill9(sc: Scenario) -> None:
    """SIGKILL `run` after 0.3-3 s, restart, until nothing is visible; then one `run --until-empty`."""
    max_kills = sc.ctx.args.max_restarts
    while sc.restarts < max_kills and sc.remaining() > 30:
        visible, _, _ = sc.depth()
        if visible == 0:
            break
        p = sc.start(["run", "--json"])
        after = sc.rng.uniform(0.3, 3.0)
        if not sc.sleep_alive(p, after):
            sc.failures.append(f"run {p.tag} exited on its own with {p.returncode}: {sc.tail(p)}")
            break
        sc.kill9(p)
    sc.notes.append(f"{sc.restarts} SIGKILLs at random 0.3-3 s into each run")
    if sc.restarts >= max_kills:
        sc.notes.append(f"stopped killing at the {max_kills}-restart bound")
    sc.final_drain()


def scenario_sigterm(sc: Scenario) -> None:
    """SIGTERM `run` after a random time: exit 0, within the visibility timeout; then `run --until-empty`."""
    vis = sc.ctx.args.visibility
    stops = []
    for _ in range(sc.ctx.args.sigterm_rounds):
        if sc.remaining() < 60 or sc.depth()[0] == 0:
            break
        p = sc.start(["run", "--json"])
        if not sc.sleep_alive(p, sc.rng.uniform(0.5, 3.0)):
            sc.failures.append(f"run {p.tag} exited on its own with {p.returncode}: {sc.tail(p)}")
            break
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        sc.restarts += 1
        try:
            code = sc.wait(p, limit=max(30, vis * 4))
        except Timeout as e:
            sc.failures.append(f"SIGTERM: {e}")
            continue
        took = time.monotonic() - t0
        stops.append(took)
        report = sc.report_of(p)
        if code != 0:
            sc.failures.append(f"SIGTERM: {p.tag} exited {code} after {took:.2f} s: {sc.tail(p)}")
        elif took > vis:
            sc.failures.append(f"SIGTERM: {p.tag} took {took:.2f} s to exit, more than the {vis} s visibility timeout")
        if report is None and code == 0:
            sc.failures.append(f"SIGTERM: {p.tag} exited 0 without a report")
        elif report and report.get("abandoned"):
            sc.notes.append(f"{p.tag}: abandoned {report['abandoned']} at SIGTERM")
    if stops:
        sc.notes.append(f"{len(stops)} SIGTERMs; exit took {min(stops):.2f}-{max(stops):.2f} s (visibility timeout {vis} s)")
        sc.notes.append("stopped runs: " + summarize(total(sc.reports)))
    sc.final_drain()


def total(reports: list[dict]) -> dict:
    out: dict = collections.Counter()
    quarantined: collections.Counter = collections.Counter()
    for r in reports:
        for k, v in r.items():
            if isinstance(v, int):
                out[k] += v
        quarantined.update(r.get("quarantined", {}))
    out = dict(out)
    out["quarantined"] = dict(quarantined)
    return out


def scenario_four_workers(sc: Scenario) -> None:
    """Four `run --until-empty` processes at once, each with its own ledger."""
    procs = [sc.start(["run", "--until-empty", "--json"], ledger=f"w{i}") for i in range(1, 5)]
    for p in procs:
        sc.finish(p, f"worker {p.tag}")
    t = total(sc.reports)
    sc.notes.append("all workers: " + summarize(t))
    sc.check_written = t  # compared with the table after measure()


def damage(sc: Scenario, kind: str, path: Path) -> str:
    files = [f for f in path.rglob("*") if f.is_file()] if path.exists() else []
    size = sum(f.stat().st_size for f in files)
    if kind == "wipe":
        shutil.rmtree(path, ignore_errors=True)
        return f"wiped the ledger ({len(files)} files, {size} bytes)"
    if kind == "truncate":
        for f in files:
            n = f.stat().st_size
            with open(f, "r+b") as fh:
                fh.truncate(sc.rng.randrange(0, n) if n else 0)
        return f"truncated all {len(files)} ledger files at random lengths ({size} bytes before)"
    if kind == "garbage":
        for f in files:
            n = f.stat().st_size
            f.write_bytes(sc.rng.randbytes(max(n, 64)))
        return f"overwrote all {len(files)} ledger files with random bytes"
    raise ValueError(kind)


def scenario_ledger_damage(sc: Scenario) -> None:
    """Drain with SIGKILLs at 50/65/80 %, damaging the ledger after each kill; then `run --until-empty`."""
    ledger = sc.dir / "ledger-a"
    for fraction, kind in ((0.50, "wipe"), (0.65, "truncate"), (0.80, "garbage")):
        p = sc.start(["run", "--json"])
        reached = sc.wait_processed(p, int(sc.sent * fraction), limit=180)
        if p.poll() is not None:
            sc.failures.append(f"run {p.tag} (after the previous damage) exited on its own with {p.returncode}: {sc.tail(p)}")
        else:
            if not reached:
                sc.notes.append(f"{p.tag} did not reach {fraction:.0%} in time")
            sc.kill9(p)
        done = sc.processed()
        sc.notes.append(f"killed at {done}/{sc.sent}, then {damage(sc, kind, ledger)}")
    if not sc.final_drain():
        sc.notes.append("recovery: wiping the ledger and draining again so the counts below mean something")
        shutil.rmtree(ledger, ignore_errors=True)
        sc.final_drain()
    aside = [p.name for p in sc.dir.iterdir() if "unreadable" in p.name]
    if aside:
        sc.notes.append(f"ledger stores moved aside by pii-ingest: {len(aside)}")


def scenario_postgres_cut(sc: Scenario) -> None:
    """pg_terminate_backend on the scenario database's connections every ~50 ms for ~5 s mid-drain."""
    p = sc.start(["run", "--until-empty", "--json"])
    sc.wait_processed(p, max(1, sc.sent // 10), limit=120)
    if p.poll() is not None:
        sc.notes.append("the drain finished before the cut started (use more messages)")
    rounds = max(1, int(sc.ctx.args.pg_cut_seconds / 0.05))
    script = "".join(
        f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = '{sc.db}' AND pid <> pg_backend_pid();\n"
        "SELECT pg_sleep(0.05);\n" for _ in range(rounds)
    )
    t0 = time.monotonic()
    out = psql("postgres", "", timeout=120, stdin=script)
    killed = sum(int(x) for x in out.split() if x.strip().isdigit())
    cut = time.monotonic() - t0
    still = "still draining" if p.poll() is None else "drain already over"
    sc.notes.append(f"terminated {killed} backends of {sc.db} over {cut:.1f} s ({still} at the end of the cut)")
    _, report = sc.finish(p)
    sc.check_written = report


def scenario_postgres_stall(sc: Scenario) -> None:
    """Lock user_logins for ~5 s mid-drain (as a long DDL would) and cancel the query of every backend of the
    scenario database left waiting on a lock every 200 ms (as statement_timeout, lock_timeout or an operator would)."""
    p = sc.start(["run", "--until-empty", "--json"])
    sc.wait_processed(p, max(1, sc.sent // 10), limit=120)
    if p.poll() is not None:
        sc.notes.append("the drain finished before the stall started (use more messages)")
    rounds = max(1, int(sc.ctx.args.pg_cut_seconds / 0.2))
    script = "BEGIN;\nLOCK TABLE user_logins IN SHARE MODE;\n" + "".join(
        "SELECT pg_sleep(0.2);\nSELECT pg_stat_clear_snapshot();\n"
        f"SELECT count(pg_cancel_backend(pid)) FROM pg_stat_activity WHERE datname = '{sc.db}' "
        "AND pid <> pg_backend_pid() AND wait_event_type = 'Lock';\n" for _ in range(rounds)
    ) + "COMMIT;\n"
    t0 = time.monotonic()
    out = psql(sc.db, "", timeout=120, stdin=script)
    killed = sum(int(x) for x in out.split() if x.strip().isdigit())
    sc.notes.append(f"user_logins locked for {time.monotonic() - t0:.1f} s; cancelled {killed} queries waiting on it")
    sc.finish(p)


def scenario_sqs_pause(sc: Scenario) -> None:
    """SIGSTOP the emulator for 10 s mid-drain, then SIGCONT."""
    pid = emulator_pid()
    p = sc.start(["run", "--until-empty", "--json"])
    sc.wait_processed(p, max(1, sc.sent // 5), limit=120)
    if p.poll() is not None:
        sc.notes.append("the drain finished before the pause (use more messages)")
    seconds = sc.ctx.args.sqs_pause_seconds
    log(f"sqs-pause: SIGSTOP emulator pid {pid} for {seconds} s")
    sc.ctx.paused = pid
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)
        sc.ctx.paused = None
    log("sqs-pause: SIGCONT sent")
    sc.notes.append(f"emulator (pid {pid}) stopped for {seconds} s at {sc.processed()}/{sc.sent} processed")
    code, _ = sc.finish(p)
    if code not in (0, None):
        sc.final_drain()


SCENARIOS = {
    "baseline": scenario_baseline,
    "kill9": scenario_kill9,
    "sigterm": scenario_sigterm,
    "four-workers": scenario_four_workers,
    "ledger-damage": scenario_ledger_damage,
    "postgres-cut": scenario_postgres_cut,
    "postgres-stall": scenario_postgres_stall,
    "sqs-pause": scenario_sqs_pause,
    **operations.SCENARIOS,
    **marathon.SCENARIOS,
}


class Chaos:
    def __init__(self, args):
        self.args = args
        self.binary = Path(args.binary).resolve()
        self.run_id = uuid.uuid4().hex[:6]
        self.work = REPO / "var" / "chaos" / self.run_id
        self.work.mkdir(parents=True, exist_ok=True)
        self.sqs = sqs_client()
        self.pg = (PG_HOST, PG_PORT, PG_USER)
        self.baseline_fates: collections.Counter | None = None
        self.paused: int | None = None
        self.done: list[Scenario] = []

    def run_scenario(self, name: str) -> Scenario:
        sc = Scenario(self, name)
        log(f"{name}: seeding {self.args.messages} messages into {sc.queue}, database {sc.db}")
        try:
            sc.prepare()
            log(f"{name}: seeded {sc.sent}; running")
            started = time.monotonic()
            SCENARIOS[name](sc)
            sc.wall = time.monotonic() - started
        except Timeout as e:
            sc.failures.append(f"timed out: {e}")
        except Exception as e:  # noqa: BLE001
            sc.failures.append(f"scenario error: {type(e).__name__}: {e}")
        except KeyboardInterrupt:
            sc.failures.append("interrupted")
            sc.cleanup_procs()
            sc.drop()  # the queue; the database is kept (the scenario failed)
            self.done.append(sc)
            raise
        finally:
            sc.cleanup_procs()
        if sc.remaining() <= 0:
            sc.failures.append(f"gave up after {self.args.scenario_timeout} s")
        try:
            sc.measure()
        except Exception as e:  # noqa: BLE001
            sc.failures.append(f"could not measure: {type(e).__name__}: {e}")
        written = getattr(sc, "check_written", None)
        if written and sc.result:
            q = sum(written.get("quarantined", {}).values())
            if (written.get("written"), q) != (sc.result["rows"], sc.result["quarantined"]):
                sc.notes.append(f"note: reports say written {written.get('written')} + quarantined {q}, "
                                f"tables hold {sc.result['rows']} + {sc.result['quarantined']}")
        if name == "baseline" and not sc.failures:
            self.baseline_fates = sc.fates
        status = "ok" if not sc.failures else "FAIL"
        log(f"{name}: {status} in {sc.wall:.1f} s: {sc.result and {k: v for k, v in sc.result.items() if k != 'by_reason'}}")
        for f in sc.failures:
            log(f"{name}:   FAIL {f}")
        sc.drop()
        self.done.append(sc)
        return sc

    def table(self) -> str:
        head = ["scenario", "sent", "rows", "quarantined", "dup rows", "dup events", "fate diff", "lost", "left in queue",
                "restarts", "wall s", "result"]
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
        for sc in self.done:
            r = sc.result or {}
            fate = f"-{r.get('missing', '?')}/+{r.get('extra', '?')}" if r else "?"
            cells = [sc.name, r.get("sent", sc.sent), r.get("rows", "?"), r.get("quarantined", "?"), r.get("dup_rows", "?"),
                     r.get("dup_events", "?"), fate, r.get("lost", "?"), r.get("left", "?"), sc.restarts,
                     f"{sc.wall:.1f}", "ok" if not sc.failures else "FAIL"]
            lines.append("| " + " | ".join(str(c) for c in cells) + " |")
        return "\n".join(lines)

    def details(self) -> str:
        out = []
        for sc in self.done:
            out.append(f"- **{sc.name}**: " + ("; ".join(sc.notes) if sc.notes else "-"))
            if sc.result.get("by_reason"):
                out.append("  - quarantined by reason: " + ", ".join(f"{k} {v}" for k, v in sc.result["by_reason"].items()))
            for f in sc.failures:
                out.append(f"  - FAIL: {f}")
            if sc.failures and not self.args.keep:
                out.append(f"  - kept for inspection: database {sc.db}, logs {sc.dir}")
        return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--binary", required=True)
    ap.add_argument("--messages", type=int, default=50_000)
    ap.add_argument("--scenarios", default=",".join(ALL_SCENARIOS))
    ap.add_argument("--no-sqs-pause", action="store_true")
    ap.add_argument("--bad-share", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=20261124)
    ap.add_argument("--visibility", type=int, default=5, help="visibility timeout of the scenario queues, seconds")
    ap.add_argument("--scenario-timeout", type=float, default=600)
    ap.add_argument("--max-restarts", type=int, default=150)
    ap.add_argument("--marathon-kills", type=int, default=50, help="SIGKILLs in the marathon scenario (scripts/chaos-long.sh)")
    ap.add_argument("--sigterm-rounds", type=int, default=5)
    ap.add_argument("--pg-cut-seconds", type=float, default=5)
    ap.add_argument("--sqs-pause-seconds", type=float, default=10)
    ap.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                    help="extra setting for every pii-ingest process, e.g. postgres.write_method=insert (repeatable)")
    ap.add_argument("--keep", action="store_true", help="keep the databases, logs and ledgers")
    args = ap.parse_args()

    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        print(f"unknown scenario(s): {', '.join(unknown)} (known: {', '.join(SCENARIOS)})", file=sys.stderr)
        return 2
    if args.no_sqs_pause:
        names = [n for n in names if n != "sqs-pause"]
    names = ["baseline"] + [n for n in names if n != "baseline"]

    chaos = Chaos(args)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    started = time.monotonic()
    interrupted = False
    try:
        for name in names:
            chaos.run_scenario(name)
    except KeyboardInterrupt:
        interrupted = True
        log("interrupted")
    finally:
        if chaos.paused:
            os.kill(chaos.paused, signal.SIGCONT)
    for sc in chaos.done:
        sc.cleanup_procs()
    settings = f", settings {' '.join(args.set)}" if args.set else ""
    print(f"pii-ingest chaos run {chaos.run_id}: {args.messages} messages per scenario, {args.bad_share:.0%} bad, "
          f"visibility timeout {args.visibility} s{settings}, binary {chaos.binary.relative_to(REPO) if chaos.binary.is_relative_to(REPO) else chaos.binary}, "
          f"{time.monotonic() - started:.0f} s in all\n")
    print(chaos.table())
    print()
    print(chaos.details())
    failed = interrupted or any(sc.failures for sc in chaos.done)
    print()
    print("RESULT: " + ("FAIL" if failed else "ok: no duplicates, nothing lost, every message's fate as in the baseline"))
    if not failed and not args.keep:
        shutil.rmtree(chaos.work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
