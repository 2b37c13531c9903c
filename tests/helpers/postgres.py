"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster `initdb`'d
in a temporary directory, listening on a Unix socket in that directory only (no TCP), stopped and
removed at the end of the session.

PostgreSQL refuses to run as root. When the tests run as root (the sandbox, CI containers), the
cluster runs as the `postgres` system user Debian's package creates, through `runuser`, and its
directory is that user's; otherwise it runs as the user running the tests. `make test` installs
the package when `initdb` is missing (Makefile, target `postgresql`).
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SUPERUSER = "loopwire"
RUN_AS = "postgres"  # Debian's system user for PostgreSQL (created by the `postgresql-common` package)


def bindir() -> Path | None:
    """Where `initdb` and `pg_ctl` are: Debian keeps them out of PATH, in /usr/lib/postgresql/<ver>/bin."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).resolve().parent if initdb else None


def _free_port() -> int:
    # Only the socket's name uses the port (no TCP), but a port another cluster of this machine
    # uses would make its socket file clash if they shared a directory; any free one will do.
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Cluster:
    """`root`: a directory kept after `stop()` (bench/postgres_large_log.py keeps a big database
    between runs): its cluster is made there if missing, else started again. Without it, a
    temporary directory removed at the end."""

    def __init__(self, root: Path | None = None) -> None:
        found = bindir()
        if found is None:
            raise RuntimeError(
                "PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)"
            )
        self.bin = found
        self._keep = root is not None
        if root is not None:
            root.mkdir(parents=True, exist_ok=True)
        self.root = root if root is not None else Path(tempfile.mkdtemp(prefix="loopwire-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root / "socket"
        self.port = _free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", RUN_AS, "--"]
        self._names = itertools.count(1)
        if not self.socket_dir.exists():
            self._run("mkdir", "-m", "700", str(self.socket_dir))
        if not (self.data / "PG_VERSION").exists():
            self._init()
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-w",
            "-o",
            f"-p {self.port} -k {self.socket_dir} -c listen_addresses='' -c max_connections=200",
            "start",
        )

    def _init(self) -> None:
        self._run(
            str(self.bin / "initdb"),
            "-D",
            str(self.data),
            "-U",
            SUPERUSER,
            "--auth=trust",  # the socket's directory is the cluster user's, mode 700: nobody else reaches it
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # a throwaway cluster: initdb need not fsync; the server itself does
        )

    def _run(self, *argv: str) -> None:
        done = subprocess.run([*self._as, *argv], capture_output=True, text=True, cwd=self.root, check=False)
        if done.returncode:
            raise RuntimeError(
                f"{' '.join(argv[:1])} failed ({done.returncode}): {done.stderr or done.stdout}"
            )

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host={self.socket_dir} port={self.port} user={SUPERUSER} dbname={dbname}"

    def psql(self, sql: str, dbname: str = "postgres") -> str:
        done = subprocess.run(
            [
                str(self.bin / "psql"),
                "-X",
                "-q",
                "-t",
                "-A",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                self.dsn(dbname),
                "-c",
                sql,
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        return done.stdout.strip()

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database (named `name`, else the next free `loopwire_<n>`); its DSN."""
        if name is None:  # a kept cluster may hold databases of an earlier run
            taken = set(self.psql("SELECT datname FROM pg_database").split()) if self._keep else set()
            name = next(n for n in (f"loopwire_{k}" for k in self._names) if n not in taken)
        self.psql(f"CREATE DATABASE {name}")
        return self.dsn(name)

    def has_database(self, name: str) -> bool:
        return self.psql(f"SELECT 1 FROM pg_database WHERE datname = '{name}'") == "1"

    def stop(self) -> None:
        try:
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        finally:
            if not self._keep:
                shutil.rmtree(self.root, ignore_errors=True)
