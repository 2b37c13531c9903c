"""What the benchmarks share: loopback servers as subprocesses, wrk, the webhook mix, the machine.

Every server a benchmark starts listens on 127.0.0.1 on a free port, runs as its own process with
the same interpreter, and is stopped (SIGTERM, then SIGKILL after a grace period) when the block ends.
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import httpx
import msgspec
import yaml

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT = BENCH / "out"
PYTHON = sys.executable
SIGNING_KEY = "bench-signing-key"
API_KEY = "bench-api-key-0001"
# Webhook bodies: the repo's golden mapping inputs, plus the vendors' reference webhooks (their copy
# in tests/reference, tests/helpers/reference.py).
GOLDEN_INPUTS = ROOT / "tests" / "fixtures" / "amplitude"
REFERENCE_WEBHOOKS = ROOT / "tests" / "reference" / "customerio" / "webhooks"
MAX_MIX_BODY = 8_192  # leave out the synthetic 70 kB "long strings" edge case: it is not a typical webhook


# ---- results --------------------------------------------------------------------------------------


@dataclass
class Result:
    """One figure beside its baseline. `higher_is_better` says which way the target points."""

    name: str
    value: float
    unit: str
    baseline: float | None = None
    baseline_label: str = ""
    target: float | None = None
    target_kind: str = "ratio>="  # ratio>= | value<= | value>=
    higher_is_better: bool = True
    show_ratio: bool = True  # False: the baseline is context (e.g. a latency), not a denominator
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline or not self.show_ratio:
            return None
        return self.value / self.baseline if self.higher_is_better else self.baseline / self.value

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        if self.target_kind == "ratio>=":
            return self.ratio is not None and self.ratio >= self.target
        if self.target_kind == "value<=":
            return self.value <= self.target
        return self.value >= self.target

    def target_text(self) -> str:
        if self.target is None:
            return "no target"
        if self.target_kind == "ratio>=":
            return f"target ratio ≥ {self.target:g}"
        sign = "≤" if self.target_kind == "value<=" else "≥"
        return f"target {sign} {number(self.target)} {self.unit}"

    def line(self) -> str:
        text = f"{self.name}: {number(self.value)} {self.unit}"
        if self.baseline is not None:
            text += f" vs {self.baseline_label} {number(self.baseline)} {self.unit}"
            if self.ratio is not None:
                text += f" → ratio {self.ratio:.2f}"
        met = self.met
        if met is not None:
            text += f" ({self.target_text()}: {'met' if met else 'MISSED'})"
        return text

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ratio"] = self.ratio
        data["met"] = self.met
        return data


def number(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:,.1f}"
    return f"{value:,.2f}"


def report(results: Sequence[Result]) -> None:
    for result in results:
        print(result.line(), flush=True)


# ---- processes on loopback ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30.0) -> None:
    """Until `url` answers anything below 500; fails with the process's log if it exits first."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}:\n{tail(log)}")
        try:
            if httpx.get(url, timeout=1.0).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g}s:\n{tail(log)}")
        time.sleep(0.05)


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid


@contextlib.contextmanager
def serve(
    argv: Sequence[str],
    *,
    port: int,
    log: Path,
    health: str = "/healthz",
    env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> Iterator[Server]:
    """Run `argv` (which must listen on 127.0.0.1:`port`) until the block ends."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            list(argv),
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + health, process, log, timeout)
        yield Server(process, url, log)
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes], grace: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def loopwire_serve(
    config: Path, port: int, log: Path, env: Mapping[str, str]
) -> contextlib.AbstractContextManager[Server]:
    argv = [PYTHON, "-m", "loopwire", "serve", "--config", str(config), "--port", str(port)]
    return serve(argv, port=port, log=log, env=env)


def amplitude_sandbox(port: int, log: Path) -> contextlib.AbstractContextManager[Server]:
    argv = [PYTHON, "-m", "loopwire", "sandbox", "--port", str(port), "--vendor", "amplitude"]
    argv += ["--api-key", API_KEY]
    return serve(argv, port=port, log=log, health="/_sandbox/amplitude/stats")


def memory_kb(pid: int) -> dict[str, int]:
    """VmHWM (peak resident set) and VmRSS of a live process, in kB."""
    found: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for row in status:
            key, _, rest = row.partition(":")
            if key in ("VmHWM", "VmRSS"):
                found[key] = int(rest.split()[0])
    return found


# ---- the config loopwire runs with ----------------------------------------------------------------


def write_config(
    path: Path,
    store: Path,
    base_url: str,
    server: dict[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
    **amplitude: Any,
) -> Path:
    """examples/loopwire.yaml cut to the Customer.io webhook source and the amplitude destination, with
    the store, the sandbox URL, `server`, other top-level `sections` (e.g. `identity`) and `amplitude`
    options put in (nothing else in it may leave loopback)."""
    example = yaml.safe_load((ROOT / "examples" / "loopwire.yaml").read_text())
    destination = dict(example["destinations"]["amplitude"])
    destination["base_url"] = base_url
    document = {
        "store": {**example.get("store", {}), "path": str(store)},
        "server": {**example.get("server", {}), **(server or {})},
        "sources": {"customerio_webhooks": example["sources"]["customerio_webhooks"]},
        "destinations": {"amplitude": destination},
        **(sections or {}),
    }
    for key, value in amplitude.items():
        if isinstance(value, dict):
            destination.setdefault(key, {}).update(value)
        else:
            destination[key] = value
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


LOOPWIRE_ENV = {"CIO_WEBHOOK_SIGNING_KEY": SIGNING_KEY, "AMPLITUDE_API_KEY": API_KEY}


def mark_identity_folded(store: Path, events: int) -> None:
    """Mark the identity graph of a log built by SQL as folded up to `events`: the follower then
    folds only what a run adds (the graph's own cost is bench/identity_cost.py's subject)."""
    from loopwire.store import SQLiteStore
    from loopwire.store import identity as graph

    opened = SQLiteStore(store, recover=False)
    try:
        graph.of(opened).run(
            lambda c: c.execute("INSERT OR REPLACE INTO id_cursor (id, seq) VALUES (1, ?)", (events,))
        )
    finally:
        opened.close()


# ---- wrk ------------------------------------------------------------------------------------------


@dataclass
class WrkRun:
    requests: int  # completed (answered) requests
    non_2xx: int  # answered with a status ≥ 400 (wrk's "status" errors)
    socket_errors: dict[str, int]
    duration_s: float
    latency_us: dict[str, float]  # p50, p90, p99, p99.9, max, mean
    repeats: int  # requests sent after a thread had cycled through its share of the request file
    warmups: int  # paced runs: the first request of each connection, a GET of /healthz
    command: str
    # The share of the machine's CPU time the hypervisor gave to other guests while wrk ran (from
    # /proc/stat; None where it is not there). On a shared VM a run with a high share is slow for
    # reasons outside the benchmark: compare ratios of runs with similar shares.
    steal: float | None = None

    @property
    def rate(self) -> float:
        """Requests answered per second, the warm-up GETs left out."""
        return (self.requests - self.warmups) / self.duration_s

    @property
    def ok(self) -> int:
        return self.requests - self.non_2xx


def pooled_rate(runs: Sequence[WrkRun]) -> float:
    """Requests per second over several runs together (each run weighs by its length)."""
    return sum(r.requests for r in runs) / sum(r.duration_s for r in runs)


def cpu_ticks() -> tuple[int, int] | None:
    """(stolen, all) CPU ticks since boot, from the first line of /proc/stat."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (fields[7], sum(fields)) if len(fields) > 7 else None


def run_wrk(
    url: str,
    script: Path,
    script_args: Sequence[str],
    *,
    connections: int,
    threads: int,
    duration: int,
    timeout: int = 5,
) -> WrkRun:
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (`make bench` installs it with apt)")
    argv = [
        wrk,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration}s",
        f"--timeout={timeout}s",
        "--latency",
        "-s",
        str(script),
        url,
        "--",
        *script_args,
    ]
    before = cpu_ticks()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 120, cwd=ROOT)
    after = cpu_ticks()
    steal = None
    if before is not None and after is not None and after[1] > before[1]:
        steal = round((after[0] - before[0]) / (after[1] - before[1]), 3)
    if done.returncode != 0:
        raise RuntimeError(f"wrk failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    summary = None
    for row in done.stdout.splitlines():
        if row.startswith("WRKJSON "):
            summary = json.loads(row.removeprefix("WRKJSON "))
    if summary is None:
        raise RuntimeError(f"wrk printed no summary:\n{done.stdout}\n{done.stderr}")
    errors = summary["errors"]
    shown = [a if not a.startswith(str(ROOT)) else os.path.relpath(a, ROOT) for a in argv[1:]]
    return WrkRun(
        requests=summary["requests"],
        non_2xx=errors.pop("status"),
        socket_errors=errors,
        duration_s=summary["duration_us"] / 1e6,
        latency_us=summary["latency_us"],
        repeats=summary["repeats"],
        warmups=summary["warmups"],
        command="wrk " + " ".join(shown),
        steal=steal,
    )


# ---- the webhook mix ------------------------------------------------------------------------------


def _fixture_files() -> list[Path]:
    return sorted(GOLDEN_INPUTS.glob("*/input.json")) + sorted(REFERENCE_WEBHOOKS.glob("*/*.json"))


def webhook_mix() -> list[dict[str, Any]]:
    """Every webhook body among the fixtures that loopwire accepts (a valid, complete webhook)."""
    from loopwire.errors import InputError
    from loopwire.sources.customerio_parse import parse_webhook

    docs: list[dict[str, Any]] = []
    for path in _fixture_files():
        raw = path.read_bytes()
        if len(raw) > MAX_MIX_BODY:
            continue
        try:
            parse_webhook(raw, 0)
        except InputError:
            continue
        docs.append(msgspec.json.decode(raw))
    if not docs:
        raise RuntimeError(f"no webhook fixtures found under {GOLDEN_INPUTS}")
    return docs


def personalise(template: dict[str, Any], event_id: str, user: str, timestamp: int) -> dict[str, Any]:
    """A copy of `template` as a new event of `user` at `timestamp`: its ids, email addresses and
    device ids become the user's (so load spreads over users as real traffic does, and the sandbox's
    per-user and per-device throttling sees many ids); an id the template leaves out stays out, and
    the invalid ids of edge-case templates (id 0, too-short devices) stay as they are."""
    doc = copy.deepcopy(template)
    doc["event_id"] = event_id
    doc["timestamp"] = timestamp
    data = doc.get("data")
    if not isinstance(data, dict):
        return doc
    email = f"{user}@example.com"
    # a phone number of the user's own: the templates' one shared number (and one shared cio_id)
    # would make the identity graph see every user of the load as one person
    phone = "+1555" + "".join(c for c in user if c.isdigit()).rjust(7, "0")[-7:]
    identifiers = data.get("identifiers")
    if isinstance(identifiers, dict):
        if isinstance(identifiers.get("id"), str | int) and identifiers["id"] not in (0, "0"):
            identifiers["id"] = user
        if isinstance(identifiers.get("email"), str):
            identifiers["email"] = email
        if isinstance(identifiers.get("cio_id"), str):
            identifiers["cio_id"] = f"cio-{user}"
    for key in ("customer_id",):
        if isinstance(data.get(key), str):
            data[key] = user
    for key in ("email_address", "recipient"):
        value = data.get(key)
        if isinstance(value, str) and "@" in value:
            data[key] = email
        elif isinstance(value, str) and re.fullmatch(r"\+?[\d\s().-]{5,}", value):
            data[key] = phone
    recipients = data.get("recipients")
    if isinstance(recipients, list):
        for index, recipient in enumerate(recipients):
            device = recipient.get("device_id") if isinstance(recipient, dict) else None
            if isinstance(device, str) and len(device) >= 8 and device.strip("0-"):
                recipient["device_id"] = f"device-{user}-{index}"
    return doc


# ---- the machine ----------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for row in Path("/proc/cpuinfo").read_text().splitlines():
            if row.startswith("model name"):
                cpu = row.split(":", 1)[1].strip()
                break
    memory_gib = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for row in Path("/proc/meminfo").read_text().splitlines():
            if row.startswith("MemTotal:"):
                memory_gib = round(int(row.split()[1]) / 1024 / 1024, 1)
    wrk_version = None
    if shutil.which("wrk"):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        match = re.search(r"wrk (\S+)", probe.stdout + probe.stderr)
        wrk_version = match.group(1) if match else None
    versions = {}
    for package in ("uvicorn", "uvloop", "httptools", "starlette", "msgspec", "httpx"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[package] = metadata.version(package)
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)),
        "memory_gib": memory_gib,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "kernel": platform.release(),
        "sqlite": __import__("sqlite3").sqlite_version,
        "wrk": wrk_version,
        "packages": versions,
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }


def describe_machine(info: Mapping[str, Any]) -> str:
    return (
        f"{info['cpu']}, {info['cores']} cores ({info['cores_usable']} usable), {info['memory_gib']} GiB;"
        f" Python {info['python']}, SQLite {info['sqlite']}, wrk {info['wrk']}, kernel {info['kernel']}"
    )
