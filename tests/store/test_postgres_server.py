"""The tests' PostgreSQL server (tests/helpers/postgres.py) is real, private, and each test's own."""

from __future__ import annotations

import os
import stat

import psycopg

from tests.helpers.postgres import Cluster


def test_each_test_gets_an_empty_database_of_a_running_server(postgres: Cluster, pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn) as conn:
        (version,) = conn.execute("SHOW server_version_num").fetchone() or ("0",)
        assert int(version) >= 150000
        tables = conn.execute("SELECT COUNT(*) FROM pg_tables WHERE schemaname = 'public'").fetchone()
        assert tables == (0,)
    assert postgres.create_database() != pg_dsn


def test_it_listens_on_a_private_socket_only(postgres: Cluster, pg_dsn: str) -> None:
    assert stat.S_IMODE(os.stat(postgres.socket_dir).st_mode) == 0o700
    with psycopg.connect(pg_dsn) as conn:
        assert conn.execute("SHOW listen_addresses").fetchone() == ("",)
        if os.geteuid() == 0:  # PostgreSQL refuses root: the cluster runs as Debian's `postgres` user
            assert os.stat(postgres.data).st_uid != 0
