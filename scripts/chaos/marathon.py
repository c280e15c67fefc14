"""The long chaos run (issue 11): four workers drain one big queue while SIGKILLs land on them one by one,
Postgres is restarted (crash-stop, `-m immediate`) a third of the way through and the SQS emulator two
thirds of the way through. Run by scripts/chaos-long.sh, which gives it a Postgres cluster and an
emulator of its own, because restarting the shared ones would break everything else using them.

The two restarts are shell commands from the environment, so this file never guesses what it may restart:
  PII_INGEST_CHAOS_PG_RESTART    e.g. "pg_ctl -D var/chaos-long/pg -m immediate restart"
  PII_INGEST_CHAOS_SQS_RESTART   e.g. "PII_INGEST_EMULATOR_PORT=4598 ... scripts/emulator.sh restart"
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

WORKERS = 4


def marathon(sc) -> None:
    """Four `run` workers, each with its own ledger, restarted as soon as they die; `--marathon-kills`
    SIGKILLs spread evenly over the drain, one Postgres restart at 1/3 and one emulator restart at 2/3
    of the messages processed. Ends with SIGTERM to every worker and one `run --until-empty`."""
    kills = sc.ctx.args.marathon_kills
    restarts = {name: os.environ.get(var) for name, var in
                (("postgres", "PII_INGEST_CHAOS_PG_RESTART"), ("emulator", "PII_INGEST_CHAOS_SQS_RESTART"))}
    missing = [name for name, cmd in restarts.items() if not cmd]
    if missing:
        raise RuntimeError(f"no restart command for {', '.join(missing)}: run the marathon through scripts/chaos-long.sh")

    # (fraction of messages processed, action), in order.
    events = [((k + 1) / (kills + 2), "kill") for k in range(kills)]
    events += [(1 / 3, "postgres"), (2 / 3, "emulator")]
    events.sort()
    workers = {i: sc.start(["run", "--json"], ledger=f"w{i}") for i in range(WORKERS)}
    own_exits: list[str] = []
    started = time.monotonic()
    progress_at = time.monotonic()
    while sc.remaining() > 60:
        processed = sc.processed()
        for i, p in workers.items():
            if p.poll() is not None:
                own_exits.append(f"{p.tag} exited {p.returncode}: {sc.tail(p, 1)}")
                workers[i] = sc.start(["run", "--json"], ledger=f"w{i}")
        while events and processed is not None and processed >= events[0][0] * sc.sent:
            fraction, action = events.pop(0)
            at = f"{processed}/{sc.sent} ({time.monotonic() - started:.0f} s)"
            if action == "kill":
                i = sc.rng.randrange(WORKERS)
                sc.kill9(workers[i])
                workers[i] = sc.start(["run", "--json"], ledger=f"w{i}")
            else:
                t0 = time.monotonic()
                # To files, not pipes: a restarted server inherits them and would hold a pipe open forever.
                log_path = sc.dir / f"restart-{action}.log"
                with open(log_path, "w") as log_file:
                    code = subprocess.run(restarts[action], shell=True, stdout=log_file, stderr=subprocess.STDOUT,
                                          stdin=subprocess.DEVNULL, timeout=600).returncode
                took = time.monotonic() - t0
                if code != 0:
                    raise RuntimeError(f"{action} restart failed ({code}): {log_path.read_text()[-300:]}")
                sc.notes.append(f"{action} restarted at {at}, down for {took:.1f} s")
        if time.monotonic() - progress_at > 30:
            progress_at = time.monotonic()
            print(f"[{time.strftime('%H:%M:%S')}] marathon: {processed}/{sc.sent} processed, {sc.restarts} SIGKILLs, "
                  f"{len(own_exits)} own exits, {time.monotonic() - started:.0f} s", file=sys.stderr, flush=True)
        if not events and _empty(sc):
            break
        time.sleep(0.25)
    for p in workers.values():
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in workers.values():
        code = sc.wait(p, limit=120)
        if code not in (0, -signal.SIGTERM):
            own_exits.append(f"{p.tag} exited {code} after SIGTERM: {sc.tail(p, 1)}")
    sc.notes.append(f"{WORKERS} workers, {sc.restarts} SIGKILLs spread over the drain, each worker restarted at once")
    if events:
        sc.failures.append(f"{len(events)} planned events never happened (the drain ended first): {events[:3]}")
    if own_exits:
        # A worker may exit on its own only because of a restart (the supervisor restarts it, as
        # Kubernetes would); the notes list every one so the record shows it.
        sc.notes.append(f"workers that exited on their own and were restarted: {len(own_exits)}: " + "; ".join(own_exits[:5]))
    sc.final_drain("w0")


def _empty(sc) -> bool:
    try:
        visible, inflight, delayed = sc.depth()
    except Exception:  # noqa: BLE001 - the emulator may be restarting
        return False
    return visible + inflight + delayed == 0


SCENARIOS = {"marathon": marathon}
