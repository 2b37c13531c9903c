"""The PostgreSQL schema: SQLite's migrations (store/migrations.py), step for step, in PostgreSQL's SQL.

Migration N here is the same logical change as migration N there, so a version means one schema on
both; the table `loopwire_schema` records the last one applied (SQLite's `PRAGMA user_version`).
What differs, and why:
- `seq` is a plain BIGINT key the appender assigns (max + 1, under its lock: store/postgres.py), not
  a sequence, so seqs stay consecutive and in commit order as SQLite's rowids are (the log's
  readers follow it by seq; `event_count` is MAX(seq)).
- `outbox.claimed_by`: the node (a `loopwire serve` process) that holds an in-flight row, so a node
  that starts puts back only the rows of nodes that are gone, not those of nodes still running.
- The tallies' triggers are PL/pgSQL; `outbox_tally` is kept per statement from its transition
  tables (one upsert per settled outcome, not one per row), its keys taken in a fixed order so two
  nodes settling at once do not deadlock on them.
- Migration 13 partitions the log and the outboxes by seq (so retention drops old partitions whole),
  moves the dedupe on event id to `event_ids` and drops the outbox's foreign key (see there); on
  SQLite it is a no-op.
- Migrations 8 and 10 leave out the identity tables: the identity graph lives in a file of its own
  (store/identity.py), which migration 10 made so before there was a PostgreSQL store.
"""

from __future__ import annotations

import zlib
from typing import Any

_FINAL = "('delivered', 'dead', 'skipped')"
_MINVALUE = -(2**63)  # BIGINT's least: partition 1's `low` in `log_partitions` (its bound is MINVALUE)

MIGRATIONS: tuple[str, ...] = (
    # 1: the log and the outboxes
    """
    CREATE TABLE events (
        seq         BIGINT PRIMARY KEY,
        id          TEXT NOT NULL UNIQUE,
        source      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        channel     TEXT,
        metric      TEXT,
        name        TEXT,
        user_id     TEXT,
        time_ms     BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        body        BYTEA NOT NULL
    );
    CREATE TABLE outbox (
        dest        TEXT NOT NULL,
        seq         BIGINT NOT NULL REFERENCES events(seq),
        state       TEXT NOT NULL CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead', 'skipped')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        enqueued_ms BIGINT NOT NULL,
        next_ms     BIGINT NOT NULL,
        updated_ms  BIGINT NOT NULL,
        reason      TEXT,
        response    TEXT,
        claimed_by  BIGINT,
        PRIMARY KEY (dest, seq)
    );
    CREATE INDEX outbox_ready ON outbox (dest, state, next_ms);
    """,
    # 2: what a destination last sent per key
    """
    CREATE TABLE sent_state (
        dest       TEXT NOT NULL,
        key        TEXT NOT NULL,
        value      BYTEA NOT NULL,
        updated_ms BIGINT NOT NULL,
        PRIMARY KEY (dest, key)
    );
    """,
    # 3: holdout assignments, and how far each log reader has read
    """
    CREATE TABLE assignments (
        experiment  TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        grp         TEXT NOT NULL CHECK (grp IN ('holdout', 'treatment')),
        assigned_ms BIGINT NOT NULL,
        PRIMARY KEY (experiment, user_id)
    );
    CREATE TABLE cursors (
        name TEXT PRIMARY KEY,
        seq  BIGINT NOT NULL
    );
    CREATE INDEX events_user ON events (user_id, time_ms);
    CREATE INDEX events_name ON events (name, time_ms);
    """,
    # 4: audience membership, the re-evaluation timers and the version changelog
    """
    CREATE TABLE members (
        audience    TEXT NOT NULL,
        user_id     TEXT NOT NULL,
        member      INTEGER NOT NULL,
        version     INTEGER NOT NULL,
        state       TEXT,
        changes     INTEGER NOT NULL,
        since_ms    BIGINT NOT NULL,
        PRIMARY KEY (audience, user_id)
    );
    CREATE TABLE timers (
        user_id TEXT PRIMARY KEY,
        due_ms  BIGINT NOT NULL
    );
    CREATE INDEX timers_due ON timers (due_ms);
    CREATE TABLE audience_versions (
        name        TEXT NOT NULL,
        version     INTEGER NOT NULL,
        fingerprint TEXT NOT NULL,
        definition  TEXT NOT NULL,
        recorded_ms BIGINT NOT NULL,
        PRIMARY KEY (name, version, fingerprint)
    );
    """,
    # 5: events by name without the time (see SQLite's migration 5)
    """
    DROP INDEX IF EXISTS events_name;
    CREATE INDEX events_name ON events (name) WHERE name IS NOT NULL;
    """,
    # 6: the row `GET /readyz` rewrites
    """
    CREATE TABLE ready_probe (
        id    INTEGER PRIMARY KEY CHECK (id = 1),
        at_ms BIGINT NOT NULL
    );
    """,
    # 7: outbox rows per destination, final state and reason (see the module's docstring)
    f"""
    CREATE TABLE outbox_tally (
        dest   TEXT NOT NULL,
        state  TEXT NOT NULL,
        reason TEXT NOT NULL,
        n      BIGINT NOT NULL,
        PRIMARY KEY (dest, state, reason)
    );
    INSERT INTO outbox_tally (dest, state, reason, n)
        SELECT dest, state, CASE WHEN state = 'delivered' THEN '' ELSE COALESCE(reason, '') END, COUNT(*)
        FROM outbox WHERE state IN {_FINAL} GROUP BY 1, 2, 3;
    CREATE FUNCTION outbox_tally_update() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO outbox_tally AS t (dest, state, reason, n)
        SELECT dest, state, reason, SUM(d) FROM (
            SELECT o.dest, o.state, CASE WHEN o.state = 'delivered' THEN '' ELSE COALESCE(o.reason, '') END, -1
            FROM old_rows o JOIN new_rows n ON n.dest = o.dest AND n.seq = o.seq
            WHERE o.state IN {_FINAL} AND (o.state IS DISTINCT FROM n.state
                OR COALESCE(o.reason, '') IS DISTINCT FROM COALESCE(n.reason, ''))
            UNION ALL
            SELECT n.dest, n.state, CASE WHEN n.state = 'delivered' THEN '' ELSE COALESCE(n.reason, '') END, 1
            FROM old_rows o JOIN new_rows n ON n.dest = o.dest AND n.seq = o.seq
            WHERE n.state IN {_FINAL} AND (o.state IS DISTINCT FROM n.state
                OR COALESCE(o.reason, '') IS DISTINCT FROM COALESCE(n.reason, ''))
        ) AS changes (dest, state, reason, d)
        GROUP BY dest, state, reason ORDER BY dest, state, reason
        ON CONFLICT (dest, state, reason) DO UPDATE SET n = t.n + EXCLUDED.n;
        RETURN NULL;
    END $$;
    CREATE TRIGGER outbox_tally_update AFTER UPDATE ON outbox
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_tally_update();
    CREATE FUNCTION outbox_tally_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE outbox_tally AS t SET n = t.n - gone.n FROM (
            SELECT dest, state, CASE WHEN state = 'delivered' THEN '' ELSE COALESCE(reason, '') END AS reason,
                COUNT(*) AS n
            FROM old_rows WHERE state IN {_FINAL} GROUP BY 1, 2, 3
        ) AS gone
        WHERE t.dest = gone.dest AND t.state = gone.state AND t.reason = gone.reason;
        RETURN NULL;
    END $$;
    CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_tally_delete();
    CREATE INDEX outbox_dead ON outbox (updated_ms) WHERE state = 'dead';
    """,
    # 8: members and membership changes per audience, kept by a trigger on `members` (the identity
    #    tables of SQLite's migration 8 are not made: see the module's docstring)
    """
    CREATE TABLE audience_tally (
        audience TEXT PRIMARY KEY,
        members  BIGINT NOT NULL DEFAULT 0,
        entered  BIGINT NOT NULL DEFAULT 0,
        exited   BIGINT NOT NULL DEFAULT 0
    );
    INSERT INTO audience_tally (audience, members, entered, exited)
        SELECT audience, SUM(member), 0, 0 FROM members GROUP BY audience;
    CREATE FUNCTION audience_tally_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO audience_tally AS t (audience, members, entered, exited)
            VALUES (NEW.audience, NEW.member, NEW.member, 0)
            ON CONFLICT (audience) DO UPDATE SET members = t.members + NEW.member, entered = t.entered + NEW.member;
        ELSIF TG_OP = 'UPDATE' THEN
            IF OLD.member IS DISTINCT FROM NEW.member OR OLD.changes IS DISTINCT FROM NEW.changes THEN
                INSERT INTO audience_tally AS t (audience, members, entered, exited)
                VALUES (NEW.audience, NEW.member - OLD.member,
                        (NEW.member = 1 AND NEW.changes > OLD.changes)::int,
                        (NEW.member = 0 AND NEW.changes > OLD.changes)::int)
                ON CONFLICT (audience) DO UPDATE SET members = t.members + EXCLUDED.members,
                    entered = t.entered + EXCLUDED.entered, exited = t.exited + EXCLUDED.exited;
            END IF;
        ELSE
            UPDATE audience_tally SET members = members - OLD.member WHERE audience = OLD.audience;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER audience_tally AFTER INSERT OR UPDATE OR DELETE ON members
        FOR EACH ROW EXECUTE FUNCTION audience_tally_change();
    """,
    # 9: destinations paused from the console
    """
    CREATE TABLE paused_destinations (
        dest       TEXT PRIMARY KEY,
        changed_ms BIGINT NOT NULL
    );
    """,
    # 10: the identity graph moved to a file of its own (nothing to drop here)
    """
    DELETE FROM cursors WHERE name = 'identity';
    """,
    # 11: retention's tally of deleted rows, and delivered/skipped counts that are lifetime totals
    #     (see SQLite's migration 11)
    """
    CREATE TABLE retention_tally (
        kind TEXT PRIMARY KEY,
        n    BIGINT NOT NULL
    );
    CREATE OR REPLACE FUNCTION outbox_tally_delete() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        UPDATE outbox_tally AS t SET n = t.n - gone.n FROM (
            SELECT dest, state, COALESCE(reason, '') AS reason, COUNT(*) AS n
            FROM old_rows WHERE state = 'dead' GROUP BY 1, 2, 3
        ) AS gone
        WHERE t.dest = gone.dest AND t.state = gone.state AND t.reason = gone.reason;
        RETURN NULL;
    END $$;
    """,
    # 12: the waiting rows by when they were enqueued (see SQLite's migration 12)
    """
    CREATE INDEX outbox_waiting ON outbox (dest, enqueued_ms) WHERE state IN ('pending', 'in_flight');
    """,
    # 13: the log and the outboxes RANGE-partitioned on seq, with the same bounds (an event and its
    #     outbox rows share partition number n), so retention drops a partition whole instead of
    #     deleting its rows one by one (store/postgres_retention.py; SQLite's migration 13 is a no-op).
    #     - A unique index on a partitioned table must hold the partition key, so the dedupe on
    #       event id moves to `event_ids` (id → seq, not partitioned), written by the append in the
    #       statement that writes the events (store/postgres.py).
    #     - The outbox's foreign key to the log goes: on partitions, PostgreSQL would check each
    #       deleted event by scanning its outbox partition (no index on seq alone), as SQLite would
    #       (which is why SQLite's retention runs unenforced). Rows and events are written together by
    #       the append; `enqueue` locks the events it queues (FOR KEY SHARE, what the key's trigger
    #       took) and retention locks what it deletes (FOR UPDATE) and checks by key, so no outbox row
    #       outlives its event.
    #     - The tables as they were become partition 1, FROM (MINVALUE) TO (MAX(seq) + 1): renamed,
    #       their indexes attached to the new parents' as they are. Nothing is rewritten; ATTACH reads
    #       each row once to check the bound, and `event_ids` is written once (id and seq only).
    #       The next partition is made by `postgres_partitions.ensure_ahead`, sized by the log's rate.
    #     - `log_partitions`: each partition's number and bounds (what retention and the appender
    #       read; changed only in the transaction that attaches or drops the partition).
    #     - The tally triggers move to the parents: statement triggers fire for the table a statement
    #       names, and every statement names `outbox`.
    f"""
    ALTER TABLE outbox DROP CONSTRAINT outbox_seq_fkey;
    CREATE TABLE event_ids (
        id  TEXT NOT NULL,
        seq BIGINT NOT NULL
    );
    INSERT INTO event_ids (id, seq) SELECT id, seq FROM events;
    ALTER TABLE event_ids ADD CONSTRAINT event_ids_pkey PRIMARY KEY (id);
    ALTER TABLE events DROP CONSTRAINT events_id_key;
    DROP TRIGGER outbox_tally_update ON outbox;
    DROP TRIGGER outbox_tally_delete ON outbox;
    ALTER TABLE events RENAME TO events_p1;
    ALTER INDEX events_pkey RENAME TO events_p1_pkey;
    ALTER INDEX events_user RENAME TO events_p1_user;
    ALTER INDEX events_name RENAME TO events_p1_name;
    ALTER TABLE outbox RENAME TO outbox_p1;
    ALTER INDEX outbox_pkey RENAME TO outbox_p1_pkey;
    ALTER INDEX outbox_ready RENAME TO outbox_p1_ready;
    ALTER INDEX outbox_dead RENAME TO outbox_p1_dead;
    ALTER INDEX outbox_waiting RENAME TO outbox_p1_waiting;
    CREATE TABLE events (
        seq         BIGINT NOT NULL,
        id          TEXT NOT NULL,
        source      TEXT NOT NULL,
        kind        TEXT NOT NULL,
        channel     TEXT,
        metric      TEXT,
        name        TEXT,
        user_id     TEXT,
        time_ms     BIGINT NOT NULL,
        received_ms BIGINT NOT NULL,
        body        BYTEA NOT NULL,
        CONSTRAINT events_pkey PRIMARY KEY (seq)
    ) PARTITION BY RANGE (seq);
    CREATE INDEX events_user ON events (user_id, time_ms);
    CREATE INDEX events_name ON events (name) WHERE name IS NOT NULL;
    CREATE TABLE outbox (
        dest        TEXT NOT NULL,
        seq         BIGINT NOT NULL,
        state       TEXT NOT NULL
            CONSTRAINT outbox_state_check CHECK (state IN ('pending', 'in_flight', 'delivered', 'dead', 'skipped')),
        attempts    INTEGER NOT NULL DEFAULT 0,
        enqueued_ms BIGINT NOT NULL,
        next_ms     BIGINT NOT NULL,
        updated_ms  BIGINT NOT NULL,
        reason      TEXT,
        response    TEXT,
        claimed_by  BIGINT,
        CONSTRAINT outbox_pkey PRIMARY KEY (dest, seq)
    ) PARTITION BY RANGE (seq);
    CREATE INDEX outbox_ready ON outbox (dest, state, next_ms);
    CREATE INDEX outbox_dead ON outbox (updated_ms) WHERE state = 'dead';
    CREATE INDEX outbox_waiting ON outbox (dest, enqueued_ms) WHERE state IN ('pending', 'in_flight');
    CREATE TRIGGER outbox_tally_update AFTER UPDATE ON outbox
        REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_tally_update();
    CREATE TRIGGER outbox_tally_delete AFTER DELETE ON outbox
        REFERENCING OLD TABLE AS old_rows
        FOR EACH STATEMENT EXECUTE FUNCTION outbox_tally_delete();
    CREATE TABLE log_partitions (
        n    INTEGER PRIMARY KEY,
        low  BIGINT NOT NULL,  -- the first seq it may hold (partition 1: from MINVALUE)
        high BIGINT NOT NULL   -- past the last
    );
    DO $$
    DECLARE
        top BIGINT := (SELECT COALESCE(MAX(seq), 0) + 1 FROM events_p1);
    BEGIN
        EXECUTE format('ALTER TABLE events ATTACH PARTITION events_p1 FOR VALUES FROM (MINVALUE) TO (%s)', top);
        EXECUTE format('ALTER TABLE outbox ATTACH PARTITION outbox_p1 FOR VALUES FROM (MINVALUE) TO (%s)', top);
        INSERT INTO log_partitions (n, low, high) VALUES (1, {_MINVALUE}, top);
    END $$;
    """,
    # 14: nothing here: SQLite's 14 keys its per-user index by a part of the log first; here each
    #     partition of 13 has its own `events_user`, and the newest takes the new entries.
    "",
)

# One number for every lock loopwire takes on a database (pg_advisory_xact_lock's bigint key space
# is shared with whatever else uses the database): "loopwire" in ASCII, then the lock's role.
_LOCKS = 0x6C6F6F7077697265 & ~0xFF
MIGRATE_LOCK = _LOCKS | 1
APPEND_LOCK = _LOCKS | 2


def lead_lock(role: str) -> int:
    """The session lock held by the one node that does `role` (two roles sharing one only means
    that one node leads both)."""
    return _LOCKS | 0x80 | (zlib.crc32(role.encode()) & 0x7F)


def migrate(conn: Any) -> int:
    """Apply what is missing, in one transaction (PostgreSQL's DDL is transactional: all or
    nothing); nodes starting together take turns (an advisory lock), so each migration runs once.
    `conn` is a psycopg connection in autocommit mode."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATE_LOCK,))
        conn.execute("CREATE TABLE IF NOT EXISTS loopwire_schema (version INTEGER NOT NULL)")
        row = conn.execute("SELECT version FROM loopwire_schema").fetchone()
        if row is None:
            conn.execute("INSERT INTO loopwire_schema (version) VALUES (0)")
        version = row[0] if row is not None else 0
        if version > len(MIGRATIONS):
            raise RuntimeError(
                f"the database has loopwire schema {version}, this loopwire knows {len(MIGRATIONS)}"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            if script.strip():
                conn.execute(script)
            conn.execute("UPDATE loopwire_schema SET version = %s", (number,))
    return len(MIGRATIONS)
