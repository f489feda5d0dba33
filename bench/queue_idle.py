"""Database load of idle peptide-opt workers, in queries per second per worker.

Starts ``--workers`` workers on an empty queue with the default POLL_INTERVAL and
LEASE_SECONDS, waits until they are registered and settled, then counts over
``--seconds`` two figures:

- the calls of the worker's SQL functions that are not called by other functions
  (pg_stat_user_functions with track_functions = pl): an idle worker runs nothing
  but these, so this is its query count;
- the database's transactions (pg_stat_database, committed plus rolled back), an
  upper bound that also counts autovacuum's visits and this benchmark's own
  queries, after subtracting the rate measured over ``--baseline-seconds`` before
  the workers start.

Usage::

    .venv/bin/python bench/queue_idle.py [--workers 4] [--seconds 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg  # noqa: E402

from bench.queue_common import (  # noqa: E402
    ADMIN_URL,
    ProcessGroup,
    database_transactions,
    scratch_database,
    start_peptide_opt_workers,
)
from peptide_opt.queue.migrations import upgrade  # noqa: E402

# Each count opens a connection; its SELECTs are transactions of this database too.
_OWN_TRANSACTIONS_PER_COUNT = 2
# Statistics reach pg_stat_database up to a second after a backend's transaction.
_STATS_FLUSH_S = 2.0
# The functions a worker calls at top level; the recovery runs inside the heartbeat.
_TOP_LEVEL_FUNCTIONS = (
    "peptide_opt_heartbeat_v1",
    "peptide_opt_claim_v1",
    "peptide_opt_finish_v1",
    "peptide_opt_finish_and_claim_v1",
)


def function_calls(url: str) -> int:
    """Calls of the worker's top-level SQL functions so far."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("SELECT pg_stat_clear_snapshot()")
        row = connection.execute(
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions "
            "WHERE funcname = ANY (%s)",
            (list(_TOP_LEVEL_FUNCTIONS),),
        ).fetchone()
    return int(row[0])


def track_function_calls(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(ADMIN_URL, autocommit=True) as connection:
        connection.execute(
            psycopg.sql.SQL("ALTER DATABASE {} SET track_functions = 'pl'").format(
                psycopg.sql.Identifier(name)
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=4, help="idle workers")
    parser.add_argument(
        "--seconds", type=float, default=120.0, help="length of the count in seconds"
    )
    parser.add_argument(
        "--baseline-seconds",
        type=float,
        default=120.0,
        help="length of the count without workers, in seconds",
    )
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="queue-idle-") as folder:
        group = ProcessGroup(Path(folder))
        with scratch_database("idle") as url:
            upgrade(url)
            track_function_calls(url)
            # Autovacuum's visits and the statistics collector also run transactions
            # in the database: count them first, without workers, and subtract them.
            baseline_start = database_transactions(url)
            time.sleep(args.baseline_seconds + _STATS_FLUSH_S)
            baseline = (
                database_transactions(url)
                - baseline_start
                - _OWN_TRANSACTIONS_PER_COUNT
            ) / (args.baseline_seconds + _STATS_FLUSH_S)
            try:
                start_peptide_opt_workers(group, url, args.workers)
                time.sleep(5.0)
                before = database_transactions(url)
                calls_before = function_calls(url)
                time.sleep(args.seconds)
                time.sleep(_STATS_FLUSH_S)
                after = database_transactions(url)
                calls_after = function_calls(url)
            finally:
                group.stop()

    window_s = args.seconds + _STATS_FLUSH_S
    calls = calls_after - calls_before
    transactions = after - before - _OWN_TRANSACTIONS_PER_COUNT
    background = baseline * window_s
    print(
        f"peptide-opt idle load, {args.workers} workers, {window_s:g} s: "
        f"{calls} worker function calls = "
        f"{calls / window_s / args.workers:.3f} queries/s per worker (limit 0.1)"
    )
    print(
        f"  upper bound: {transactions} transactions, {background:.1f} of them "
        f"background ({baseline:.3f}/s without workers) = "
        f"{(transactions - background) / window_s / args.workers:.3f} per second "
        "per worker"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
