"""Schema migrations, applied in order at open; `PRAGMA user_version` records the last one applied."""

from __future__ import annotations

import logging
import sqlite3
import time

log = logging.getLogger("loopwire.store")

MIGRATIONS: tuple[str, ...] = (
    # 1: the log and the outboxes
    """
    CREATE TABLE events (
        seq         INTEGER PRIMARY KEY,
        id          TEXT NOT NULL UNIQUE,
        source      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        channel     TEXT,
        metric      TEXT,
        name        TEXT,
        user_id     TEXT,
        time_ms     INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        body        BLOB NOT NULL
    );
    CREATE TABLE outbox (
        dest        TEXT NOT NULL,
        seq         INTEGER NOT NULL REFERENCES events(seq),
        state       TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead', 'skipped')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        enqueued_ms INTEGER NOT NULL,
        next_ms     INTEGER NOT NULL,
        updated_ms  INTEGER NOT NULL,
        reason      TEXT,
        response    TEXT,
        PRIMARY KEY (dest, seq)
    ) WITHOUT ROWID;
    CREATE INDEX outbox_ready ON outbox (dest, state, next_ms);
    """,
    # 2: what a destination last sent per key (e.g. a person's selected attributes), so it can send
    #    only changes
    """
    CREATE TABLE sent_state (
        dest       TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BLOB NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (dest, key)
    ) WITHOUT ROWID;
    """,
    # 3: holdout assignments, and how far each log reader (the audience engine) has read
    """
    CREATE TABLE assignments (
        experiment  TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        grp         TEXT NOT NULL CHECK (grp IN ('holdout', 'treatment')),
        assigned_ms INTEGER NOT NULL,
        PRIMARY KEY (experiment, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        seq  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX events_user ON events (user_id, time_ms);
    CREATE INDEX events_name ON events (name, time_ms);
    """,
    # 4: audience membership, the re-evaluation timers (time-based exits) and the version changelog
    """
    CREATE TABLE members (
        audience    TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        member      INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        state       TEXT,
        changes     INTEGER NOT NULL,
        since_ms    INTEGER NOT NULL,
        PRIMARY KEY (audience, user_id)
    ) WITHOUT ROWID;
    CREATE TABLE timers (
        user_id TEXT PRIMARY KEY,
        due_ms  INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX timers_due ON timers (due_ms);
    CREATE TABLE audience_versions (
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        definition  TEXT NOT NULL,
        recorded_ms INTEGER NOT NULL,
        PRIMARY KEY (name, version, fingerprint)
    ) WITHOUT ROWID;
    """,
    # 5: events by name keyed (name, seq) rather than (name, time_ms): a new event then lands at the end
    #    of its name's range instead of somewhere inside it, which made the old index the dearest part of
    #    an append (about 40 % of it); rows without a name (Customer.io message events) are left out.
    #    Readers by name and time (`events_named`) filter the time on the rows of that name.
    """
    DROP INDEX IF EXISTS events_name;
    CREATE INDEX events_name ON events (name) WHERE name IS NOT NULL;
    """,
    # 6: one row `GET /readyz` rewrites to prove the store still takes a durable write
    """
    CREATE TABLE ready_probe (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms INTEGER NOT NULL
    );
    """,
    # 7: outbox rows per destination, final state and reason, kept by triggers, so status, the
    #    console and /metrics read a few rows instead of counting a log of millions (issue 13).
    #    Only the final states are kept here: every row is inserted `pending`, so the append path
    #    runs no trigger; pending and in-flight rows are counted live through `outbox_ready`.
    #    `outbox_dead` lists dead letters newest first without sorting them all.
    """
    CREATE TABLE outbox_tally (
        dest   TEXT NOT NULL,
        state  TEXT NOT NULL,
        reason TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (dest, state, reason)
    ) WITHOUT ROWID;
    INSERT INTO outbox_tally (dest, state, reason, n)
        SELECT dest, state, CASE WHEN state = 'delivered' THEN '' ELSE COALESCE(reason, '') END, COUNT(*)
        FROM outbox WHERE state IN ('delivered', 'dead', 'skipped') GROUP BY 1, 2, 3;
    CREATE TRIGGER outbox_tally_leave AFTER UPDATE OF state, reason ON outbox
    WHEN old.state IN ('delivered', 'dead', 'skipped')
        AND (old.state IS NOT new.state OR COALESCE(old.reason, '') IS NOT COALESCE(new.reason, ''))
    BEGIN
        UPDATE outbox_tally SET n = n - 1 WHERE dest = old.dest AND state = old.state
            AND reason = CASE WHEN old.state = 'delivered' THEN '' ELSE COALESCE(old.reason, '') END;
    END;
    CREATE TRIGGER outbox_tally_enter AFTER UPDATE OF state, reason ON outbox
    WHEN new.state IN ('delivered', 'dead', 'skipped')
        AND (old.state IS NOT new.state OR COALESCE(old.reason, '') IS NOT COALESCE(new.reason, ''))
    BEGIN
        INSERT INTO outbox_tally (dest, state, reason, n)
        VALUES (new.dest, new.state, CASE WHEN new.state = 'delivered' THEN '' ELSE COALESCE(new.reason, '') END, 1)
        ON CONFLICT (dest, state, reason) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
    WHEN old.state IN ('delivered', 'dead', 'skipped')
    BEGIN
        UPDATE outbox_tally SET n = n - 1 WHERE dest = old.dest AND state = old.state
            AND reason = CASE WHEN old.state = 'delivered' THEN '' ELSE COALESCE(old.reason, '') END;
    END;
    CREATE INDEX outbox_dead ON outbox (updated_ms) WHERE state = 'dead';
    """,
    # 8: the identity graph (issue 10), kept by a follower of the log (pipeline/identity_graph.py)
    #    whose cursor is `cursors.identity`, written in the same transaction as what it folded.
    #    `id_nodes`: every identifier, the person (connected component) it belongs to, and how
    #    many of the other kind it was seen with (emails of a user id, user ids of an email).
    #    `id_people`: per person, the kinds it carries (a bit mask) and its size; `id_tally`:
    #    people per mask and the split identifiers, so the report and /metrics read a few rows.
    #    `id_events`: events without a user id, by an identifier they carry (events with one are
    #    found through `events_user`). `audience_tally`: members and membership changes per
    #    audience, kept by triggers on `members`, so /metrics counts no member rows.
    """
    CREATE TABLE id_nodes (
        kind     TEXT NOT NULL,
        value    TEXT NOT NULL,
        person   INTEGER NOT NULL,
        partners INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (kind, value)
    ) WITHOUT ROWID;
    CREATE INDEX id_nodes_person ON id_nodes (person);
    CREATE INDEX id_nodes_split ON id_nodes (kind, value) WHERE partners >= 2;
    CREATE TABLE id_pairs (
        email   TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (email, user_id)
    ) WITHOUT ROWID;
    CREATE INDEX id_pairs_user ON id_pairs (user_id);
    CREATE TABLE id_people (
        person INTEGER PRIMARY KEY,
        mask   INTEGER NOT NULL,
        size   INTEGER NOT NULL
    );
    CREATE INDEX id_people_mask ON id_people (mask);
    CREATE TABLE id_tally (
        name TEXT PRIMARY KEY,
        n    INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE id_events (
        kind  TEXT NOT NULL,
        value TEXT NOT NULL,
        seq   INTEGER NOT NULL,
        PRIMARY KEY (kind, value, seq)
    ) WITHOUT ROWID;
    CREATE TABLE id_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE audience_tally (
        audience TEXT PRIMARY KEY,
        members  INTEGER NOT NULL DEFAULT 0,
        entered  INTEGER NOT NULL DEFAULT 0,
        exited   INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    INSERT INTO audience_tally (audience, members, entered, exited)
        SELECT audience, SUM(member), 0, 0 FROM members GROUP BY audience;
    CREATE TRIGGER audience_tally_insert AFTER INSERT ON members BEGIN
        INSERT INTO audience_tally (audience, members, entered, exited)
        VALUES (new.audience, new.member, new.member, 0)
        ON CONFLICT (audience) DO UPDATE SET members = members + new.member, entered = entered + new.member;
    END;
    CREATE TRIGGER audience_tally_update AFTER UPDATE OF member, changes ON members
    WHEN old.member IS NOT new.member OR old.changes IS NOT new.changes
    BEGIN
        INSERT INTO audience_tally (audience, members, entered, exited)
        VALUES (new.audience, 0, 0, 0) ON CONFLICT (audience) DO NOTHING;
        UPDATE audience_tally SET
            members = members + new.member - old.member,
            entered = entered + (new.member = 1 AND new.changes > old.changes),
            exited = exited + (new.member = 0 AND new.changes > old.changes)
        WHERE audience = new.audience;
    END;
    CREATE TRIGGER audience_tally_delete AFTER DELETE ON members BEGIN
        UPDATE audience_tally SET members = members - old.member WHERE audience = old.audience;
    END;
    """,
    # 9: destinations paused from the console, kept across restarts. A row
    #    means paused; `paused: true` in the config pauses a destination whatever this table says.
    """
    CREATE TABLE paused_destinations (
        dest       TEXT PRIMARY KEY,
        changed_ms INTEGER NOT NULL
    ) WITHOUT ROWID;
    """,
    # 10: the identity graph moves to a file of its own beside the log (store/identity.py): its
    #     writes took the log's write lock and fsyncs from ingest. It is derived from the log, so
    #     it is not copied: the follower folds the log again into the new file (about 40,000
    #     events a second). `audience_tally` (also of migration 8) stays.
    """
    DROP TABLE id_nodes;
    DROP TABLE id_pairs;
    DROP TABLE id_people;
    DROP TABLE id_tally;
    DROP TABLE id_events;
    DROP TABLE id_meta;
    DELETE FROM cursors WHERE name = 'identity';
    """,
    # 11: retention (store.retention, docs/operations.md#retention). `retention_tally`: rows deleted
    #     by retention, by kind (events, delivered, skipped, dead), so the status can say how many
    #     events the log holds (MAX(seq) minus the events deleted: still no count of every row) and
    #     /metrics can count deletions across restarts. `outbox_tally` keeps lifetime totals of
    #     delivered and skipped rows: an operator reads "delivered 1,204,337" as everything ever
    #     delivered, which must not drop when old rows are trimmed, so the delete trigger now only
    #     takes dead rows off (the dead-letter count is the queue as it is: `dlq list` shows the
    #     same rows). Retention is the only thing that deletes outbox rows.
    """
    CREATE TABLE retention_tally (
        kind TEXT PRIMARY KEY,
        n    INTEGER NOT NULL
    ) WITHOUT ROWID;
    DROP TRIGGER outbox_tally_delete;
    CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
    WHEN old.state = 'dead'
    BEGIN
        UPDATE outbox_tally SET n = n - 1 WHERE dest = old.dest AND state = 'dead'
            AND reason = COALESCE(old.reason, '');
    END;
    """,
    # 12: the waiting rows by when they were enqueued, so the age of a destination's oldest waiting
    #     event (/metrics, the overview) is one index descent: `outbox_ready` is ordered by `next_ms`,
    #     and a MIN(enqueued_ms) through it read the whole backlog (a paused destination's grows by
    #     every event: 66 ms a scrape under a paced load on 10 M events, docs/performance.md). A row
    #     enters it when it is enqueued (at the end: rows arrive in enqueue order) and leaves it when it
    #     is settled; about 5 % of a group commit's CPU, measured.
    """
    CREATE INDEX outbox_waiting ON outbox (dest, enqueued_ms) WHERE state IN ('pending', 'in_flight');
    """,
    # 13: nothing here. PostgreSQL's migration 13 partitions its log by seq so that its retention
    #     drops old partitions whole (store/postgres_schema.py); SQLite's deletes rows and gives the
    #     pages back (store/retention.py). Kept as a step so that a schema version means the same
    #     point on both backends.
    "",
    # 14: the per-user index keyed first by a part of the log, `seq >> 20` (2^20 events a part,
    #     `store.base.BY_USER`), so that new events' entries go into the newest part's leaves alone.
    #     Keyed by (user_id, time_ms), each new event went into its user's newest leaf wherever that
    #     lay in the file: with 10 M events and 20,000 users, one scattered leaf an event for every
    #     checkpoint to copy, and ingest at 0.70 of an empty log's rate (docs/performance.md).
    #     Readers seek once per part: tens of seeks per person at tens of millions of events.
    #     Rebuilding the index takes about 75 s per 10 M events, once, when the store opens.
    """
    DROP INDEX events_user;
    CREATE INDEX events_user ON events (seq >> 20, user_id, time_ms);
    """,
)


# The migrations that read the whole log, and what they do: on a big store they take minutes, during
# which `loopwire serve` does not answer yet, so each says so before it starts and when it is done.
SLOW: dict[int, str] = {14: "rebuilds the per-user index (about 75 s per 10 million events)"}
SLOW_FROM_EVENTS = 100_000  # below this the slowest takes under a second: nothing to say


def migrate(conn: sqlite3.Connection) -> int:
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        slow = SLOW.get(number)
        # the log's size from its seq range, not a COUNT(*), which would read it once more
        events = (
            conn.execute("SELECT COALESCE(MAX(seq) - MIN(seq) + 1, 0) FROM events").fetchone()[0]
            if slow
            else 0
        )
        told = events >= SLOW_FROM_EVENTS
        if told:
            log.warning(
                "migrating the store to schema %d: it %s; the log holds about %s events, and the"
                " server answers once this is done",
                number,
                slow,
                f"{events:,}",
            )
        started = time.perf_counter()
        conn.executescript(f"BEGIN;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;")
        if told:
            log.warning("store schema %d: done in %.1f s", number, time.perf_counter() - started)
    return len(MIGRATIONS)
