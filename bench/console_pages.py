"""What each console page costs with a big log (issue 10: under 300 ms with 1 million events).

    python -m bench.console_pages                    # 1 million events (what `make bench` runs)
    python -m bench.console_pages --events 200000    # quicker

Builds a store through loopwire's schema and triggers: `--events` events over 7 days from 50,000
people, with bodies a decoder reads — Customer.io messages, storefront views and orders (1 % are
orders), loopwire's audience entries and exits (2 %) and holdout assignments for everyone — each
routed to one or two destinations (98 % delivered, 1 % dead with four reasons, 1 % skipped, the last
1,000 pending), and folds its identity graph. Then runs `loopwire serve` on it (destinations paused, nothing leaves the machine),
logs in, and times each page over HTTP, median of 15, next to the same page on an empty store and
`/healthz`, measured in the same run; and what the experiments page's lift report (computed
in the background, web/lift_cache.py) costs to compute.
"""

from __future__ import annotations

import argparse
import sqlite3
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from bench.common import PYTHON, Result, free_port, report, serve
from loopwire.analysis.inputs import lift_report
from loopwire.config import parse_config
from loopwire.pipeline.identity_graph import Follower
from loopwire.store import SQLiteStore

TARGET_MS = 300.0
REPEAT = 15
PEOPLE = 50_000
WEEK_MS = 7 * 86_400_000
TOKEN = "bench-console-token-0123456789"
PAGES = {
    "overview": "/",
    "overview, 7 days": "/?range=7d",
    "destinations": "/destinations",
    "dead letters": "/dead-letters",
    "dead letters, one reason": "/dead-letters?destination=amplitude&reason=http_400_1",
    "audiences": "/audiences",
    "experiments (lift)": "/experiments",
    "identity": "/identity",
    "person": "/person?key=user-1234",
    "person, by email": "/person?key=user-1234%40example.com",
    "/api/status": "/api/status",
}
CONFIG = """
store: {{path: {path}}}
server: {{ingest_process: false}}
destinations:
  amplitude: {{type: amplitude, api_key: bench-key-0001, region: us, base_url: "http://127.0.0.1:9", paused: true}}
  segment: {{type: segment, write_key: bench-key-0002, region: us, base_url: "http://127.0.0.1:9", paused: true}}
  customerio: {{type: customerio, site_id: s, api_key: bench-key-0003, region: us, identifier: user_id, base_url: "http://127.0.0.1:9", paused: true}}
audiences:
  cart_abandoners: {{library: cart_abandoners, version: 1}}
experiments:
  cart_journey: {{name: Cart journey, salt: bench, holdout_percent: 10, conversion: Order Completed, revenue_property: revenue, window: 14d}}
"""

# One event per row of a recursive counter: x % 100 picks the kind (0: order, 1–2: audience change,
# 3–40: Customer.io message, the rest storefront views).
_EVENTS = """
WITH RECURSIVE c(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM c WHERE x < ?2),
rows AS (
  SELECT x, CAST(?3 + x * ?4 AS INTEGER) AS at, printf('user-%d', x % {people}) AS who,
    CASE WHEN x % 100 = 0 THEN 'order' WHEN x % 100 IN (1, 2) THEN 'audience'
         WHEN x % 100 < 41 THEN 'message' ELSE 'view' END AS what
  FROM c
)
INSERT INTO events (seq, id, source, kind, channel, metric, name, user_id, time_ms, received_ms, body)
SELECT x, printf('evt-%010d', x),
  CASE what WHEN 'message' THEN 'customerio' WHEN 'audience' THEN 'loopwire' ELSE 'segment' END,
  CASE what WHEN 'message' THEN 'message' ELSE 'track' END,
  CASE what WHEN 'message' THEN 'email' END,
  CASE what WHEN 'message' THEN 'sent' END,
  CASE what WHEN 'order' THEN 'Order Completed' WHEN 'view' THEN 'Product Viewed'
       WHEN 'audience' THEN CASE WHEN x % 100 = 1 THEN 'Entered Cart Abandon Segment' ELSE 'Exited Cart Abandon Segment' END END,
  who, at - 500, at,
  CAST(json_object(
    'id', printf('evt-%010d', x),
    'source', CASE what WHEN 'message' THEN 'customerio' WHEN 'audience' THEN 'loopwire' ELSE 'segment' END,
    'kind', CASE what WHEN 'message' THEN 'message' ELSE 'track' END,
    'channel', CASE what WHEN 'message' THEN 'email' END,
    'metric', CASE what WHEN 'message' THEN 'sent' END,
    'name', CASE what WHEN 'order' THEN 'Order Completed' WHEN 'view' THEN 'Product Viewed'
       WHEN 'audience' THEN CASE WHEN x % 100 = 1 THEN 'Entered Cart Abandon Segment' ELSE 'Exited Cart Abandon Segment' END END,
    'time_ms', at - 500, 'received_ms', at, 'user_id', who,
    'email', CASE what WHEN 'message' THEN who || '@example.com' END,
    'data', CASE what
      WHEN 'message' THEN json_object('identifiers', json_object('id', who, 'email', who || '@example.com'), 'subject', 'Your cart')
      WHEN 'audience' THEN json_object('type', 'track', 'userId', who, 'properties', json_object('audience', 'cart_abandoners', 'audience_version', 1))
      WHEN 'order' THEN json_object('type', 'track', 'userId', who, 'event', 'Order Completed', 'properties', json_object('revenue', 40 + x % 60))
      ELSE json_object('type', 'track', 'userId', who, 'event', 'Product Viewed', 'properties', json_object('sku', x % 500)) END
  ) AS BLOB)
FROM rows
"""


def build(path: Path, events: int) -> None:
    SQLiteStore(path).close()  # loopwire's schema, tally and triggers
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA synchronous=OFF")
    start_ms = int(time.time() * 1000) - WEEK_MS
    step = WEEK_MS / events
    chunk = 250_000
    for first in range(1, events + 1, chunk):
        last = min(events, first + chunk - 1)
        conn.execute("BEGIN")
        conn.execute(_EVENTS.format(people=PEOPLE), (first, last, start_ms, step))
        conn.execute(
            "INSERT INTO outbox (dest, seq, state, enqueued_ms, next_ms, updated_ms)"
            " SELECT CASE seq % 3 WHEN 0 THEN 'amplitude' WHEN 1 THEN 'segment' ELSE 'customerio' END,"
            " seq, 'pending', received_ms, received_ms, received_ms FROM events WHERE seq BETWEEN ?1 AND ?2"
            " UNION ALL SELECT 'amplitude', seq, 'pending', received_ms, received_ms, received_ms FROM events"
            " WHERE seq BETWEEN ?1 AND ?2 AND seq % 3 = 1",
            (first, last),
        )
        conn.execute(
            "UPDATE outbox SET state = CASE WHEN seq % 100 = 7 THEN 'dead' WHEN seq % 100 = 8 THEN 'skipped'"
            " ELSE 'delivered' END, updated_ms = enqueued_ms + 800,"
            " reason = CASE WHEN seq % 100 = 7 THEN 'http_400_' || (seq / 100 % 4) WHEN seq % 100 = 8 THEN 'no_user_id' END,"
            ' response = CASE WHEN seq % 100 = 7 THEN \'400 {"code":400,"error":"Invalid field values"}\' END'
            " WHERE seq BETWEEN ? AND ? AND seq <= ?",
            (first, last, events - 1_000),
        )
        conn.execute("COMMIT")
    conn.execute(
        "WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n < ?)"
        " INSERT INTO members (audience, user_id, member, version, state, changes, since_ms)"
        " SELECT 'cart_abandoners', printf('user-%d', n), n % 5 = 0, 1, NULL, 1, ? FROM p",
        (PEOPLE - 1, start_ms),
    )
    conn.execute(
        "WITH RECURSIVE p(n) AS (SELECT 0 UNION ALL SELECT n + 1 FROM p WHERE n < ?)"
        " INSERT INTO assignments (experiment, user_id, grp, assigned_ms)"
        " SELECT 'cart_journey', printf('user-%d', n), CASE WHEN n % 10 = 0 THEN 'holdout' ELSE 'treatment' END, ? FROM p",
        (PEOPLE - 1, start_ms + 1000),
    )
    # the engine has read the whole log: it does not start on a million events during the run
    conn.execute("INSERT INTO cursors (name, seq) VALUES ('audiences', ?)", (events,))
    conn.close()
    store = SQLiteStore(path, recover=False)  # the identity graph, folded as the server's follower does
    try:
        follower = Follower(store)
        while follower.fold_once():
            pass
    finally:
        store.close()


def median_ms(client: httpx.Client, path: str) -> float:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        answer = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{path}: {answer.status_code} {answer.text[:300]}")
    return statistics.median(times)


def measure(folder: Path, store: Path, name: str) -> dict[str, float]:
    config = folder / f"{name}.yaml"
    config.write_text(CONFIG.format(path=store))
    port = free_port()
    argv = [PYTHON, "-m", "loopwire", "serve", "--config", str(config), "--port", str(port)]
    env = {"LOOPWIRE_CONSOLE_TOKEN": TOKEN}
    log = folder / f"{name}.log"
    with (
        serve(argv, port=port, log=log, env=env, timeout=120) as server,
        httpx.Client(base_url=server.url, timeout=60) as client,
    ):
        assert client.post("/login", data={"token": TOKEN}).status_code == 303
        for path in PAGES.values():  # warm: the first read of a page brings its pages of the file in
            client.get(path)
        # what is timed is the real page: the lift report (computed on the first view) and the person
        assert "Lift: Cart journey" in client.get("/experiments").text
        assert "Computed" in client.get("/experiments").text
        if name == "big":
            for key in ("person", "person, by email"):
                assert "Events and what each destination got" in client.get(PAGES[key]).text
        found = {label: median_ms(client, path) for label, path in PAGES.items()}
        found["/healthz"] = median_ms(client, "/healthz")
    return found


def lift_compute_ms(folder: Path, path: Path) -> float:
    """The experiments page shows a lift report computed in the background (web/lift_cache.py):
    what that computation costs, in this process, median of 3."""
    config = parse_config(CONFIG.format(path=path), env={})
    store = SQLiteStore(path, recover=False)
    try:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            lift_report(store, "cart_journey", config.experiments["cart_journey"])
            times.append((time.perf_counter() - started) * 1000)
    finally:
        store.close()
    return statistics.median(times)


def run(events: int = 1_000_000) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="loopwire-bench-console-") as tmp:
        folder = Path(tmp)
        big, empty = folder / "big.db", folder / "empty.db"
        started = time.perf_counter()
        build(big, events)
        built_s = time.perf_counter() - started
        SQLiteStore(empty).close()
        on_empty = measure(folder, empty, "empty")
        on_big = measure(folder, big, "big")
        lift_ms, lift_empty_ms = lift_compute_ms(folder, big), lift_compute_ms(folder, empty)
    details = {
        "events": events,
        "build_s": round(built_s, 1),
        "healthz_ms": round(on_big["/healthz"], 2),
        "command": "python -m bench.console_pages",
    }
    return [
        Result(
            name=f"console {label}, {events:,} events",
            value=on_big[label],
            unit="ms",
            baseline=on_empty[label],
            baseline_label="empty store",
            target=TARGET_MS,
            target_kind="value<=",
            higher_is_better=False,
            show_ratio=False,
            details=details if index == 0 else {},
        )
        for index, label in enumerate(PAGES)
    ] + [
        Result(
            name="lift report, computed in the background for the experiments page",
            value=lift_ms,
            unit="ms",
            baseline=lift_empty_ms,
            baseline_label="empty store",
            higher_is_better=False,
            show_ratio=False,
        ),
        Result(
            name="/healthz (same server)",
            value=on_big["/healthz"],
            unit="ms",
            baseline=on_empty["/healthz"],
            baseline_label="empty store",
            higher_is_better=False,
            show_ratio=False,
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Console pages on a big log.")
    parser.add_argument("--events", type=int, default=1_000_000)
    args = parser.parse_args()
    results = run(args.events)
    report(results)
    print(f"  {results[0].details}")


if __name__ == "__main__":
    main()
