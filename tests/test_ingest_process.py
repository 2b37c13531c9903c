"""The ingest process of `loopwire serve`: webhooks checked and committed beside the server, answered alike
with or without it, and nothing answered 2xx lost when it dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from loopwire.app import create_app
from loopwire.config import Config
from loopwire.ingest_process import (
    GROUP_MAX,
    Committer,
    IngestProcess,
    Reply,
    Request,
    Spec,
    frame,
    serve,
    unframe,
)
from loopwire.metrics import Metrics
from loopwire.sources.customerio_webhooks import FAILED
from loopwire.store import SQLiteStore
from tests.conftest import SIGNING_KEY, make_config, post, wait_until
from tests.helpers.cio import encode, signed_headers, webhook
from tests.helpers.servers import free_port, serve_app
from tests.test_crash import serve_config, start_server


def request(rid: int, doc: dict[str, Any], key: str = SIGNING_KEY) -> Request:
    body = encode(doc)
    headers = signed_headers(key, body)
    return Request(rid, headers["X-CIO-Timestamp"], headers["X-CIO-Signature"], body)


def spec_for(config: Config) -> Spec:
    return Spec(config.store.path, [SIGNING_KEY], 900.0, dict(config.destinations))


def in_process(config: Config) -> Config:
    return msgspec.structs.replace(
        config, server=msgspec.structs.replace(config.server, ingest_process=False)
    )


def test_frames_are_taken_whole_however_the_bytes_arrive() -> None:
    first, second = frame([request(1, webhook())]), frame([request(2, webhook()), request(3, webhook())])
    stream = first + second
    buffer = bytearray()
    payloads: list[bytes] = []
    for cut in range(0, len(stream), 7):  # 7 bytes at a time: lengths and bodies split anywhere
        buffer += stream[cut : cut + 7]
        payloads += unframe(buffer)
    assert payloads == [first[4:], second[4:]]
    assert buffer == bytearray()


def test_committer_accepts_once_and_refuses_precisely(tmp_path: Path) -> None:
    config = make_config(tmp_path / "log.db", "http://127.0.0.1:9")
    SQLiteStore(config.store.path).close()  # the server migrates before it starts the process
    committer = Committer(spec_for(config))
    doc, other = webhook(), webhook(user_id="cust_2")
    try:
        first = committer.commit(committer.prepare([request(1, doc), request(2, doc)]))
        second = committer.commit(committer.prepare([request(3, doc), request(4, other, key="wrong-key")]))
        assert committer.commit(committer.prepare([])) == []
    finally:
        committer.close()
    by_rid = {reply.rid: reply for reply in first + second}
    assert (by_rid[1].status, by_rid[1].outcome, by_rid[1].known, by_rid[1].wake) == (
        200,
        "accepted",
        True,
        ["amplitude"],
    )
    assert msgspec.json.decode(by_rid[1].body) == {"status": "accepted", "event_id": doc["event_id"]}
    # A second copy in the same group, and one in a later group, are duplicates: stored once, no wake.
    assert [(by_rid[r].outcome, by_rid[r].wake) for r in (2, 3)] == [("duplicate", []), ("duplicate", [])]
    assert (by_rid[4].status, by_rid[4].outcome, by_rid[4].code) == (401, "rejected", "invalid_signature")
    store = SQLiteStore(config.store.path, recover=False)
    try:
        assert store.event_count() == 1  # the refused webhook wrote nothing
        assert store.counts()["amplitude"]["pending"] == 1
    finally:
        store.close()


def test_committer_routes_like_the_server(tmp_path: Path) -> None:
    config = make_config(tmp_path / "log.db", "http://127.0.0.1:9", route={"events": ["email.*"]})
    SQLiteStore(config.store.path).close()
    committer = Committer(spec_for(config))
    try:
        replies = committer.commit(
            committer.prepare([request(1, webhook("email")), request(2, webhook("sms"))])
        )
    finally:
        committer.close()
    email, sms = sorted(replies, key=lambda reply: reply.rid)
    assert (email.wake, email.unrouted) == (["amplitude"], False)
    assert (sms.outcome, sms.wake, sms.unrouted) == ("accepted", [], True)


def test_a_failed_commit_answers_503_for_every_event_of_the_group(tmp_path: Path) -> None:
    config = make_config(tmp_path / "log.db", "http://127.0.0.1:9")
    SQLiteStore(config.store.path).close()
    committer = Committer(spec_for(config))
    committer._appender.close()  # the next commit fails inside SQLite, as on an I/O error
    try:
        replies = committer.commit(committer.prepare([request(1, webhook()), request(2, webhook(), key="x")]))
    finally:
        committer._appender = type(committer._appender)(config.store.path)
        committer.close()
    by_rid = {reply.rid: reply for reply in replies}
    assert (by_rid[1].status, by_rid[1].code, by_rid[1].body) == (503, "store_unavailable", FAILED.body)
    assert by_rid[2].status == 401  # refused before the commit: still its own precise answer


@pytest.mark.parametrize("process", [True, False], ids=["ingest-process", "in-process"])
def test_webhooks_are_answered_alike_with_and_without_the_process(
    tmp_path: Path, sandbox: Any, process: bool
) -> None:
    box, sandbox_url = sandbox
    config = make_config(tmp_path / "log.db", sandbox_url)
    app = create_app(config if process else in_process(config))
    runtime = app.state.runtime
    doc = webhook("sms", "clicked")
    body = encode(doc)
    with serve_app(app) as url:
        assert (runtime.ingest_process is not None) is process
        endpoint = f"{url}/webhooks/customerio"
        first = post(endpoint, body, signed_headers(SIGNING_KEY, body))
        again = post(endpoint, body, signed_headers(SIGNING_KEY, body))
        stale = post(endpoint, body, signed_headers(SIGNING_KEY, body, now=time.time() - 3600))
        broken = post(endpoint, b"{", signed_headers(SIGNING_KEY, b"{"))
        wait_until(lambda: box.events, what="the event in the sandbox")
        metrics = httpx.get(f"{url}/metrics").text
    assert (first.status_code, first.json()) == (200, {"status": "accepted", "event_id": doc["event_id"]})
    assert (again.status_code, again.json()["status"]) == (200, "duplicate")
    assert (stale.status_code, stale.json()["error"]["code"]) == (401, "stale_timestamp")
    assert (broken.status_code, broken.json()["error"]["code"]) == (400, "invalid_json")
    assert [event["insert_id"] for event in box.events] == [doc["event_id"]]
    for line in (
        'loopwire_ingest_requests_total{outcome="accepted",source="customerio"} 1.0',
        'loopwire_ingest_requests_total{outcome="duplicate",source="customerio"} 1.0',
        'loopwire_ingest_requests_total{outcome="rejected",source="customerio"} 2.0',
        'loopwire_ingest_rejected_requests_total{code="stale_timestamp",source="customerio"} 1.0',
        'loopwire_ingest_events_total{known="yes",source="customerio"} 1.0',
        'loopwire_ingest_duplicate_events_total{source="customerio"} 1.0',
    ):
        assert line in metrics


def test_a_killed_ingest_process_is_replaced_and_what_was_answered_2xx_is_kept(
    tmp_path: Path, sandbox: Any, caplog: pytest.LogCaptureFixture
) -> None:
    config = make_config(tmp_path / "log.db", sandbox[1], paused=True)
    app = create_app(config)
    runtime = app.state.runtime
    answers: list[tuple[str, int]] = []
    stop = threading.Event()

    def load(url: str) -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                doc = webhook()
                body = encode(doc)
                status = client.post(url, content=body, headers=signed_headers(SIGNING_KEY, body)).status_code
                answers.append((doc["event_id"], status))

    with serve_app(app) as url:
        first_pid = runtime.ingest_process.pid
        senders = [threading.Thread(target=load, args=(f"{url}/webhooks/customerio",)) for _ in range(4)]
        for sender in senders:
            sender.start()
        wait_until(lambda: len(answers) > 50, what="webhooks under load")
        os.kill(first_pid, signal.SIGKILL)
        wait_until(lambda: runtime.ingest_process.starts == 2, what="a new ingest process")
        settled = len(answers)
        wait_until(lambda: len(answers) > settled + 50, what="webhooks after the restart")
        stop.set()
        for sender in senders:
            sender.join()
        assert runtime.ingest_process.pid != first_pid
        assert "loopwire_ingest_process_restarts_total 1.0" in httpx.get(f"{url}/metrics").text
        stored = set(
            runtime.store.read(lambda conn: [row[0] for row in conn.execute("SELECT id FROM events")])
        )
    assert {status for _, status in answers} <= {200, 503}
    assert answers[-1][1] == 200
    assert {ident for ident, status in answers if status == 200} <= stored
    assert "the ingest process stopped unexpectedly" in caplog.text


def test_the_ingest_process_ends_with_the_server(tmp_path: Path, sandbox: Any) -> None:
    app = create_app(make_config(tmp_path / "log.db", sandbox[1]))
    with serve_app(app):
        process = app.state.runtime.ingest_process._process
        assert process.poll() is None
    assert process.poll() == 0  # it saw the socket close, finished, and exited cleanly


def test_a_process_that_cannot_start_is_an_error(tmp_path: Path) -> None:
    config = make_config(tmp_path / "missing" / "log.db", "http://127.0.0.1:9")
    ingest = IngestProcess(spec_for(config), Metrics(), lambda name: None)
    with pytest.raises(RuntimeError, match="exited before it was ready"):
        asyncio.run(ingest.start())


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def test_sigkill_of_the_server_ends_its_ingest_process(tmp_path: Path) -> None:
    """And the identity follower's process: each sees its link to the server close and exits."""
    config = serve_config(tmp_path, paused=True)
    server = start_server(config, free_port())
    try:
        kids = wait_until(lambda: k if len(k := children(server.pid)) == 2 else None, what="both children")
        server.send_signal(signal.SIGKILL)
        server.wait()

        def gone(child: int) -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            # Not our child: once it exits it is a zombie of init's until reaped; count that as gone.
            return Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"

        wait_until(
            lambda: all(gone(child) for child in kids), what="the ingest and identity processes to exit"
        )
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()


def test_the_process_commits_in_arrival_order_at_most_group_max_at_a_time(tmp_path: Path) -> None:
    config = make_config(tmp_path / "log.db", "http://127.0.0.1:9")
    SQLiteStore(config.store.path).close()
    ours, theirs = socket.socketpair()
    worker = threading.Thread(target=serve, args=(spec_for(config), theirs))
    worker.start()
    buffer = bytearray()
    groups: list[list[Reply]] = []

    def read_group() -> list[Reply]:
        while True:
            payloads = unframe(buffer)
            if payloads:
                (payload,) = payloads  # the process answers one group at a time
                return msgspec.msgpack.decode(payload, type=list[Reply])
            buffer.extend(ours.recv(1 << 16))

    try:
        assert read_group() == []  # ready
        ours.sendall(frame([request(rid, webhook()) for rid in range(100)]))  # 100 at once
        while sum(len(group) for group in groups) < 100:
            groups.append(read_group())
    finally:
        ours.close()  # the process sees the end and returns
        worker.join(10)
    assert not worker.is_alive()
    assert max(len(group) for group in groups) == GROUP_MAX and len(groups) >= 100 // GROUP_MAX + 1
    assert [reply.rid for group in groups for reply in group] == list(range(100))
    assert {reply.outcome for group in groups for reply in group} == {"accepted"}
    store = SQLiteStore(config.store.path, recover=False)
    try:
        assert store.event_count() == 100
    finally:
        store.close()
