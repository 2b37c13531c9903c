"""The ingest process of `loopwire serve`: Customer.io webhooks checked, routed and committed beside the
server, so that the server's event loop does HTTP and nothing else for them.

One Python process cannot both serve tens of thousands of requests a second and verify, parse and
commit them: the commit needs a thread, and that thread and the event loop take turns at one
interpreter lock (docs/performance.md). Here the server reads each webhook's body and forwards its
timestamp, signature and body; this process checks them exactly as the in-process path does
(`sources.customerio_webhooks.check`), routes the event, commits every webhook it has at hand in one
fsync'd transaction (`store.Appender`), and only then answers. The server's own `Store` goes on
writing everything else; SQLite's lock orders the two writers.

The two talk over a socket pair. A frame is a 4-byte little-endian length and a msgpack array: the
server sends the requests of one turn of its event loop as one frame, the process answers each group
it commits with one frame. Its first frame, empty, says it is ready. If the process dies, what it had
not answered gets 503 (Customer.io sends it again; the event id makes that safe) and the server
starts another.

Started by the server as `python -c <_PROGRAM> FD`, which then writes the Spec on the process's stdin.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import NamedTuple

import msgspec

import loopwire
from loopwire.config import DestinationOptions
from loopwire.destinations.registry import router
from loopwire.errors import InputError
from loopwire.metrics import Metrics
from loopwire.model import Event
from loopwire.sources.customerio_webhooks import (
    FAILED,
    INTERNAL,
    SOURCE,
    Verdict,
    answered,
    check,
    keyed,
    refused,
)
from loopwire.store import STORE_ERRORS, Appender

log = logging.getLogger("loopwire.ingest_process")

# At most this many webhooks per commit. A bigger group would share its fsync among more webhooks,
# but every one of them waits for the whole group, and meanwhile the server has nothing to answer:
# with 64-256 senders, groups of 32 keep both processes busy (docs/performance.md).
GROUP_MAX = 32
READY_TIMEOUT_S = 30.0  # a process that is not ready by then has failed to start
RESTART_DELAY_S = 1.0  # between attempts to start a new process after one died
RECV_BYTES = 1 << 20  # read from the server's socket at most this much at a time
_LENGTH = struct.Struct("<I")
# The process imports this module as the server did: an installed loopwire first, else the tree the
# server's copy came from (appended, so it shadows nothing installed).
_ROOT = str(Path(loopwire.__file__).resolve().parents[1])
_PROGRAM = f"import sys; sys.path.append({_ROOT!r}); from loopwire.ingest_process import main; main()"


class Spec(msgspec.Struct, frozen=True):
    """What the process needs, sent on its stdin (pickled: the options hold secrets, which must not
    reach a command line or the environment of other children)."""

    store: str
    signing_keys: list[str]
    replay_window: float
    destinations: dict[str, DestinationOptions]


class Request(msgspec.Struct, frozen=True, array_like=True):
    rid: int
    timestamp: str | None
    signature: str | None
    body: bytes


class Reply(msgspec.Struct, frozen=True, array_like=True):
    rid: int
    status: int
    outcome: str
    code: str
    known: bool
    body: bytes
    wake: list[str]  # destinations with a new outbox row
    unrouted: bool  # a new event no destination takes


_encode = msgspec.msgpack.Encoder().encode
_requests = msgspec.msgpack.Decoder(list[Request])
_replies = msgspec.msgpack.Decoder(list[Reply])


def frame(items: list[Request] | list[Reply]) -> bytes:
    payload = _encode(items)
    return _LENGTH.pack(len(payload)) + payload


def unframe(buffer: bytearray) -> list[bytes]:
    """Take the complete frames off the front of `buffer`; their payloads."""
    payloads: list[bytes] = []
    position = 0
    while len(buffer) - position >= 4:
        (size,) = _LENGTH.unpack_from(buffer, position)
        if len(buffer) - position - 4 < size:
            break
        payloads.append(bytes(buffer[position + 4 : position + 4 + size]))
        position += 4 + size
    del buffer[:position]
    return payloads


# -- the process -------------------------------------------------------------------------------
class Prepared(NamedTuple):
    refused: list[Reply]  # answered without a commit
    accepted: list[tuple[int, Event, list[str]]]  # (rid, event, destinations): to commit


class Committer:
    """Checks and routes a group of forwarded webhooks (`prepare`), then commits it in one
    transaction and answers each webhook (`commit`)."""

    def __init__(self, spec: Spec, clock: Callable[[], float] = time.time) -> None:
        self._keys = keyed(key.encode() for key in spec.signing_keys)
        self._window = spec.replay_window
        self._takes = [(name, router(options)) for name, options in spec.destinations.items()]
        self._appender = Appender(spec.store)
        self._clock = clock

    def prepare(self, requests: list[Request]) -> Prepared:
        now = self._clock()
        prepared = Prepared([], [])
        for request in requests:
            try:
                event = check(
                    self._keys, request.timestamp, request.signature, request.body, now, self._window
                )
            except InputError as error:
                prepared.refused.append(_reply(request.rid, refused(error)))
                continue
            except Exception:  # a defect of loopwire's, not the sender's: this webhook alone fails
                log.exception("could not check a Customer.io webhook")
                prepared.refused.append(_reply(request.rid, INTERNAL))
                continue
            prepared.accepted.append(
                (request.rid, event, [name for name, takes in self._takes if takes(event)])
            )
        return prepared

    def commit(self, group: Prepared) -> list[Reply]:
        replies, accepted = list(group.refused), group.accepted
        if not accepted:
            return replies
        try:
            (fresh,) = self._appender.append([([e for _, e, _ in accepted], [d for _, _, d in accepted])])
        except Exception as exc:
            if len(accepted) > 1:  # one event may be what failed: each alone, so it fails by itself
                for one in accepted:
                    replies += self.commit(Prepared([], [one]))
                return replies
            if isinstance(exc, STORE_ERRORS):  # disk full, I/O error: one line, not a traceback each
                log.error("could not commit Customer.io event %s: %s", accepted[0][1].id, exc)
            else:
                log.exception("could not commit Customer.io event %s", accepted[0][1].id)
            return [*replies, _reply(accepted[0][0], FAILED)]
        for (rid, event, dests), new in zip(accepted, fresh, strict=True):
            replies.append(_reply(rid, answered(event, new), dests if new else [], new and not dests))
        return replies

    def close(self) -> None:
        self._appender.close()


def _reply(rid: int, verdict: Verdict, wake: list[str] | None = None, unrouted: bool = False) -> Reply:
    return Reply(
        rid, verdict.status, verdict.outcome, verdict.code, verdict.known, verdict.body, wake or [], unrouted
    )


def serve(spec: Spec, sock: socket.socket) -> None:
    """Answer frames until the server closes its end. Webhooks are committed in arrival order, at
    most `GROUP_MAX` per commit: whatever arrived while a group was being committed makes the next
    groups."""
    committer = Committer(spec)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)  # as `loopwire serve` does (cli.py)
    sock.sendall(frame([]))
    buffer = bytearray()
    # One receive buffer for the life of the process: `recv(n)` would allocate n bytes each time
    # and shrink them to what arrived, and those big short-lived blocks among the long-lived ones of
    # SQLite's cache fragment the C heap so that it only grows (issue 13, docs/performance.md).
    chunk = memoryview(bytearray(RECV_BYTES))
    waiting: list[Request] = []
    try:
        while True:
            try:  # with webhooks waiting, only take what has already arrived
                size = sock.recv_into(chunk, RECV_BYTES, socket.MSG_DONTWAIT if waiting else 0)
            except BlockingIOError:
                pass
            else:
                if not size:
                    return
                buffer += chunk[:size]
                waiting += [request for payload in unframe(buffer) for request in _requests.decode(payload)]
            if waiting:
                group, waiting = waiting[:GROUP_MAX], waiting[GROUP_MAX:]
                sock.sendall(frame(committer.commit(committer.prepare(group))))
    finally:
        committer.close()


def main() -> None:
    # Ctrl-C and a service manager's SIGTERM reach the whole process group: the server shuts down
    # gracefully, and this process must go on answering until the server closes the socket.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.WARNING, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s"
    )
    spec: Spec = pickle.load(sys.stdin.buffer)
    with socket.socket(fileno=int(sys.argv[1])) as sock:
        serve(spec, sock)


# -- the server's side -------------------------------------------------------------------------
class _Link(asyncio.Protocol):
    def __init__(self, owner: IngestProcess) -> None:
        self._owner = owner
        self._buffer = bytearray()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        for payload in unframe(self._buffer):
            replies = _replies.decode(payload)
            if not self.ready.done():
                self.ready.set_result(None)
            self._owner._answer(replies)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if not self.ready.done():
            self.ready.set_exception(RuntimeError("the ingest process exited before it was ready"))
        self._owner._lost(self)


class IngestProcess:
    """The server's handle on the ingest process: `await ingest(timestamp, signature, body)` is the
    webhook's Verdict, given once the event is committed (the `forward` of CustomerioWebhooks)."""

    def __init__(self, spec: Spec, metrics: Metrics, wake: Callable[[str], None]) -> None:
        self._spec = spec
        self._metrics = metrics
        self._wake = wake
        self._loop: asyncio.AbstractEventLoop | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._transport: asyncio.Transport | None = None
        self._link: _Link | None = None
        self._waiting: dict[int, asyncio.Future[Verdict]] = {}
        self._outgoing: list[Request] = []
        self._rid = 0
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None
        self.starts = 0  # processes started (a restart after a crash adds one)

    @property
    def up(self) -> bool:
        """The process is running and answering (false between a crash and its restart)."""
        return self._link is not None and not self._link.lost

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def start(self) -> None:
        loop = self._loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        try:
            process = subprocess.Popen(
                [sys.executable, "-c", _PROGRAM, str(theirs.fileno())],
                stdin=subprocess.PIPE,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        assert process.stdin is not None
        with process.stdin:
            process.stdin.write(pickle.dumps(self._spec))
        link = _Link(self)
        transport, _ = await loop.create_unix_connection(lambda: link, sock=ours)
        try:
            await asyncio.wait_for(link.ready, READY_TIMEOUT_S)
        except BaseException:
            transport.close()
            process.kill()
            await asyncio.to_thread(process.wait)
            raise
        self._process, self._transport, self._link = process, transport, link
        self.starts += 1

    def __call__(self, timestamp: str | None, signature: str | None, body: bytes) -> Awaitable[Verdict]:
        # A plain function returning the future: one coroutine frame less to resume per webhook.
        loop = self._loop
        future: asyncio.Future[Verdict]
        if self._link is None or self._link.lost or loop is None:  # between a crash and the restart
            future = asyncio.get_running_loop().create_future()
            future.set_result(FAILED)
            return future
        self._rid += 1
        future = loop.create_future()
        self._waiting[self._rid] = future
        if not self._outgoing:
            loop.call_soon(self._flush)
        self._outgoing.append(Request(self._rid, timestamp, signature, body))
        return future

    def _flush(self) -> None:
        outgoing, self._outgoing = self._outgoing, []
        if self._transport is not None and self._link is not None and not self._link.lost:
            self._transport.write(frame(outgoing))
        else:
            for request in outgoing:
                self._settle(request.rid, FAILED)

    def _answer(self, replies: list[Reply]) -> None:
        """Count and wake what the pipeline's `Ingest.one` would, then hand the verdict over."""
        metrics = self._metrics
        for reply in replies:
            if reply.outcome == "duplicate":
                metrics.duplicates.labels(SOURCE).inc()
            elif reply.unrouted:
                metrics.unrouted.labels(SOURCE).inc()
            for name in reply.wake:
                self._wake(name)
            self._settle(reply.rid, Verdict(reply.status, reply.outcome, reply.code, reply.known, reply.body))

    def _settle(self, rid: int, verdict: Verdict) -> None:
        future = self._waiting.pop(rid, None)
        if future is not None and not future.done():
            future.set_result(verdict)

    def _lost(self, link: _Link) -> None:
        if link is not self._link:  # a process that never became ready: nothing waits on it
            return
        for rid in list(self._waiting):
            self._settle(rid, FAILED)
        if self._stopping:
            return
        self._metrics.ingest_restarts.inc()
        log.error(
            "the ingest process stopped unexpectedly; its unanswered webhooks got 503, starting another"
        )
        self._restart = asyncio.ensure_future(self._start_again())

    async def _start_again(self) -> None:
        process = self._process
        if process is not None:
            await asyncio.to_thread(_reap, process)
        while not self._stopping:
            try:
                await self.start()
                return
            except Exception:
                log.exception("could not start the ingest process; trying again in %gs", RESTART_DELAY_S)
                await asyncio.sleep(RESTART_DELAY_S)

    async def stop(self) -> None:
        """Close the socket: the process answers what it holds, sees the end and exits."""
        self._stopping = True
        if self._restart is not None:
            self._restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restart
        if self._transport is not None:
            self._transport.close()
        if self._process is not None:
            await asyncio.to_thread(_reap, self._process)


def _reap(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
