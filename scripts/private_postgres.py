"""A private PostgreSQL on a free loopback port: initdb and pg_ctl from Debian's `postgresql`.

Used by scripts/cluster.py --postgres and by the tests (tests/webapp/pg_helpers.py). The PostgreSQL tools
refuse to run as root, so as root they run as the `postgres` user (runuser), in a folder under /tmp it owns.
Logins are trusted on loopback (like the private Redis, it is for this machine's own processes).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

BIN_DIRS = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
MISSING = "" if BIN_DIRS else "PostgreSQL is not installed (Debian's `postgresql`: WITH_CLUSTER=1 scripts/setup.sh)"
# For a server that lives for one test session: durability traded for speed.
FAST_SETTINGS = ("fsync=off", "synchronous_commit=off", "full_page_writes=off")


def _as_owner() -> list[str]:
    """The command prefix that runs a PostgreSQL tool as a user it accepts."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PrivatePostgres:
    """One server: start(), url(database), admin(sql), stop(). fast=True: fsync off (tests)."""

    def __init__(self, *, fast: bool = False, max_connections: int = 200):
        self.bin = Path(BIN_DIRS[-1])
        self.dir = Path(tempfile.mkdtemp(prefix="faces-pg-"))
        self.port = _free_port()
        self.settings = (*(FAST_SETTINGS if fast else ()), f"max_connections={max_connections}")

    def _tool(self, name: str, *args: str) -> None:
        subprocess.run([*_as_owner(), str(self.bin / name), *args], check=True, capture_output=True, cwd="/")

    def start(self) -> PrivatePostgres:
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        data = str(self.dir / "data")
        self._tool("initdb", "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C.UTF-8",
                   "--no-sync")
        options = " ".join([f"-p {self.port}", f"-k {self.dir}", "-c listen_addresses=127.0.0.1",
                            *(f"-c {setting}" for setting in self.settings)])
        self._tool("pg_ctl", "-D", data, "-o", options, "-l", str(self.dir / "log"), "-w", "start")
        return self

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self, sql: str) -> None:
        """Run one statement on the `postgres` database (CREATE DATABASE cannot run in a transaction)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(sql)

    def restart(self) -> None:
        """Stop the server (fast: every connection is cut) and start it again on the same port and data."""
        self._tool("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "log"), "-m", "fast", "-w", "restart")

    def stop(self, *, keep: bool = False) -> None:
        """Stop the server; keep=True leaves its folder (the data) behind."""
        self._tool("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "stop")
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)
