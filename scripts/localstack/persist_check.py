"""Checks that an emulator restart with PII_INGEST_EMULATOR_PERSIST keeps the SQS state.

Run by persist-check.sh, which sets PII_INGEST_EMULATOR_PORT/PERSIST for a private emulator. Exits 1 with
"FAIL: ..." on the first broken expectation; prints every figure it checks.
"""

import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EMULATOR = os.path.join(REPO, "scripts", "emulator.sh")
PORT = os.environ["PII_INGEST_EMULATOR_PORT"]
ENDPOINT = f"http://127.0.0.1:{PORT}"
TOTAL = 1000
IN_FLIGHT = 100
VISIBILITY = 60  # seconds: longer than a restart (stop alone can take ~15 s), short enough to wait for
DELAY = 75  # seconds, for the delayed queue: still delayed after the restart


def client():
    return boto3.client(
        "sqs",
        endpoint_url=ENDPOINT,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(retries={"max_attempts": 1}, max_pool_connections=16),
    )


def fail(msg):
    print(f"FAIL: {msg}", flush=True)
    sys.exit(1)


def expect(cond, msg):
    if not cond:
        fail(msg)


def emulator(*args):
    started = time.monotonic()
    out = subprocess.run([EMULATOR, *args], capture_output=True, text=True)
    sys.stdout.write(out.stdout + out.stderr)
    print(f"(emulator.sh {' '.join(args)}: {time.monotonic() - started:.1f} s)")
    expect(out.returncode == 0, f"emulator.sh {' '.join(args)} exited {out.returncode}")
    return out.stdout + out.stderr


def counts(sqs, url):
    names = ["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"]
    attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=names)["Attributes"]
    return int(attrs[names[0]]), int(attrs[names[1]])


def send(sqs, url, first, count):
    def batch(start):
        end = min(start + 10, first + count)
        entries = [{"Id": str(i), "MessageBody": f"m{i}"} for i in range(start, end)]
        resp = sqs.send_message_batch(QueueUrl=url, Entries=entries)
        expect(not resp.get("Failed"), f"send_message_batch failed: {resp.get('Failed')}")

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(batch, range(first, first + count, 10)))


def receive_n(sqs, url, n, visibility):
    """Receives exactly n distinct messages; returns {body: receipt handle}."""
    got = {}
    while len(got) < n:
        resp = sqs.receive_message(
            QueueUrl=url, MaxNumberOfMessages=min(10, n - len(got)), VisibilityTimeout=visibility
        )
        for m in resp.get("Messages", []):
            expect(m["Body"] not in got, f"{m['Body']} received twice while in flight")
            got[m["Body"]] = m["ReceiptHandle"]
    return got


def drain(sqs, url, deadline):
    """Receives and deletes until empty (with nothing in flight); returns the bodies seen."""
    seen = set()
    while time.monotonic() < deadline:
        resp = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        msgs = resp.get("Messages", [])
        if not msgs:
            if counts(sqs, url) == (0, 0):
                return seen
            continue
        seen.update(m["Body"] for m in msgs)
        entries = [{"Id": str(i), "ReceiptHandle": m["ReceiptHandle"]} for i, m in enumerate(msgs)]
        resp = sqs.delete_message_batch(QueueUrl=url, Entries=entries)
        expect(not resp.get("Failed"), f"delete_message_batch failed: {resp.get('Failed')}")
    fail("queue not empty before the deadline")


def restart(sqs):
    """emulator.sh stop, prove the endpoint refuses connections, emulator.sh start; returns the output."""
    started = time.monotonic()
    out = emulator("stop")
    try:
        sqs.list_queues()
        fail("the emulator still answers after stop")
    except EndpointConnectionError:
        print("while stopped: connection refused (EndpointConnectionError)")
    out += emulator("start")
    print(f"restart (stop + start) took {time.monotonic() - started:.1f} s")
    return out


def check_restart(sqs):
    name = f"persist-check-{int(time.time())}"
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    delayed_attrs = {"DelaySeconds": str(DELAY)}
    delayed_url = sqs.create_queue(QueueName=name + "-delayed", Attributes=delayed_attrs)["QueueUrl"]
    send(sqs, url, 0, TOTAL)
    send(sqs, delayed_url, 0, 10)
    delayed_until = time.monotonic() + DELAY
    handles = receive_n(sqs, url, IN_FLIGHT, VISIBILITY)
    deadline = time.monotonic() + VISIBILITY
    before = counts(sqs, url)
    print(f"before restart: visible={before[0]} in_flight={before[1]} (sent {TOTAL}, received {IN_FLIGHT})")
    expect(before == (TOTAL - IN_FLIGHT, IN_FLIGHT), "unexpected counts before the restart")

    restart(sqs)

    expect(sqs.get_queue_url(QueueName=name)["QueueUrl"] == url, "queue URL changed")
    after = counts(sqs, url)
    print(f"after restart: queue URL unchanged; visible={after[0]} in_flight={after[1]} total={sum(after)}")
    expect(after == before, "the restart changed the counts")
    name_delayed = "ApproximateNumberOfMessagesDelayed"
    attrs = sqs.get_queue_attributes(QueueUrl=delayed_url, AttributeNames=[name_delayed])
    delayed = int(attrs["Attributes"][name_delayed])
    print(f"after restart: delayed queue holds {delayed} delayed message(s)")
    expect(delayed == 10, "delayed messages lost")
    expect(time.monotonic() < deadline - 1, "restart outlasted the visibility timeout; raise VISIBILITY")

    # 10 of the 100 old handles while the messages are still in flight.
    early = sorted(handles)[:10]
    for body in early:
        sqs.delete_message(QueueUrl=url, ReceiptHandle=handles.pop(body))
    print(f"deleted {len(early)} in-flight messages with their pre-restart receipt handles: ok; "
          f"counts now {counts(sqs, url)}")

    time.sleep(max(0.0, deadline - time.monotonic()) + 2)  # the update worker requeues once a second
    back = counts(sqs, url)
    print(f"after the visibility timeout: visible={back[0]} in_flight={back[1]}")
    expect(back == (TOTAL - len(early), 0), "the in-flight messages did not all come back")

    # The other 90 old handles, now that their messages are visible again (not yet re-received).
    outcomes = {"deleted": 0, "ReceiptHandleIsInvalid": 0}
    for handle in handles.values():
        try:
            sqs.delete_message(QueueUrl=url, ReceiptHandle=handle)
            outcomes["deleted"] += 1
        except ClientError as e:
            code = e.response["Error"]["Code"]
            expect("ReceiptHandleIsInvalid" in code, f"delete with an old handle: unexpected {code}")
            outcomes["ReceiptHandleIsInvalid"] += 1
    print(f"old receipt handles used after the messages came back ({len(handles)}): {outcomes}")
    print(f"counts now {counts(sqs, url)}")

    seen = drain(sqs, url, time.monotonic() + 120)
    gone = set(early) | set(handles) if outcomes["deleted"] else set(early)
    missing = {f"m{i}" for i in range(TOTAL)} - gone - seen
    print(f"drained {len(seen)} more; never seen: {len(missing)}; final counts {counts(sqs, url)}")
    expect(not missing and not (seen & gone), "messages lost, or deleted ones redelivered")
    expect(counts(sqs, url) == (0, 0), "queue not empty after deleting everything")

    time.sleep(max(0.0, delayed_until - time.monotonic()) + 2)
    delayed_seen = drain(sqs, delayed_url, time.monotonic() + 60)
    print(f"delayed queue: {len(delayed_seen)} message(s) delivered after their delay, then empty")
    expect(len(delayed_seen) == 10, "delayed messages did not all arrive")
    for u in (url, delayed_url):
        sqs.delete_queue(QueueUrl=u)


def check_timing(sqs, n):
    url = sqs.create_queue(QueueName=f"persist-timing-{int(time.time())}")["QueueUrl"]
    started = time.monotonic()
    send(sqs, url, 0, n)
    print(f"timing: sent {n} messages in {time.monotonic() - started:.1f} s")
    out = restart(sqs)
    for line in out.splitlines():
        if "saved " in line or "loaded " in line:
            print(f"timing: {line.split('persistent: ')[-1].removeprefix('emulator: ')}")
    after = counts(sqs, url)
    print(f"timing: after restart visible={after[0]} in_flight={after[1]}")
    expect(after == (n, 0), "messages lost in the timed restart")
    sqs.delete_queue(QueueUrl=url)


def main():
    big = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    emulator("start")
    sqs = client()
    check_restart(sqs)
    if big:
        check_timing(sqs, big)
    print("persist-check: ok")


if __name__ == "__main__":
    main()
