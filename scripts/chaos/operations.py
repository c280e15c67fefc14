"""Chaos scenarios from an operator's year rather than a machine's bad minute: a database restored from a
backup under a live ledger, producers that reuse an idempotency key for another body, and an archive
that is replayed, grown and re-exported in another order. Each is killed with SIGKILL along the way.

Imported by chaos.py, which owns the harness (the Scenario class, seeding, measuring). The scenarios here
only drive processes and add their own checks; the harness's checks (no duplicate id, no duplicate
event, nothing lost, nothing left in the queue, the fate of every message as in the clean baseline) apply
to them as to every other scenario, with the differences each one states.
"""

from __future__ import annotations

import json
import random
import subprocess
import uuid


# ---------------------------------------------------------------- restore


def restore(sc) -> None:
    """Back up at 30 %, drain to 70 %, restore the backup (`pg_restore --clean --create`) (losing the rows of 30-70 %, whose messages SQS
    has already deleted), re-drive the queue's archive under the original MessageIds, drain with the
    same, now stale, ledger. Every message must end as in the baseline: the ledger vouches for 70 % of
    the messages, Postgres only for 30 %, and Postgres must win."""
    archive = sc.dir / "archive.jsonl"
    code, out, err = sc.run(["export", "--peek", "--out", str(archive)], limit=600)
    if code != 0:
        raise RuntimeError(f"export --peek failed ({code}): {err.strip()[-300:]}")
    lines = sum(1 for _ in archive.open())
    sc.notes.append(f"archived {lines} envelopes with export --peek before draining")

    dump = sc.dir / "backup.dump"
    _drain_to(sc, 0.30)
    _pg(sc, ["pg_dump", "-Fc", "-f", str(dump), "-d", sc.db])
    at_backup = sc.processed()
    _drain_to(sc, 0.70)
    before_restore = sc.processed()
    # --clean --create: drop the database and make it again from the dump (a plain --clean over a
    # partitioned user_logins fails on Postgres 15: docs/partitions.md).
    _pg(sc, ["pg_restore", "--clean", "--create", "-d", "postgres", str(dump)])
    after_restore = sc.processed()
    sc.notes.append(f"pg_dump at {at_backup}/{sc.sent} processed; pg_restore --clean --create at {before_restore}, "
                    f"leaving {after_restore}; the ledger kept every id it had seen")
    if after_restore != at_backup:
        sc.failures.append(f"the restore left {after_restore} rows + records, the backup had {at_backup}")

    code, out, err = sc.run(["seed", "--file", str(archive)], limit=900)
    if code != 0:
        raise RuntimeError(f"seed --file of the archive failed ({code}): {err.strip()[-300:]}")
    sc.notes.append("re-drove the whole archive under its MessageIds (seed --file)")
    _kill_a_few(sc, 3)
    sc.final_drain()
    unconfirmed = sum(r.get("ledger_unconfirmed", 0) for r in sc.reports)
    if unconfirmed:
        sc.notes.append(f"ledger hits Postgres did not confirm (written again): {unconfirmed}")


# ---------------------------------------------------------------- key conflicts


def key_conflicts(sc) -> None:
    """Pairs of messages that carry one idempotency key and two different bodies, sent after the seeded
    messages and drained with SIGKILLs. Each pair must end as one row and one `key_conflict` record,
    whichever body comes first; the seeded messages as in the baseline."""
    pairs = max(10, sc.sent // 100)
    attribute = "idempotency-key"
    users: list[tuple[str, str]] = []
    entries = []
    for i in range(pairs):
        key = f"order-{uuid.UUID(int=sc.rng.getrandbits(128))}"
        a, b = _login(sc.rng), _login(sc.rng)
        users.append((a["user_id"], b["user_id"]))
        for j, body in enumerate(sc.rng.sample([a, b], 2)):
            entries.append({
                "Id": f"{i}-{j}",
                "MessageBody": json.dumps(body),
                "MessageAttributes": {attribute: {"DataType": "String", "StringValue": key}},
            })
    for start in range(0, len(entries), 10):
        out = sc.ctx.sqs.send_message_batch(QueueUrl=sc.queue_url, Entries=entries[start:start + 10])
        if out.get("Failed"):
            raise RuntimeError(f"SQS refused {len(out['Failed'])} key-conflict messages")
    sc.sent += len(entries)
    sc.notes.append(f"sent {pairs} pairs of messages sharing an idempotency key with different bodies")
    pair_users = {u for pair in users for u in pair}
    sc.fate_filter = lambda fate: not (fate.startswith("Q:key_conflict:") or fate[2:] in pair_users)

    _kill_a_few(sc, 5)
    sc.final_drain()

    # A quarantine record's user_id is masked like every other value of a quarantined body, so the
    # pairs are checked on the rows (raw user_id) and the records are counted: one row per pair, one
    # key_conflict record per pair, and nothing lost (the harness's own check) leaves no other way.
    rows = set(sc.sql("SELECT user_id FROM user_logins").split())
    conflicts = int(sc.sql("SELECT count(*) FROM quarantined_messages WHERE reason = 'key_conflict'"))
    wrong = [p for p in users if (p[0] in rows) == (p[1] in rows)]
    if conflicts != pairs:
        sc.failures.append(f"{conflicts} key_conflict records for {pairs} pairs")
    if wrong:
        sc.failures.append(f"{len(wrong)} of {pairs} pairs did not end as exactly one row")
    else:
        sc.notes.append(f"every pair: one row, and {conflicts} key_conflict records for {pairs} pairs")


# ---------------------------------------------------------------- archives


def prepare_archive(sc) -> None:
    """No seeding: the archive scenario loads a file through `replay`. The queue exists (empty) so the
    harness's queue checks still mean something."""
    code, _, err = sc.run(["migrate"], limit=120)
    if code != 0:
        raise RuntimeError(f"migrate failed: {err.strip()}")
    sc.queue_url = sc.ctx.sqs.create_queue(QueueName=sc.queue)["QueueUrl"]


def archive(sc) -> None:
    """An archive of plain lines (1 % bad, 1 % exact repeats of an earlier line) replayed while being
    killed: first its first 60 %, then the whole archive re-exported in another order, then again.
    Expected: one row or record per line, repeats included, nothing for lines already loaded."""
    n = sc.ctx.args.messages
    rng = sc.rng
    lines: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if lines and roll < 0.01:
            lines.append(lines[rng.randrange(len(lines))])
        elif roll < 0.02:
            lines.append(json.dumps({"foo": "oops_wrong_msg_type", "bar": str(uuid.UUID(int=rng.getrandbits(128)))}))
        else:
            lines.append(json.dumps(_login(rng)))
    sc.sent = len(lines)
    first = sc.dir / "archive-2026-11.jsonl"
    first.write_text("".join(line + "\n" for line in lines[: int(n * 0.6)]))
    regrown = list(lines)
    rng.shuffle(regrown)
    second = sc.dir / "archive-reexport.jsonl"
    second.write_text("".join(line + "\n" for line in regrown))

    for path, kills in ((first, 3), (second, 3), (second, 0)):
        for _ in range(kills):
            p = sc.start(["replay", "--file", str(path), "--batch-rows", "500"])
            if not sc.sleep_alive(p, rng.uniform(0.3, 2.0)):
                break
            sc.kill9(p)
        before = sc.processed()
        code, out, err = sc.run(["replay", "--file", str(path), "--batch-rows", "500"], limit=600)
        if code != 0:
            sc.failures.append(f"replay of {path.name} exited {code}: {err.strip()[-300:]}")
        sc.notes.append(f"replay {path.name} ({sum(1 for _ in path.open())} lines) after {kills} SIGKILLs: "
                        f"{before} -> {sc.processed()} rows + records")

    # What the file says each table must hold: a row per valid line, a record per bad one.
    want_rows: dict[str, int] = {}
    want_records = 0
    for line in lines:
        body = json.loads(line)
        if "user_id" in body:
            want_rows[body["user_id"]] = want_rows.get(body["user_id"], 0) + 1
        else:
            want_records += 1
    got_rows: dict[str, int] = {}
    for user in sc.sql("SELECT user_id FROM user_logins").split():
        got_rows[user] = got_rows.get(user, 0) + 1
    got_records = int(sc.sql("SELECT count(*) FROM quarantined_messages"))
    if got_rows != want_rows:
        missing = sum(max(0, c - got_rows.get(u, 0)) for u, c in want_rows.items())
        extra = sum(max(0, c - want_rows.get(u, 0)) for u, c in got_rows.items())
        sc.failures.append(f"rows differ from the archive's valid lines: {missing} missing, {extra} extra")
    if got_records != want_records:
        sc.failures.append(f"{got_records} quarantine records for {want_records} bad lines")
    sc.expected_dup_events = sum(c - 1 for c in want_rows.values())
    sc.compare_baseline = False


# ---------------------------------------------------------------- helpers


def _login(rng: random.Random) -> dict:
    return {
        "user_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
        "app_version": rng.choice(["2.3.0", "0.96", "1.4"]),
        "device_type": rng.choice(["android", "ios"]),
        "ip": f"{rng.randint(1, 223)}.{rng.randint(0, 255)}.{rng.randint(0, 255)}.{rng.randint(1, 254)}",
        "locale": rng.choice(["RU", "PH", "US", None]),
        "device_id": f"{rng.randint(0, 999):03}-{rng.randint(0, 99):02}-{rng.randint(0, 9999):04}",
    }


def _drain_to(sc, fraction: float) -> None:
    """Runs `run` until rows + records reach `fraction` of the messages sent, then SIGKILLs it."""
    p = sc.start(["run", "--json"])
    reached = sc.wait_processed(p, int(sc.sent * fraction), limit=300)
    if p.poll() is not None:
        sc.failures.append(f"run {p.tag} exited on its own with {p.returncode}: {sc.tail(p)}")
        return
    if not reached:
        sc.notes.append(f"{p.tag} did not reach {fraction:.0%} in time")
    sc.kill9(p)


def _kill_a_few(sc, kills: int) -> None:
    """`run`, SIGKILLed 0.5-3 s after each start, `kills` times or until nothing is visible."""
    for _ in range(kills):
        if sc.depth()[0] == 0:
            break
        p = sc.start(["run", "--json"])
        if not sc.sleep_alive(p, sc.rng.uniform(0.5, 3.0)):
            sc.failures.append(f"run {p.tag} exited on its own with {p.returncode}: {sc.tail(p)}")
            return
        sc.kill9(p)


def _pg(sc, cmd: list[str]) -> None:
    """A Postgres client tool (pg_dump, pg_restore) against the scenario's server."""
    host, port, user = sc.ctx.pg
    out = subprocess.run(cmd + ["-h", host, "-p", port, "-U", user], capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed: {out.stderr.strip()[-400:]}")


SCENARIOS = {"restore": restore, "key-conflicts": key_conflicts, "archive": archive}
PREPARE = {"archive": prepare_archive}
