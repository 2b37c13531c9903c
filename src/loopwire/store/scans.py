"""The full recompute's reads of the log (audiences/recompute.py): one pass over a range of seqs
that returns only the rows some audience can select, who the people are, their stored memberships.

The recompute describes what it wants in the audiences' terms (`ScanFilter`: event keys, horizons);
the SQL that selects those rows is built here. The filter is a pre-filter, not the judge: the
recompute checks every row it gets with the evaluator's own matchers.
"""

from __future__ import annotations

import heapq
import itertools
import operator
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from loopwire.model import event_pattern
from loopwire.store.audiences import Membership
from loopwire.store.base import PART_BITS, Dialect, Reader, ScanTarget
from loopwire.store.sqlite import connect

MMAP_BYTES = 1 << 34  # read the file through the page cache without copying (SQLite caps it)
Bound = str | None  # a user id bounding a range; None: unbounded
# user_id, time_ms, source, kind, channel, metric, name, body (None unless asked for)
ScanRow = tuple[str, int, str, str, str | None, str | None, str | None, bytes | None]

# A row's event key, as `model.event_key` builds it from the log's columns: f"{channel}.{metric}" for
# a Customer.io message, else the name, or the kind when the name is missing or empty.
_IS_MESSAGE = "source = 'customerio' AND channel IS NOT NULL"
_PROFILE_ROW = "source = 'amplitude' OR (source = 'segment' AND kind = 'identify')"  # `profile_of`'s
_USER = operator.itemgetter(0)
_WILDCARD = re.compile(r"[*?]")  # as in `model.event_pattern`, where brackets are literal


class ScanFilter(NamedTuple):
    """Which rows a scan returns, and which with their body."""

    # (horizon ms or None, event names and globs): rows whose key matches, younger than the horizon
    keep: Sequence[tuple[int | None, frozenset[str]]]
    decode: frozenset[str]  # rows whose key matches one of these come with their body
    profile: bool  # and the rows `audiences.engine.profile_of` reads, with their body
    own_source: str  # rows of this source come too, without body (they are only counted)


Term = tuple[str, tuple[str, ...]]  # SQL and its parameters


class _Dialect(NamedTuple):
    """What the scans' SQL says differently on each database."""

    true: str
    false: str
    glob: str  # a column matching one `model.event_pattern` glob, as SQL with one `?`
    # SQLite: the pass over a range of seqs reads the table in file order, not through an index
    not_indexed: str
    collate: str  # user ids compared and cut as Python compares them (code point order)


def _like(pattern: str) -> str:
    """A `model.event_pattern` glob as a PostgreSQL LIKE pattern (backslash escapes)."""
    escaped = pattern.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped.replace("*", "%").replace("?", "_")


_DIALECTS = {
    "sqlite": _Dialect("1", "0", "GLOB ?", " NOT INDEXED", ""),
    "postgres": _Dialect("TRUE", "FALSE", "LIKE ?", "", ' COLLATE "C"'),
}


def _glob_arg(dialect: Dialect, pattern: str) -> str:
    # SQLite's GLOB has the same wildcards once `[` is made literal
    return pattern.replace("[", "[[]") if dialect == "sqlite" else _like(pattern)


def _column_matches(
    column: str, names: Iterable[str], null_as: str | None = None, dialect: Dialect = "sqlite"
) -> Term:
    """`column` matches one of these `model.event_pattern` names or globs, in SQL: one IN for the
    plain names, a GLOB (SQLite) or LIKE (PostgreSQL) per glob. `null_as`: the text a NULL stands
    for in the event key."""
    sql = _DIALECTS[dialect]
    given = sorted(set(names))
    if any(name and not name.strip("*") for name in given):
        return sql.true, ()
    exact = [name for name in given if not _WILDCARD.search(name)]
    globs = [name for name in given if _WILDCARD.search(name)]
    terms = [f"{column} IN ({', '.join('?' * len(exact))})"] if exact else []
    terms += [f"{column} {sql.glob}"] * len(globs)
    if null_as is not None and any(event_pattern(name).fullmatch(null_as) for name in given):
        terms.append(f"{column} IS NULL")
    return " OR ".join(terms) or sql.false, (*exact, *(_glob_arg(dialect, name) for name in globs))


def _message_matches(names: Iterable[str], dialect: Dialect = "sqlite") -> Term:
    """`channel.metric` matches one of the names or globs, on the two columns (no string is built per
    row): the dot between them is matched by a dot of a name, by a `?`, or inside a `*`, which then
    matches the end of the channel and the start of the metric."""
    metrics: dict[str, set[str]] = {}  # a pattern of the channel → the patterns of the metric with it
    for name in names:
        for at, char in enumerate(name):
            if char in ".?*":
                channel, metric = (name[: at + 1], name[at:]) if char == "*" else (name[:at], name[at + 1 :])
                metrics.setdefault(channel, set()).add(metric)
    terms: list[str] = []
    args: list[str] = []
    every = _DIALECTS[dialect].true
    for channel, metric_names in sorted(metrics.items(), key=lambda item: bool(item[0].strip("*"))):
        metric_sql, metric_args = _column_matches("metric", metric_names, "None", dialect)  # f"{None}"
        channel_sql, channel_args = _column_matches("channel", [channel], dialect=dialect)
        terms.append(f"({metric_sql})" if channel_sql == every else f"({channel_sql}) AND ({metric_sql})")
        args += [*channel_args, *metric_args] if channel_sql != every else metric_args
    return " OR ".join(terms) or _DIALECTS[dialect].false, tuple(args)


def matches_sql(names: Iterable[str], dialect: Dialect = "sqlite") -> Term:
    """An SQL condition on a log row, and its parameters: the row's event key (`model.event_key`)
    matches one of these names or globs."""
    given = set(names)
    message, message_args = _message_matches(given, dialect)
    named, named_args = _column_matches("name", given, dialect=dialect)
    kind, kind_args = _column_matches("kind", given, dialect=dialect)
    condition = f"CASE WHEN {_IS_MESSAGE} THEN ({message}) WHEN name <> '' THEN ({named}) ELSE ({kind}) END"
    return condition, (*message_args, *named_args, *kind_args)


def _in_range(
    sql: str, args: tuple[Any, ...], lo: Bound, hi: Bound, dialect: Dialect
) -> tuple[str, tuple[Any, ...]]:
    collate = _DIALECTS[dialect].collate
    if lo is not None:
        sql, args = sql + f" AND user_id{collate} >= ?", (*args, lo)
    if hi is not None:
        sql, args = sql + f" AND user_id{collate} < ?", (*args, hi)
    return sql, args


def _people_sql(
    where: str, args: tuple[Any, ...], lo: Bound, hi: Bound, last_seq: int, dialect: Dialect
) -> tuple[str, tuple[Any, ...]]:
    sql, args = _in_range(f"SELECT user_id, COUNT(*) FROM events WHERE {where}", args, lo, hi, dialect)
    return sql + f" AND seq <= ? GROUP BY user_id ORDER BY user_id{_DIALECTS[dialect].collate}", (
        *args,
        last_seq,
    )


def _selected_sql(
    wanted: ScanFilter, now_ms: int, first: int, last: int, dialect: Dialect
) -> tuple[str, tuple[Any, ...]]:
    keep: list[str] = []
    keep_args: list[Any] = []
    for horizon, names in wanted.keep:
        condition, args = matches_sql(names, dialect)
        keep.append(f"({condition})" if horizon is None else f"(time_ms > ? AND ({condition}))")
        keep_args += args if horizon is None else [now_ms - horizon, *args]
    decode, decode_args = matches_sql(wanted.decode, dialect)
    if wanted.profile:
        keep.append(f"({_PROFILE_ROW})")
        decode = f"({decode}) OR {_PROFILE_ROW}"
    columns = f"user_id, time_ms, source, kind, channel, metric, name, CASE WHEN {decode} THEN body END"
    sql = _DIALECTS[dialect]
    return (
        f"SELECT {columns} FROM events{sql.not_indexed} WHERE seq BETWEEN ? AND ? AND user_id IS NOT NULL"
        f" AND (source = ? OR {' OR '.join(keep) or sql.false})",
        (*decode_args, first, last, wanted.own_source, *keep_args),
    )


def read_connection(path: str) -> sqlite3.Connection:
    """A connection of its own that only reads, mapping the file instead of copying its pages."""
    conn = connect(path)
    conn.execute("PRAGMA query_only=ON")
    conn.execute(f"PRAGMA mmap_size={MMAP_BYTES}")
    return conn


class LogScan:
    """A recompute worker's read-only view of the log, opened in its own process."""

    def __init__(self, target: ScanTarget) -> None:
        self._dialect: Dialect = target.dialect
        self._conn: Reader
        if target.dialect == "sqlite":
            self._conn = read_connection(target.where)
        else:
            from loopwire.store.postgres import scan_connection  # psycopg: the `postgres` extra

            self._conn = scan_connection(target.where)

    def rows(self, wanted: ScanFilter, now_ms: int, first: int, last: int) -> Iterator[ScanRow]:
        """One pass over the rows with seqs in [first, last] that `wanted` asks for, in log order."""
        return iter(self._conn.execute(*_selected_sql(wanted, now_ms, first, last, self._dialect)))

    def people(self, lo: Bound, hi: Bound, last_seq: int) -> Iterator[tuple[str, int]]:
        """Every user with an id in [lo, hi) and their number of events up to `last_seq`, in id order,
        from the `events_user` index alone (loopwire's own events included)."""
        if self._dialect == "postgres":
            return iter(
                self._conn.execute(*_people_sql("user_id IS NOT NULL", (), lo, hi, last_seq, "postgres"))
            )
        # SQLite's index is keyed by the part of the log first (store.base.BY_USER): each part read
        # in user order (no sort), and the parts' counts merged
        first, _ = self.seqs()
        parts = (
            self._conn.execute(
                *_people_sql(
                    f"(seq >> {PART_BITS}) = ? AND user_id IS NOT NULL", (part,), lo, hi, last_seq, "sqlite"
                )
            )
            for part in range((first or 1) >> PART_BITS, (last_seq >> PART_BITS) + 1)
        )
        merged = heapq.merge(*parts, key=_USER)
        return ((user_id, sum(n for _, n in rows)) for user_id, rows in itertools.groupby(merged, key=_USER))

    def memberships(self, audiences: Iterable[str], lo: Bound, hi: Bound) -> dict[str, dict[str, Membership]]:
        """The stored membership rows of the users in [lo, hi)."""
        found: dict[str, dict[str, Membership]] = {}
        for audience in audiences:
            sql, args = _in_range(
                "SELECT user_id, member, version, state, changes, since_ms FROM members WHERE audience = ?",
                (audience,),
                lo,
                hi,
                self._dialect,
            )
            for user_id, member, version, state, changes, since in self._conn.execute(sql, args):
                found.setdefault(user_id, {})[audience] = Membership(
                    bool(member), version, state, changes, since
                )
        return found

    def users_at(self, seqs: Sequence[int], except_source: str) -> list[str]:
        """The user ids of the events with these seqs (not of `except_source`, not without one)."""
        users: list[str] = []
        for start in range(0, len(seqs), 500):
            chunk = seqs[start : start + 500]
            users += [
                user_id
                for (user_id,) in self._conn.execute(
                    f"SELECT user_id FROM events WHERE seq IN ({','.join('?' * len(chunk))})"
                    " AND user_id IS NOT NULL AND source != ?",
                    (*chunk, except_source),
                )
            ]
        return users

    def seqs(self) -> tuple[int | None, int | None]:
        """The first and last seq of the log (None, None when it is empty)."""
        # two queries: MIN and MAX together in one would scan the table
        (low,) = self._conn.execute("SELECT MIN(seq) FROM events").fetchone()
        (high,) = self._conn.execute("SELECT MAX(seq) FROM events").fetchone()
        return low, high

    def close(self) -> None:
        self._conn.close()
