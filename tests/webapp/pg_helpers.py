"""A private PostgreSQL for the tests: initdb and pg_ctl from Debian's `postgresql`, on a free loopback port.

The PostgreSQL tools refuse to run as root, so as root they run as the `postgres` user (runuser), in a
temporary folder it owns. Settings trade durability for speed (fsync off): the server lives for one test
session. Each test gets its own database (`new_database`).
"""

from __future__ import annotations

import glob
import itertools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from web_helpers import free_port

BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
MISSING = "" if BIN_DIRS else "PostgreSQL is not installed (Debian's `postgresql`: WITH_CLUSTER=1 scripts/setup.sh)"
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=200")


def _as_owner() -> list[str]:
    """The command prefix that runs a PostgreSQL tool as a user it accepts."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


class PrivatePostgres:
    """One server: start(), url(database), new_database(), stop()."""

    def __init__(self):
        self.bin = Path(BIN_DIRS[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="faces-pg-"))
        self.port = free_port()
        self._names = itertools.count(1)

    def _tool(self, name: str, *args: str) -> None:
        subprocess.run([*_as_owner(), str(self.bin / name), *args], check=True, capture_output=True, cwd="/")

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = str(self.dir / "data")
        self._tool("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8",
                   "--no-sync")
        options = " ".join([f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1",
                            *(f"-c {setting}" for setting in FAST_SETTINGS)])
        self._tool("pg_ctl", "-D", data, "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement on the `postgres` database (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return self.url(name)

    def stop(self) -> None:
        self._tool("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)
