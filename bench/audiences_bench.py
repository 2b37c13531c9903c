"""Audiences at scale: a full recompute of 10 library audiences, and the engine's incremental update.

Issue 4's figures: a full recompute of 10 audiences over 10 million events and 1 million profiles in
under 30 s, and the incremental update for 1,000 new events in under 1 s.

The store is a real SQLite file, filled with a seeded synthetic log spread over the last 120 days
and appended in time order, as a live log is (so one person's events lie all over the file):
- Customer.io message chains on email, sms and push: sent, delivered, opened (email, push), clicked
  (on a cart link for some campaigns; some email clicks by link scanners, `machine: true`);
- storefront (Segment) `Checkout Started` with value and products, `Order Completed` with revenue;
- Amplitude app sessions (Session Start with user properties, product views, add to cart, search);
- one Segment identify per profile, with traits.
People's activity is skewed (a few heavy users, a long tail), about 10 events per profile.
The build, and only the build, runs with `journal_mode=OFF` and `synchronous=OFF`, in 50,000-row
`executemany` transactions fed by a generator process, with `events_user` and `events_name`
created after the load from their own definitions. Then the store is opened as loopwire opens it
(WAL, `synchronous=FULL`).

The logs of 1 M events and of the issue's scale are kept under bench/out/audiences/ (not committed),
named by the generator's version, the store's schema, the seed and the scale, so a later run
measures them without building them again (≈ 3–3.5 minutes and 7 GB at 10 M). The incremental
update's writes are undone afterwards; a run stopped in between leaves the log marked dirty, and the
next run rebuilds it.
Before measuring, the file is read once in order (untimed), so both sides find it in the page cache.

Figures:
1. Full recompute (`loopwire.audiences.recompute.recompute`, 2 worker processes) in events/s. The
   baseline is measured in the same run: the same parts of the log over the same number of workers,
   read the way the recompute reads them (one pass over its part of the table per worker), every
   event of a person returned and its body decoded with `decode_event`, and nothing else. The ratio
   says how the recompute compares with merely reading and decoding the log. Each side runs
   `--rounds` times (fewer if the next round would overrun the time bound), alternating, and keeps
   its best. The target is the rate that does 10 M events in 30 s.
2. At the issue's scale, the same in seconds, MEASURED; at a smaller scale, projected linearly to
   10 M events / 1 M profiles and labelled as a projection.
3. Incremental update: the engine is caught up (its cursor at the end of the log; one warm-up event
   for each of ~1,000 active people, evaluated and recorded). Then, three times: 1,000 new events for
   those people are appended, and one `Engine.run_once()` is timed. The figure is the median. The
   baseline is reading and decoding those 1,000 events.

Scale: with no `--events`, it measures at the issue's scale when that log is cached. Otherwise at
1 M events / 100 k profiles, then at the issue's scale if building and measuring it fits the time
bound, else at the largest whole number of millions that fits. `--events 10000000` measures the
issue's scale whatever the bound, building and caching its log first if need be.

    python -m bench.audiences_bench [--events N [--profiles P]] [--workers 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import multiprocessing
import os
import random
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import OUT, Result, report

if TYPE_CHECKING:
    from loopwire.audiences.definitions import AudienceDefinition
    from loopwire.audiences.recompute import RecomputeStats
    from loopwire.model import Event
    from loopwire.store import SQLiteStore

DAY_MS = 86_400_000
HOUR_MS = 3_600_000
DAYS = 120
NOW_MS = 1_795_435_200_000  # 2026-11-23T12:00:00Z: fixed, so the run is reproducible
FULL_TARGET_S = 30.0
INCREMENTAL_TARGET_S = 1.0
ISSUE_EVENTS = 10_000_000
ISSUE_PROFILES = 1_000_000
NEW_EVENTS = 1_000
TIME_BOUND_S = 170.0  # the whole benchmark, build included, stays under 3 minutes
GENERATOR_VERSION = 1  # raise it whenever `Log` generates something else: cached logs are rebuilt then
SEED = 4  # the log's seed
CACHE = OUT / "audiences"  # built logs kept between runs
CACHED_SCALES = {(1_000_000, 100_000), (ISSUE_EVENTS, ISSUE_PROFILES)}
AUDIENCES = (
    "high_intent_engagers",
    "fatigue_risk",
    "cart_abandoners",
    "cart_click_no_purchase",
    "lapsed_30_60",
    "lapsed_60_90",
    "lapsed_90_plus",
    "vip",
    "first_time_buyers",
    "recent_purchasers",
)


def audiences() -> dict[str, AudienceDefinition]:
    from loopwire.audiences.definitions import AudienceDefinition
    from loopwire.audiences.library import resolve_audiences

    given = {name: AudienceDefinition(version=1, library=name) for name in AUDIENCES}
    # as the docs suggest: recent purchasers are suppressed from cart recovery
    given["cart_abandoners"] = AudienceDefinition(
        version=1, library="cart_abandoners", exclude=["recent_purchasers"]
    )
    return resolve_audiences(given)


# ---- the synthetic log ----------------------------------------------------------------------------

_CIO = (
    '{"id":"%s","source":"customerio","kind":"message","channel":"%s","metric":"%s","time_ms":%d,'
    '"received_ms":%d,"user_id":"%s","email":"%s@example.com","data":{"customer_id":"%s",'
    '"identifiers":{"id":"%s","email":"%s@example.com","cio_id":"c%s"},"delivery_id":"%s",'
    '"campaign_id":%d,"action_id":%d,"journey_id":"01GW20GXAAXBKZD8J96M8FNV3R","parent_action_id":%d,'
    '"recipient":"%s"%s}}'
)
_SEGMENT_TRACK = (
    '{"id":"%s","source":"segment","kind":"track","name":"%s","time_ms":%d,"received_ms":%d,'
    '"user_id":"%s","data":{"type":"track","event":"%s","userId":"%s","messageId":"%s",'
    '"timestamp":"%s","properties":%s,"context":{"library":{"name":"analytics-node","version":"2.1.0"},'
    '"ip":"203.0.113.%d","userAgent":"Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)"}}}'
)
_SEGMENT_IDENTIFY = (
    '{"id":"%s","source":"segment","kind":"identify","time_ms":%d,"received_ms":%d,"user_id":"%s",'
    '"email":"%s@example.com","data":{"type":"identify","userId":"%s","messageId":"%s","timestamp":"%s",'
    '"traits":{"email":"%s@example.com","first_name":"Ada","plan":"%s","country":"%s",'
    '"created_at":"%s"},"context":{"library":{"name":"analytics-node","version":"2.1.0"}}}}'
)
_AMPLITUDE = (
    '{"id":"%s","source":"amplitude","kind":"track","name":"%s","time_ms":%d,"received_ms":%d,'
    '"user_id":"%s","anonymous_id":"%s","data":{"event_type":"%s","user_id":"%s","device_id":"%s",'
    '"time":%d,"insert_id":"%s","session_id":%d,"platform":"%s","os_name":"%s","app_version":"4.2.%d",'
    '"country":"%s","event_properties":%s%s}}'
)
_CAMPAIGNS = (412, 415, 420, 431, 447, 502)
_CHANNELS = ("email",) * 6 + ("sms",) * 2 + ("push",) * 2
_APP_EVENTS = (
    ("Session Start", '{"source":"organic"}'),
    ("Product Viewed", '{"product_id":"SKU-%d","category":"tees","price":%d}'),
    ("Product Viewed", '{"product_id":"SKU-%d","category":"hats","price":%d}'),
    ("Add to Cart", '{"product_id":"SKU-%d","quantity":1,"price":%d}'),
    ("Search", '{"query":"summer %d","results":%d}'),
)
_COUNTRIES = ("US", "GB", "DE", "FR", "CA")
_PLATFORMS = (("iOS", "ios"), ("Android", "android"), ("Web", "web"))


def _iso(ms: int) -> str:
    seconds, millis = divmod(ms, 1000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{millis:03d}Z"


def _products(rng: random.Random) -> tuple[str, float]:
    items = []
    total = 0.0
    for _ in range(1 + int(rng.random() * 3)):
        price = rng.choice((18.0, 24.0, 35.0, 49.0, 89.0))
        total += price
        items.append(f'{{"sku":"SKU-{rng.randrange(500)}","price":{price},"quantity":1}}')
    return "[" + ",".join(items) + "]", total


Row = tuple[str, str, str | None, str | None, str | None, str, int, int, bytes, str]  # an `events` row


class Log:
    """Seeded synthetic events as rows of the `events` table (body: the Event's JSON, as
    `encode_event` writes it). People are `cust_0000000` …, with skewed activity (a few heavy users,
    a long tail); an episode is one person's message chain, shopping session or app session."""

    def __init__(self, events: int, profiles: int, seed: int = 4, first_serial: int = 0) -> None:
        self.events = events
        self.profiles = profiles
        self.rng = random.Random(seed)
        self.serial = first_serial
        self.start_ms = NOW_MS - DAYS * DAY_MS

    def _id(self, prefix: str) -> str:
        self.serial += 1
        return f"{prefix}{self.serial:012d}"

    @staticmethod
    def user(n: int) -> str:
        return f"cust_{n:07d}"

    def pick(self) -> str:
        return self.user(int(self.profiles * self.rng.random() ** 1.6))

    def message_chain(self, user: str, t: int) -> list[Row]:
        rng = self.rng
        channel = rng.choice(_CHANNELS)
        campaign = rng.choice(_CAMPAIGNS)
        delivery = self._id("D")
        to = f"{user}@example.com" if channel == "email" else "+15550100" if channel == "sms" else user
        rows = [self._cio(user, channel, "sent", t, campaign, delivery, to, "")]
        if rng.random() < 0.95:
            t += 2_000 + int(rng.random() * 60_000)
            rows.append(self._cio(user, channel, "delivered", t, campaign, delivery, to, ""))
            opened = channel != "sms" and rng.random() < (0.35 if channel == "email" else 0.12)
            if opened:
                t += int(rng.random() * 6 * HOUR_MS)
                rows.append(self._cio(user, channel, "opened", t, campaign, delivery, to, ""))
            if (opened or channel == "sms") and rng.random() < 0.3:
                t += int(rng.random() * 20 * 60_000)
                cart = campaign == 412 or rng.random() < 0.2
                href = "https://shop.example.com/" + ("cart?utm_campaign=recover" if cart else "new-in")
                machine = "true" if channel == "email" and rng.random() < 0.1 else "false"
                extra = f',"href":"{href}","link_id":{rng.randrange(1, 9)},"machine":{machine}'
                rows.append(self._cio(user, channel, "clicked", t, campaign, delivery, to, extra))
        return rows

    def _cio(
        self, user: str, channel: str, metric: str, t: int, campaign: int, delivery: str, to: str, extra: str
    ) -> Row:
        event_id = self._id("01JC")
        number = user[5:]
        body = _CIO % (
            event_id,
            channel,
            metric,
            t,
            t + 350,
            user,
            user,
            user,
            user,
            user,
            number,
            delivery,
            campaign,
            campaign % 97,
            campaign % 89,
            to,
            extra,
        )
        return ("customerio", "message", channel, metric, None, user, t, t + 350, body.encode(), event_id)

    def shopping(self, user: str, t: int) -> list[Row]:
        rng = self.rng
        products, total = _products(rng)
        rows = [self._track(user, "Checkout Started", t, f'{{"value":{total},"products":{products}}}')]
        if rng.random() < 0.6:
            t += 60_000 + int(rng.random() * 40 * 60_000)
            props = (
                f'{{"order_id":"{self._id("O")}","revenue":{round(total * 0.92, 2)},"value":{total},'
                f'"currency":"USD","products":{products}}}'
            )
            rows.append(self._track(user, "Order Completed", t, props))
        return rows

    def _track(self, user: str, name: str, t: int, properties: str) -> Row:
        event_id = self._id("m-")
        body = _SEGMENT_TRACK % (
            event_id,
            name,
            t,
            t + 120,
            user,
            name,
            user,
            event_id,
            _iso(t),
            properties,
            self.rng.randrange(256),
        )
        return ("segment", "track", None, None, name, user, t, t + 120, body.encode(), event_id)

    def identify(self, user: str, t: int) -> Row:
        event_id = self._id("m-")
        rng = self.rng
        plan = "pro" if rng.random() < 0.2 else "free"
        moment = _iso(t)
        body = _SEGMENT_IDENTIFY % (
            event_id,
            t,
            t + 120,
            user,
            user,
            user,
            event_id,
            moment,
            user,
            plan,
            rng.choice(_COUNTRIES),
            moment,
        )
        return ("segment", "identify", None, None, None, user, t, t + 120, body.encode(), event_id)

    def app_session(self, user: str, t: int) -> list[Row]:
        rng = self.rng
        device = f"dev-{user[5:]}-{int(rng.random() * 2)}"
        platform, os_name = rng.choice(_PLATFORMS)
        country = rng.choice(_COUNTRIES)
        rows: list[Row] = []
        for step in range(1 + int(rng.random() * 4)):
            name, template = _APP_EVENTS[0 if step == 0 else 1 + int(rng.random() * 4)]
            props = template if step == 0 else template % (rng.randrange(500), rng.randrange(10, 90))
            extra = f',"user_properties":{{"$set":{{"plan":"pro","sessions":{step}}}}}' if step == 0 else ""
            insert_id = self._id("a-")
            body = _AMPLITUDE % (
                insert_id,
                name,
                t,
                t + 900,
                user,
                device,
                name,
                user,
                device,
                t,
                insert_id,
                t - t % 1_800_000,
                platform,
                os_name,
                step,
                country,
                props,
                extra,
            )
            rows.append(("amplitude", "track", None, None, name, user, t, t + 900, body.encode(), insert_id))
            t += 5_000 + int(rng.random() * 90_000)
        return rows

    def episode(self, user: str, t: int) -> list[Row]:
        kind = self.rng.random()
        if kind < 0.62:
            return self.message_chain(user, t)
        if kind < 0.78:
            return self.shopping(user, t)
        return self.app_session(user, t)

    def days(self) -> Iterator[list[Row]]:
        """Day by day, oldest first, each day in time order: the identifies of the profiles first
        seen that day (spread evenly over the 120 days), then the day's episodes."""
        rng = self.rng
        per_day = (self.events - self.profiles) / DAYS
        produced = 0
        signup = list(range(self.profiles))
        rng.shuffle(signup)
        for day in range(DAYS):
            day_ms = self.start_ms + day * DAY_MS
            rows = [
                self.identify(self.user(n), day_ms + int(rng.random() * DAY_MS))
                for n in signup[day * self.profiles // DAYS : (day + 1) * self.profiles // DAYS]
            ]
            goal = round(per_day * (day + 1))
            while produced < goal:
                episode = self.episode(self.pick(), day_ms + int(rng.random() * DAY_MS))
                rows += [row for row in episode if row[6] < NOW_MS]
                produced += len(episode)
            rows.sort(key=lambda row: row[6])
            yield rows


def _produce(events: int, profiles: int, out: Connection) -> None:
    """The build's producer process: generates the log while the parent inserts."""
    batch: list[Row] = []
    for rows in Log(events, profiles, seed=SEED).days():
        batch += rows
        if len(batch) >= 50_000:
            out.send(batch)
            batch = []
    out.send(batch)
    out.send(None)
    out.close()


def build(path: Path, events: int, profiles: int) -> dict[str, Any]:
    """The store's schema by loopwire's own migrations, the synthetic log loaded fast, then indexed."""
    from loopwire.store.migrations import migrate

    began = time.perf_counter()
    # readable by its owner only, as loopwire creates a store (else each worker's SQLiteStore warns)
    path.touch(0o600)
    conn = sqlite3.connect(str(path), isolation_level=None)
    migrate(conn)
    # Build only: no rollback journal and no fsync, and the secondary indexes of `events` dropped and
    # re-created from their own definitions after the load (one sort, not millions of b-tree inserts).
    conn.execute("PRAGMA journal_mode=OFF")
    conn.execute("PRAGMA synchronous=OFF")
    conn.execute("PRAGMA cache_size=-262144")
    indexes = conn.execute(
        "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events' AND sql IS NOT NULL"
    ).fetchall()
    for name, _ in indexes:
        conn.execute(f"DROP INDEX {name}")
    insert = (
        "INSERT INTO events (source, kind, channel, metric, name, user_id, time_ms, received_ms, body, id)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    )
    receive, send = multiprocessing.get_context("spawn").Pipe(duplex=False)
    producer = multiprocessing.get_context("spawn").Process(
        target=_produce, args=(events, profiles, send), daemon=True
    )
    producer.start()
    send.close()
    count = 0
    inserting = 0.0
    try:
        while (batch := receive.recv()) is not None:
            started = time.perf_counter()
            conn.execute("BEGIN")
            conn.executemany(insert, batch)
            conn.execute("COMMIT")
            inserting += time.perf_counter() - started
            count += len(batch)
    finally:
        producer.join(timeout=10)
        if producer.is_alive():
            producer.kill()
    loaded = time.perf_counter() - began
    for _, sql in indexes:
        conn.execute(sql)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    return {
        "how": "build only: journal_mode=OFF, synchronous=OFF, 50k-row executemany transactions fed by a"
        " generator process, events_user/events_name created after the load; then opened as loopwire does",
        "events": count,
        "profiles": profiles,
        "load_s": round(loaded, 1),
        "of_which_insert_s": round(inserting, 1),
        "index_s": round(time.perf_counter() - began - loaded, 1),
        "build_s": round(time.perf_counter() - began, 1),
        "size_mb": round(path.stat().st_size / 1e6),
        "events_per_s": round(count / (time.perf_counter() - began)),
    }


# ---- the full recompute and its baseline -----------------------------------------------------------


def plain_range(path: str, first: int, last: int) -> int:
    """The baseline's work on one part of the log, read as the recompute reads it (one pass over the
    rows with seqs in [first, last]): every event of a person returned, every body decoded, nothing
    else."""
    from loopwire.model import decode_event
    from loopwire.store.scans import read_connection

    conn = read_connection(path)
    count = 0
    collecting = gc.isenabled()
    gc.disable()  # as the recompute does
    try:
        for (body,) in conn.execute(
            "SELECT body FROM events NOT INDEXED WHERE seq BETWEEN ? AND ? AND user_id IS NOT NULL"
            " AND source != 'loopwire'",
            (first, last),
        ):
            decode_event(body)
            count += 1
    finally:
        if collecting:
            gc.enable()
        conn.close()
    return count


def plain_pass(path: str, workers: int) -> tuple[float, int]:
    """The same parts of the log over the same number of spawned workers as the recompute."""
    from loopwire.audiences.recompute import seq_parts
    from loopwire.store.base import ScanTarget

    began = time.perf_counter()
    parts, _ = seq_parts(ScanTarget("sqlite", path), workers)
    if len(parts) > 1:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            count = sum(pool.map(plain_range, [path] * len(parts), *zip(*parts, strict=True)))
    else:
        count = plain_range(path, *parts[0])
    return time.perf_counter() - began, count


def warm(path: Path) -> float:
    """Read the file once, in order, untimed by the figures: a log of several GB may have left the
    page cache since it was built or last measured, and both sides should find it there."""
    began = time.perf_counter()
    with path.open("rb") as file:
        while file.read(1 << 24):
            pass
    return time.perf_counter() - began


def full_recompute(store: SQLiteStore, workers: int, rounds: int, deadline: float) -> dict[str, Any]:
    """`rounds` rounds (fewer when the next would end past `deadline`; at least one), each side once
    per round, the order alternating; the best of each side is kept."""
    from loopwire.audiences.recompute import recompute

    definitions = audiences()
    best: dict[str, float] = {"recompute": float("inf"), "plain": float("inf")}
    every: dict[str, list[float]] = {"recompute": [], "plain": []}
    stats: RecomputeStats | None = None
    read = 0
    for number in range(rounds):
        started = time.perf_counter()
        for name in ("plain", "recompute") if number % 2 == 0 else ("recompute", "plain"):
            gc.collect()
            if name == "plain":
                seconds, read = plain_pass(store.path, workers)
            else:
                stats = recompute(store, definitions, NOW_MS, workers=workers)
                seconds = stats.seconds
            every[name].append(round(seconds, 2))
            best[name] = min(best[name], seconds)
        if time.perf_counter() + (time.perf_counter() - started) > deadline:
            break
    assert stats is not None
    return {"best": best, "every": every, "stats": stats, "plain_events": read}


# ---- the incremental update -----------------------------------------------------------------------


def _active_people(path: str, count: int, seed: int) -> list[str]:
    """`count` distinct existing people, drawn by their activity (the users of random events)."""
    conn = sqlite3.connect(path)
    try:
        (low,) = conn.execute("SELECT MIN(seq) FROM events").fetchone()
        (high,) = conn.execute("SELECT MAX(seq) FROM events").fetchone()
        rng = random.Random(seed)
        chosen: dict[str, None] = {}
        while len(chosen) < count:
            seqs = [rng.randint(low, high) for _ in range(count)]
            for start in range(0, len(seqs), 500):
                chunk = seqs[start : start + 500]
                for (user,) in conn.execute(
                    f"SELECT user_id FROM events WHERE seq IN ({','.join('?' * len(chunk))})", chunk
                ):
                    if len(chosen) < count:
                        chosen[user] = None
        return list(chosen)
    finally:
        conn.close()


def new_events(people: Sequence[str], until_ms: int, log: Log) -> list[Event]:
    """One new event per person, in the log's mix, during the minute before `until_ms`."""
    from loopwire.model import decode_event

    found = []
    for user in people:
        rows = log.episode(user, until_ms - 60_000 + int(log.rng.random() * 50_000))
        row = rows[int(log.rng.random() * len(rows))]
        found.append(decode_event(row[8]))
    return found


async def incremental(store: SQLiteStore, rounds: int) -> dict[str, Any]:
    """Catch the engine up (cursor at the end of the log, then one warm-up event for each of the
    people, evaluated and recorded), then per round: 1,000 new events for the same people, one
    `run_once` timed, beside reading and decoding those events."""
    from loopwire.audiences.engine import CURSOR, Engine
    from loopwire.model import decode_event
    from loopwire.store import experiments as queries

    async def ingest(events: Sequence[Event]) -> list[bool]:
        return await store.append(events, [[] for _ in events])

    async def drain() -> None:
        while await engine.run_once():
            pass

    now = [NOW_MS - 60_000]
    engine = Engine(store, {}, ingest, audiences(), lambda: now[0] / 1000)
    try:
        last = store.run(lambda c: c.execute("SELECT MAX(seq) FROM events").fetchone()[0])
        queries.record(store, CURSOR, last, [])
        people = _active_people(store.path, NEW_EVENTS, seed=9)
        log = Log(0, 0, seed=21, first_serial=10**11)
        store.append_sync(new_events(people, now[0], log), [[] for _ in people])
        await drain()
        timings: list[dict[str, Any]] = []
        for _ in range(rounds):
            now[0] += 60_000
            batch = new_events(people, now[0], log)
            store.append_sync(batch, [[] for _ in batch])
            after = queries.cursor(store, CURSOR)
            gc.collect()
            started = time.perf_counter()
            rows = store.scan_events(0, after, 2 * NEW_EVENTS)
            for _, body in rows:
                decode_event(body)
            plain_s = time.perf_counter() - started
            before = store.event_count()
            gc.collect()
            started = time.perf_counter()
            work = await engine.run_once()
            seconds = time.perf_counter() - started
            timings.append(
                {
                    "run_once_s": round(seconds, 3),
                    "plain_s": round(plain_s, 4),
                    "work": work,
                    "exports": store.event_count() - before,
                }
            )
            await drain()  # the engine reads back its own exports: untimed
        histories = store.run(
            lambda c: c.execute(
                f"SELECT COUNT(*) FROM events WHERE user_id IN ({','.join('?' * len(people))})"
                " AND source != 'loopwire'",
                people,
            ).fetchone()[0]
        )
        return {"rounds": timings, "people": len(set(people)), "their_events": histories}
    finally:
        await engine.stop()


# ---- one scale ------------------------------------------------------------------------------------


def cache_path(events: int, profiles: int) -> Path:
    """Where the log of this scale is kept between runs (bench/out/ is not committed), named by what
    decides its contents: the generator's version, the store's schema (its number of migrations),
    the seed and the scale."""
    from loopwire.store.migrations import MIGRATIONS

    return CACHE / f"log-v{GENERATOR_VERSION}-schema{len(MIGRATIONS)}-seed{SEED}-{events}-{profiles}.db"


def _info(path: Path) -> Path:
    return path.with_suffix(".json")  # the build's figures; present only while the log is clean


def is_cached(events: int, profiles: int) -> bool:
    path = cache_path(events, profiles)
    return (events, profiles) in CACHED_SCALES and path.exists() and _info(path).exists()


def open_log(directory: Path, events: int, profiles: int) -> tuple[Path, dict[str, Any], bool]:
    """The log at this scale, its build's figures, and whether it is a cached one: from the cache when
    it holds it; else built, into the cache for the scales kept there (1 M and the issue's)."""
    if (events, profiles) not in CACHED_SCALES:
        path = directory / f"audiences-{events}.db"
        return path, {**build(path, events, profiles), "cached": False}, False
    path = cache_path(events, profiles)
    if is_cached(events, profiles):
        path.chmod(0o600)  # kept by an older run, which built it readable by others
        return path, {**json.loads(_info(path).read_text()), "cached": True}, True
    CACHE.mkdir(parents=True, exist_ok=True)
    current = path.stem.split("-seed")[0]  # the generator's version and the schema
    for stale in CACHE.glob("log-*"):  # this scale left half-built or dirty; other versions' logs
        if stale.name.startswith(f"{path.stem}.") or not stale.name.startswith(f"{current}-seed"):
            stale.unlink()
    built = build(path, events, profiles)
    _info(path).write_text(json.dumps(built))
    return path, {**built, "cached": False}, True


def restore(store: SQLiteStore, last_seq: int) -> None:
    """Undo what the incremental update wrote into a cached log: the events after `last_seq` and the
    engine's state (memberships, timers, its cursor), which a freshly built log does not have."""

    def job(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM outbox WHERE seq > ?", (last_seq,))
        conn.execute("DELETE FROM events WHERE seq > ?", (last_seq,))
        for table in ("members", "timers", "cursors", "assignments", "audience_versions"):
            conn.execute(f"DELETE FROM {table}")

    store.run(job)


def measure(
    directory: Path, events: int, profiles: int, workers: int, rounds: int, deadline: float
) -> dict[str, Any]:
    from loopwire.store import SQLiteStore

    began = time.perf_counter()
    path, built, cached = open_log(directory, events, profiles)
    opened = time.perf_counter()
    warm_s = warm(path)
    store = SQLiteStore(path)
    try:
        full = full_recompute(store, workers, rounds, deadline)
        last_seq = store.run(lambda c: c.execute("SELECT MAX(seq) FROM events").fetchone()[0])
        if cached:
            _info(path).unlink()  # dirty until restored: a run stopped in between rebuilds it
        update = asyncio.run(incremental(store, 3))
        if cached:
            restore(store, last_seq)
    finally:
        store.close()
    if cached:
        _info(path).write_text(json.dumps({k: v for k, v in built.items() if k != "cached"}))
    else:
        for leftover in directory.glob(f"{path.name}*"):
            leftover.unlink()
    return {
        "build": built,
        "full": full,
        "incremental": update,
        "warm_s": round(warm_s, 1),
        "measure_s": time.perf_counter() - opened,
        "seconds": time.perf_counter() - began,
    }


def _scale_name(events: int, profiles: int) -> str:
    return f"{events:,} events, {profiles:,} profiles"


def run(
    events: int | None = None,
    profiles: int | None = None,
    workers: int = 2,
    rounds: int = 2,
    bound_s: float = TIME_BOUND_S,
) -> list[Result]:
    """Without `events`: at the issue's scale when its log is cached (built by an earlier run);
    otherwise at 1 M events / 100 k profiles, then at the issue's scale if building and measuring
    it fits `bound_s`, else at the largest whole number of millions that fits (the 1 M run says how
    long a million takes to build and to measure)."""
    began = time.perf_counter()
    deadline = began + bound_s
    scales: dict[int, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="loopwire-audiences-bench-") as tmp:
        directory = Path(tmp)
        if events is not None:  # every round, whatever the bound
            decision = "as given"
            scales[events] = measure(directory, events, profiles or events // 10, workers, rounds, math.inf)
        elif is_cached(ISSUE_EVENTS, ISSUE_PROFILES):
            decision = (
                f"the issue's log is cached ({cache_path(ISSUE_EVENTS, ISSUE_PROFILES)}): measured there"
            )
            scales[ISSUE_EVENTS] = measure(directory, ISSUE_EVENTS, ISSUE_PROFILES, workers, rounds, deadline)
        else:
            first = measure(directory, 1_000_000, 100_000, workers, rounds, deadline)
            scales[1_000_000] = first
            # a margin: the index sorts grow a little faster than the log
            per_million = (first["build"]["build_s"] + first["measure_s"]) * 1.15
            left = deadline - time.perf_counter()
            millions = min(ISSUE_EVENTS // 1_000_000, int(left // per_million))
            decision = (
                f"1M: build {first['build']['build_s']:.0f}s{' (cached)' if first['build']['cached'] else ''},"
                f" measured in {first['measure_s']:.0f}s; {left:.0f}s left of {bound_s:.0f}s → "
            )
            if millions >= 2:
                decision += f"ran {millions}M"
                scales[millions * 1_000_000] = measure(
                    directory, millions * 1_000_000, millions * 100_000, workers, rounds, deadline
                )
            else:
                decision += "no larger scale fits"
            if millions < ISSUE_EVENTS // 1_000_000:
                decision += (
                    f"; the issue's scale needs ≈{per_million * ISSUE_EVENTS / 1e6:.0f}s with its build:"
                    f" `python -m bench.audiences_bench --events {ISSUE_EVENTS}` builds and caches it once,"
                    " and later runs measure it"
                )
    return results(scales, workers, rounds, decision, time.perf_counter() - began)


def results(
    scales: Mapping[int, dict[str, Any]], workers: int, rounds: int, decision: str, elapsed: float
) -> list[Result]:
    largest = max(scales)
    top = scales[largest]
    full, build_info, update = top["full"], top["build"], top["incremental"]
    stats: RecomputeStats = full["stats"]
    count = stats.events
    name = _scale_name(count, stats.people)
    rate = count / full["best"]["recompute"]
    plain_rate = count / full["best"]["plain"]
    per_scale = {
        _scale_name(s["full"]["stats"].events, s["full"]["stats"].people): {
            "recompute_s": round(s["full"]["best"]["recompute"], 2),
            "plain_s": round(s["full"]["best"]["plain"], 2),
            "recompute_events_per_s": round(s["full"]["stats"].events / s["full"]["best"]["recompute"]),
            "build_s": s["build"]["build_s"],
            "log_cached": s["build"]["cached"],
            "warm_s": s["warm_s"],
            "incremental_median_s": statistics.median(r["run_once_s"] for r in s["incremental"]["rounds"]),
        }
        for s in scales.values()
    }
    common = {
        "command": "python -m bench.audiences_bench",
        "workers": workers,
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "bench_seconds": round(elapsed),
        "scale_decision": decision,
        "scales": per_scale,
    }
    at_issue_scale = largest == ISSUE_EVENTS and build_info["profiles"] == ISSUE_PROFILES
    scale = ISSUE_EVENTS / count
    incremental_s = [r["run_once_s"] for r in update["rounds"]]
    plain_s = [r["plain_s"] for r in update["rounds"]]
    return [
        Result(
            name=f"full recompute, 10 audiences ({name})",
            value=rate,
            unit="events/s",
            baseline=plain_rate,
            baseline_label="plain scan + decode of the same events",
            target=ISSUE_EVENTS / FULL_TARGET_S,
            target_kind="value>=",
            details={
                **common,
                "recompute_s": round(full["best"]["recompute"], 2),
                "plain_s": round(full["best"]["plain"], 2),
                "rounds": len(full["every"]["recompute"]),
                "seconds_per_round": full["every"],
                "people": stats.people,
                "events": stats.events,
                "events_evaluated": stats.evaluated_events,
                "events_decoded": stats.decoded_events,
                "evaluate_s_summed_over_workers": round(stats.evaluate_s, 2),
                "stream_s_summed_over_workers": round(stats.stream_s, 2),
                "ranges": stats.ranges,
                "members": stats.members,
                "build": build_info,
                "target_meaning": "10 M events in 30 s",
            },
        ),
        Result(
            name=f"full recompute, 10 audiences, MEASURED at the issue's scale ({name})"
            if at_issue_scale
            else f"full recompute PROJECTED to {ISSUE_EVENTS:,} events / {ISSUE_PROFILES:,} profiles"
            " (linear from the measurement above, not measured)",
            value=full["best"]["recompute"] * (1 if at_issue_scale else scale),
            unit="s",
            baseline=full["best"]["plain"] * (1 if at_issue_scale else scale),
            baseline_label="plain scan + decode of the same events"
            + ("" if at_issue_scale else ", projected the same way"),
            target=FULL_TARGET_S,
            target_kind="value<=",
            higher_is_better=False,
            details={**common, "measured_at": name, "factor": 1 if at_issue_scale else round(scale, 2)},
        ),
        Result(
            name=f"incremental update, {NEW_EVENTS:,} new events ({name})",
            value=statistics.median(incremental_s),
            unit="s",
            baseline=statistics.median(plain_s),
            baseline_label="plain read + decode of those events",
            target=INCREMENTAL_TARGET_S,
            target_kind="value<=",
            higher_is_better=False,
            show_ratio=False,  # context: the engine reads and evaluates the people's whole histories
            details={
                **common,
                "what": "Engine.run_once() after 1,000 events for ~1,000 existing people; median of rounds",
                "rounds": update["rounds"],
                "people": update["people"],
                "their_events_in_the_log": update["their_events"],
            },
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description="Audience recompute and incremental update at scale.")
    parser.add_argument(
        "--events",
        type=int,
        help="one scale only, every round (default: the issue's scale if cached, else 1M, then the largest that fits)",
    )
    parser.add_argument("--profiles", type=int, help="default: events / 10")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--bound", type=float, default=TIME_BOUND_S, help="seconds for the whole run")
    args = parser.parse_args()
    found = run(args.events, args.profiles, args.workers, args.rounds, args.bound)
    report(found)
    for result in found:
        print(f"  {result.details}")


if __name__ == "__main__":
    main()
