"""The identity graph's follower: reads the log by seq, in batches, and folds each event's identifiers
into the graph (store/identity.py); the hot ingest path is not touched.

Crash safety: a batch's links, tallies and the cursor are one transaction, written only if the
cursor is still where the batch was read from (compare and set), so a restart resumes after the last
batch written, and two followers (a server and a CLI, say) never fold an event twice.

In `loopwire serve` the follower is a process of its own (`FollowerProcess`), started beside the
server at the lowest CPU priority (SCHED_IDLE, `lower_priority`): in the server's process its CPU (about 25 µs an event) held
the interpreter lock the event loop needed and cost webhook ingest a third of its rate
(bench/identity_cost.py). It writes only the graph's file (store/identity.py), never the log.

Cost: most events carry an identifier set already folded (a person's sends, deliveries, opens…);
those sets are remembered (bounded) and cost only their decoding. The rest cost one lookup per
batch and a few rows written per new identifier or link. People merge by size (the smaller joins
the larger), so relabelling costs at most the smaller side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence

from loopwire.identity import BIT, Ident, identifiers_of
from loopwire.store import SQLiteStore, Store
from loopwire.store import identity as graph

log = logging.getLogger("loopwire.identity")

BATCH = 2_000  # log rows per transaction
POLL_S = 0.5  # idle: look for new rows this often
SETTLED_MAX = 200_000  # identifier sets remembered as already folded
NICE = 19  # the follower process's CPU priority: ingest first, the graph with what is left
RESTART_DELAY_S = 1.0
BUSY_CPU_SHARE = 0.10  # of one core, while ingest is appending and the graph is behind (`follow`)
STOP_TIMEOUT_S = 10.0


class Follower:
    def __init__(
        self,
        store: Store,
        external: str | None = None,
        batch: int = BATCH,
        poll: float = POLL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._external = external
        self._batch = batch
        self._poll = poll
        self._settled: set[frozenset[Ident]] = set()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._checked = False
        self.folded = 0  # events folded by this follower

    def settings(self) -> dict[str, str]:
        return {"external": self._external or ""}

    def _check_settings(self) -> None:
        """A graph built with another external id attribute is rebuilt from the start of the log."""
        stored = graph.meta(self._store)
        if stored and stored != self.settings():
            log.warning("identity settings changed (%s → %s): rebuilding the graph", stored, self.settings())
            graph.reset(self._store, self.settings())
            self._settled.clear()
        self._checked = True

    def fold_once(self) -> int:
        """Fold the next batch; returns how many log rows it read (0: caught up). Sync: run it in a
        thread (the server does) or from the CLI."""
        if not self._checked:
            self._check_settings()
        after = graph.cursor(self._store)
        rows = graph.read_batch(self._store, after, self._batch)
        if not rows:
            return 0
        fold, sets = self._plan(after, [(seq, identifiers_of(body, self._external)) for seq, body in rows])
        try:
            graph.apply(self._store, fold)
        except graph.Conflict:
            log.info("another follower folded events after seq %d; reading on from there", after)
            return len(rows)
        self._remember(sets)  # only once written: a failed batch is read and planned again
        self.folded += len(rows)
        return len(rows)

    def catch_up(self) -> int:
        total = 0
        while n := self.fold_once():
            total += n
        return total

    def _plan(
        self, after: int, rows: list[tuple[int, list[Ident]]]
    ) -> tuple[graph.Fold, dict[frozenset[Ident], None]]:
        events = [(*idents[0], seq) for seq, idents in rows if idents and idents[0][0] != "user_id"]
        sets: dict[frozenset[Ident], None] = {}
        for _, idents in rows:
            if len(idents) and (key := frozenset(idents)) not in self._settled:
                sets[key] = None
        idents = list(dict.fromkeys(i for s in sets for i in s))
        nodes = {i: list(v) for i, v in graph.nodes(self._store, idents).items()} if idents else {}
        loaded = {person for person, _ in nodes.values()}
        people = {p: list(v) for p, v in graph.people(self._store, sorted(loaded)).items()} if loaded else {}
        before = {p: tuple(v) for p, v in people.items()}
        candidates = [(e, u) for s in sets for e in _of(s, "email") for u in _of(s, "user_id")]
        pairs = graph.known_pairs(self._store, candidates) if candidates else set()
        parent: dict[int, int] = {}

        def find(p: int) -> int:
            while p in parent:
                p = parent[p]
            return p

        next_person = graph.last_person(self._store) + 1 if sets else 0
        tally: dict[str, int] = {}
        new_nodes: set[Ident] = set()
        changed_partners: set[Ident] = set()
        new_pairs: list[tuple[str, str]] = []
        merges: dict[int, int] = {}
        for members in sets:
            roots = {find(nodes[i][0]) for i in members if i in nodes}
            if roots:
                root = max(roots, key=lambda p: (people[p][1], -p))
                for other in roots - {root}:
                    parent[other] = root
                    merges[other] = root
                    people[root][0] |= people[other][0]
                    people[root][1] += people[other][1]
            else:
                root, next_person = next_person, next_person + 1
                people[root] = [0, 0]
            for ident in members:
                if ident not in nodes:
                    nodes[ident] = [root, 0]
                    new_nodes.add(ident)
                    people[root][0] |= BIT[ident[0]]
                    people[root][1] += 1
                    tally[f"kind:{ident[0]}"] = tally.get(f"kind:{ident[0]}", 0) + 1
            for email in _of(members, "email"):
                for user in _of(members, "user_id"):
                    if (email, user) in pairs:
                        continue
                    pairs.add((email, user))
                    new_pairs.append((email, user))
                    for ident, name in (
                        (("email", email), "split:email"),
                        (("user_id", user), "split:user_id"),
                    ):
                        nodes[ident][1] += 1
                        if nodes[ident][1] == 2:
                            tally[name] = tally.get(name, 0) + 1
                        if ident not in new_nodes:
                            changed_partners.add(ident)
        written: list[tuple[int, int, int]] = []
        for person, (mask, size) in people.items():
            old = before.get(person)
            alive = person not in parent
            if old is not None and (not alive or old != (mask, size)):
                tally[f"mask:{old[0]}"] = tally.get(f"mask:{old[0]}", 0) - 1
            if alive and old != (mask, size):
                tally[f"mask:{mask}"] = tally.get(f"mask:{mask}", 0) + 1
                written.append((person, mask, size))
        fold = graph.Fold(
            after=after,
            cursor=rows[-1][0],
            new_nodes=[(k, v, find(nodes[(k, v)][0]), nodes[(k, v)][1]) for k, v in new_nodes],
            partners=[(nodes[i][1], *i) for i in changed_partners],
            merges=[(old, find(old)) for old in merges],
            people=written,
            pairs=new_pairs,
            tally=tally,
            events=events,
            meta=self.settings(),
        )
        return fold, sets

    def _remember(self, sets: dict[frozenset[Ident], None]) -> None:
        if len(self._settled) + len(sets) > SETTLED_MAX:
            self._settled.clear()
        self._settled.update(sets)

    def follow(
        self,
        stop: threading.Event,
        cpu: Callable[[], float] = time.process_time,
        head: Callable[[], int] | None = None,
    ) -> None:
        """Fold until `stop` is set: a batch at a time while behind, then every `poll` seconds.

        While the log is growing (ingest is busy) and the graph is behind, it folds with at most
        `BUSY_CPU_SHARE` of one core: after each batch it waits the batch's CPU time × (1/share − 1).
        At the lowest scheduling priority its CPU still cost webhook ingest about a tenth of its
        rate at saturation on a 2-core machine (bench/identity_cost.py): the cores' caches and the
        host's accounting are shared even when the scheduler is not. A log that grows by less than a
        batch per poll (4,000 events a second) is never held back; under a heavier burst the graph
        falls behind (`loopwire_identity_lag_events`) and catches up at full speed once the log
        stops growing (the benchmark's bursts of 50,000 events: 4–5 s after)."""
        head = head or self._store.event_count
        seen = head()
        while not stop.is_set():
            started = cpu()
            try:
                read = self.fold_once()
            except Exception:
                log.exception("the identity follower failed; retrying in %gs", RESTART_DELAY_S)
                stop.wait(RESTART_DELAY_S)
                continue
            if read < self._batch:
                stop.wait(self._poll)
                continue
            spent = cpu() - started
            now = head()
            if now > seen:  # ingest appended while this batch was folded: give it the cores
                stop.wait(spent * (1 / BUSY_CPU_SHARE - 1))
            seen = now


class FollowerProcess:
    """`loopwire serve`'s handle on the follower's process: started with the server, started again
    if it dies, stopped with it. The process exits when its stdin closes, so it also ends when the
    server is killed (the pipe closes with it)."""

    def __init__(self, store_path: str, external: str | None, on_restart: Callable[[], None] = lambda: None):
        self._argv = [sys.executable, "-m", "loopwire.pipeline.identity_graph", "--store", store_path]
        if external:
            self._argv += ["--external", external]
        self._on_restart = on_restart
        self._process: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.starts = 0

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    @property
    def stopping(self) -> bool:
        return self._stopping

    def _spawn(self) -> subprocess.Popen[bytes]:
        process = subprocess.Popen(self._argv, stdin=subprocess.PIPE)
        lower_priority(process.pid)
        self.starts += 1
        return process

    async def start(self) -> None:
        self._process = self._spawn()
        self._task = asyncio.create_task(self._supervise(), name="identity-follower")

    async def _supervise(self) -> None:
        while not self._stopping:
            assert self._process is not None
            code = await asyncio.to_thread(self._process.wait)
            if self.stopping:  # (a property: `stop` sets it while this waits)
                return
            log.error("the identity follower's process stopped (exit %s); starting another", code)
            self._on_restart()
            await asyncio.sleep(RESTART_DELAY_S)
            if not self.stopping:
                self._process = self._spawn()

    async def stop(self) -> None:
        self._stopping = True
        process = self._process
        if process is not None:
            if process.stdin is not None:
                process.stdin.close()  # the follower finishes its batch and exits
            await asyncio.to_thread(_reap, process)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def lower_priority(pid: int) -> None:
    """Give the follower only the CPU nothing else wants, before it folds anything. SCHED_IDLE
    (Linux): a waking server or ingest process takes the core from it at once. Nice 19 alone was not
    enough: the kernel's scheduler (EEVDF) lets a running task finish its slice, a few milliseconds,
    before a woken one runs, and each request's path wakes the server and the ingest process several
    times; that cost webhook ingest about a tenth of its rate and doubled its p99
    (bench/identity_cost.py). Nice 19 stays as the fallback where SCHED_IDLE is missing."""
    with contextlib.suppress(OSError):
        os.setpriority(os.PRIO_PROCESS, pid, NICE)
    if hasattr(os, "SCHED_IDLE"):
        with contextlib.suppress(OSError):
            os.sched_setscheduler(pid, os.SCHED_IDLE, os.sched_param(0))


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _of(members: frozenset[Ident], kind: str) -> list[str]:
    return [value for k, value in members if k == kind]


def main(argv: Sequence[str] | None = None) -> None:
    """The follower's process: `python -m loopwire.pipeline.identity_graph --store PATH`."""
    parser = argparse.ArgumentParser(description="Fold the log into the identity graph until stdin closes.")
    parser.add_argument("--store", required=True)
    parser.add_argument("--external", default=None)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    stop = threading.Event()

    def watch_stdin() -> None:
        with contextlib.suppress(OSError, ValueError):
            sys.stdin.buffer.read()  # returns at EOF: the server closed the pipe, or died
        stop.set()

    threading.Thread(target=watch_stdin, name="stdin-watch", daemon=True).start()
    store = SQLiteStore(args.store, recover=False)  # the graph follows a log file (store/identity.py)
    try:
        Follower(store, args.external).follow(stop)
    finally:
        store.close()


if __name__ == "__main__":
    main()
