"""The tests' PostgreSQL: scripts/private_postgres.py's server, fsync off, a fresh database per test."""

from __future__ import annotations

import itertools
import sys

from web_helpers import PROJECT_DIR

sys.path.insert(0, str(PROJECT_DIR / "scripts"))
from private_postgres import MISSING, PrivatePostgres  # noqa: E402, F401


class SessionPostgres(PrivatePostgres):
    """A server for one test session: new_database() gives each test its own."""

    def __init__(self):
        super().__init__(fast=True)
        self._names = itertools.count(1)

    def new_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        name = f"test_{next(self._names)}"
        self.admin(f"CREATE DATABASE {name} STRATEGY FILE_COPY")
        return self.url(name)
