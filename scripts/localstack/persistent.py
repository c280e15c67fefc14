"""Run LocalStack (community, host mode) with its SQS state kept across a graceful restart.

    PII_INGEST_EMULATOR_PERSIST=DIR python scripts/localstack/persistent.py

Community LocalStack keeps SQS in memory only (PERSISTENCE=1 needs Pro), so a plain restart loses every
queue and message, which real SQS never does. This launcher runs LocalStack's own runtime
(localstack.runtime.main) in this process and:

- before the runtime starts serving, loads DIR/sqs-state.pickle (if present) into
  localstack.services.sqs.models.sqs_stores: queues with their visible, in-flight (receipt handles,
  visibility deadlines) and delayed messages, plus the recently-deleted queue names;
- after the runtime has stopped (SIGTERM/SIGINT: the gateway no longer serves and the SQS provider's
  worker thread has stopped, so nothing mutates the stores any more), saves them back atomically
  (temp file, fsync, rename, fsync of DIR).

A loaded snapshot is renamed to sqs-state.pickle.loaded: if the emulator then dies without a graceful stop
(SIGKILL), the next start begins empty (queues missing, loudly) instead of silently reviving stale
messages. Deadlines are wall-clock times, so messages whose visibility timeout or delay ran out while the
emulator was down are visible right after the restart, as with a real SQS outage.

Not saved: SNS (topics, subscriptions), message move tasks, and every other service.
"""

import copyreg
import os
import pickle
import sys
import threading
import time

SNAPSHOT = "sqs-state.pickle"
FORMAT = 1


def _restore_queue(cls, state):
    """Rebuilds an SqsQueue: a fresh mutex and fresh callables for the computed attributes."""
    queue = cls.__new__(cls)
    queue.__dict__.update(state)
    queue.mutex = threading.RLock()
    for name, value in queue.default_attributes().items():
        if callable(value):
            queue.attributes[name] = value
    return queue


def _reduce_queue(queue):
    # The mutex cannot be pickled, and the ApproximateNumberOf* attributes are lambdas bound to the queue.
    state = queue.__dict__.copy()
    del state["mutex"]
    state["attributes"] = {k: v for k, v in queue.attributes.items() if not callable(v)}
    return _restore_queue, (type(queue), state)


def _restore_message_queue(cls, items):
    """Rebuilds the queue.Queue of visible messages (or FIFO message groups), not shut down."""
    q = cls()
    q.queue.extend(items)  # a heap list stays a heap; a deque keeps its order
    return q


def _reduce_message_queue(q):
    # Its locks and conditions cannot be pickled, and the provider's on_before_stop has already called
    # shutdown() on it, which a restored queue must not inherit (receives would return nothing).
    with q.mutex:
        items = list(q.queue)
    return _restore_message_queue, (type(q), items)


class SnapshotPickler(pickle.Pickler):
    """The C pickler with reducers for the SQS classes that hold locks.

    Not localstack.state.pickle: its dill Pickler is pure Python (100,000 messages took 16 s to save
    against 2.4 s here, and emulator.sh stop sends KILL after a grace period), and community LocalStack
    registers no reducers for SQS anyway. The format is plain pickle, so dill can read it too.
    """

    dispatch_table = copyreg.dispatch_table.copy()

    @classmethod
    def register(cls):
        from localstack.services.sqs.models import FifoQueue, StandardQueue
        from localstack.services.sqs.queue import InterruptiblePriorityQueue, InterruptibleQueue

        # dispatch_table matches exact types only, hence every concrete class.
        for queue_cls in (StandardQueue, FifoQueue):
            cls.dispatch_table[queue_cls] = _reduce_queue
        for q_cls in (InterruptibleQueue, InterruptiblePriorityQueue):
            cls.dispatch_table[q_cls] = _reduce_message_queue


def log(msg):
    sys.stdout.write(f"persistent: {msg}\n")
    sys.stdout.flush()


def load(directory):
    """Loads DIR/sqs-state.pickle into sqs_stores; returns the number of messages, or None if absent."""
    from localstack.services.sqs.models import sqs_stores

    path = os.path.join(directory, SNAPSHOT)
    if not os.path.exists(path):
        log(f"no snapshot at {path}; starting empty")
        return None
    started = time.monotonic()
    with open(path, "rb") as f:
        snapshot = pickle.load(f)
    if snapshot.get("format") != FORMAT:
        raise SystemExit(f"persistent: {path}: format {snapshot.get('format')!r}, expected {FORMAT}")
    messages = 0
    for account_id, region, queues, deleted in snapshot["stores"]:
        store = sqs_stores[account_id][region]
        store.queues = queues
        store.deleted = deleted
        messages += sum(count_messages(q) for q in queues.values())
    os.replace(path, path + ".loaded")
    log(
        f"loaded {len(snapshot['stores'])} store(s), {messages} message(s) from {path} "
        f"in {time.monotonic() - started:.2f} s"
    )
    return messages


def count_messages(queue):
    return (
        queue.approx_number_of_messages
        + queue.approx_number_of_messages_not_visible
        + queue.approx_number_of_messages_delayed
    )


def save(directory):
    """Writes sqs_stores to DIR/sqs-state.pickle atomically; returns the number of messages."""
    from localstack.services.sqs.models import sqs_stores

    started = time.monotonic()
    stores = [
        (account_id, region, store.queues, store.deleted)
        for account_id, region, store in sqs_stores.iter_stores()
    ]
    messages = sum(count_messages(q) for _, _, queues, _ in stores for q in queues.values())
    path = os.path.join(directory, SNAPSHOT)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "wb") as f:
        snapshot = {"format": FORMAT, "saved_at": time.time(), "stores": stores}
        SnapshotPickler(f, protocol=pickle.HIGHEST_PROTOCOL).dump(snapshot)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # makes the rename itself durable
    finally:
        os.close(dir_fd)
    log(
        f"saved {len(stores)} store(s), {messages} message(s) to {path} "
        f"({os.path.getsize(path)} bytes) in {time.monotonic() - started:.2f} s"
    )
    return messages


def main():
    directory = os.environ.get("PII_INGEST_EMULATOR_PERSIST", "")
    if not directory:
        raise SystemExit("persistent: set PII_INGEST_EMULATOR_PERSIST to the snapshot directory")
    os.makedirs(directory, exist_ok=True)
    SnapshotPickler.register()
    load(directory)  # before the runtime exists: no request can see an empty store

    from localstack.runtime import main as runtime_main

    try:
        runtime_main.main()  # returns by sys.exit once the runtime has shut down
    finally:
        save(directory)


if __name__ == "__main__":
    # Run as a script this module is __main__; imported under its own name (its folder is sys.path[0]),
    # the snapshot refers to persistent._restore_*, which any reader with that folder on its path finds.
    import persistent

    persistent.main()
