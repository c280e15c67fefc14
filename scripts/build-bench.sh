#!/usr/bin/env bash
# Builds pii-ingest and pii-bench in release mode and puts pii-bench beside pii-ingest in
# target/release/, where scripts/bench.sh and scripts/scale.sh run it and where it finds pii-ingest.
# pii-bench is a bench target (benches/pii-bench.rs) rather than a binary of the crate, so what only
# it needs (tempfile) stays a dev-dependency. Arguments go to both cargo calls (e.g. --quiet).
set -euo pipefail
cd "$(dirname -- "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bins "$@"
exe="$(cargo bench --locked --bench pii-bench --no-run --message-format=json "$@" | python3 -c '
import json, sys
for line in sys.stdin:
    message = json.loads(line)
    if message.get("reason") == "compiler-artifact" and message["target"]["name"] == "pii-bench" and message.get("executable"):
        print(message["executable"])
')"
[[ -n "$exe" ]] || { echo "build-bench: cargo named no pii-bench executable" >&2; exit 1; }
cp "$exe" target/release/pii-bench
