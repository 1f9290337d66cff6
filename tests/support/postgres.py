"""A real PostgreSQL started by the tests: initdb in a temporary folder, a Unix socket there,
no TCP listener, trust authentication. Never the machine's own server.

As root, initdb refuses to run: the cluster then belongs to ``nobody`` and the server
programs run through ``runuser``. Debian puts the programs in /usr/lib/postgresql/N/bin,
off PATH; they are found there too.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.broker import free_port


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version, reverse=True)
    return candidates[0] if candidates else None


def _version(path: str) -> int:
    part = Path(path).parent.parent.name
    return int(part) if part.isdigit() else 0


class PostgresServer:
    """``durable=False`` (tests) turns fsync off; benchmarks keep PostgreSQL's defaults."""

    def __init__(self, durable: bool = False) -> None:
        self.durable = durable
        initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise RuntimeError("PostgreSQL server programs are missing: apt-get install -y postgresql (make test does)")
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.dir = Path(tempfile.mkdtemp(prefix="ek-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        self._as: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.dir, "nobody")
            os.chmod(self.dir, 0o700)
            self._as = ["runuser", "-u", "nobody", "--"]
        self.started = False

    def _run(self, args: list[str], timeout: float = 60) -> None:
        proc = subprocess.run([*self._as, *args], capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{args[0]} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")

    def start(self) -> None:
        self._run([self.initdb, "-D", str(self.data), "--auth=trust", "-U", "postgres", "-E", "UTF8", "--no-sync"])
        self.resume()

    def pause(self) -> None:
        """Stop the server, keeping its data: the database is away until :meth:`resume`."""
        self._run([self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop"], timeout=30)
        self.started = False

    def resume(self) -> None:
        options = f"-k {self.dir} -p {self.port} -c listen_addresses=''"
        if not self.durable:
            options += " -c fsync=off -c full_page_writes=off"
        self._run([self.pg_ctl, "-D", str(self.data), "-o", options, "-l", str(self.dir / "server.log"), "-w", "start"])
        self.started = True

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@/{database}?host={self.dir}&port={self.port}"

    def create_database(self) -> str:
        """A fresh, empty database on this server; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
        return self.url(name)

    def stop(self) -> None:
        if self.started:
            with contextlib.suppress(Exception):
                self._run([self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop"], timeout=30)
            self.started = False
        shutil.rmtree(self.dir, ignore_errors=True)
