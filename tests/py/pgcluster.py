"""A throwaway PostgreSQL cluster for tests, from the system's server binaries: `initdb` into a
temp dir, `pg_ctl start` on a free 127.0.0.1 port, `pg_ctl stop -m immediate` at teardown. The
Python twin of tests/common/postgres.rs.

`initdb` refuses to run as root: as root the cluster is created and run as the `postgres` user
(`runuser -u postgres --`), with its directory owned by that user. Tests using the `pg` fixture
skip, saying why, when `initdb` is not installed (`scripts/setup-test-env` installs it).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from harness import free_port


def find_bin() -> Path | None:
    """`AIRLOCK_PG_BIN`, else the newest /usr/lib/postgresql/*/bin, else `initdb` on PATH."""
    if os.environ.get("AIRLOCK_PG_BIN"):
        return Path(os.environ["AIRLOCK_PG_BIN"])
    versions = []
    for d in Path("/usr/lib/postgresql").glob("*/bin"):
        if (d / "initdb").exists() and d.parent.name.isdigit():
            versions.append((int(d.parent.name), d))
    if versions:
        return max(versions)[1]
    found = shutil.which("initdb")
    return Path(found).parent if found else None


class PgCluster:
    def __init__(self, bin_dir: Path):
        self.bin = bin_dir
        self.dir = Path(tempfile.mkdtemp(prefix="airlock-pg-py-"))
        (self.dir / "sock").mkdir()
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            subprocess.run(["chown", "-R", f"{self.run_as}:", str(self.dir)], check=True)
        self.port = 0

    def _cmd(self, program: str, *args: str) -> list[str]:
        exe = str(self.bin / program)
        prefix = ["runuser", "-u", self.run_as, "--"] if self.run_as else []
        return [*prefix, exe, *args]

    def start(self, tls: tuple[Path, Path] | None = None) -> "PgCluster":
        """`tls`: (certificate, key) PEM files; the server then has `ssl = on` and accepts TCP
        connections over TLS only (`hostssl` in pg_hba.conf), so a plain one is refused."""
        data = str(self.dir / "data")
        subprocess.run(self._cmd("initdb", "-D", data, "-U", "airlock", "--auth=trust", "-E", "UTF8", "--no-sync"),
                       check=True, capture_output=True)
        ssl = self._enable_tls(*tls) if tls else ""
        for _ in range(5):  # a port taken between free_port() and start is retried
            self.port = free_port()
            options = (f"-p {self.port} -k {self.dir / 'sock'} -c listen_addresses=127.0.0.1 "
                       f"-c fsync=off -c synchronous_commit=off{ssl}")
            done = subprocess.run(self._cmd("pg_ctl", "-D", data, "-l", str(self.dir / "log"), "-o", options,
                                            "-w", "-t", "30", "start"), capture_output=True)
            if done.returncode == 0:
                return self
        log = (self.dir / "log").read_text() if (self.dir / "log").exists() else ""
        raise RuntimeError(f"PostgreSQL did not start:\n{log}")

    def _enable_tls(self, cert: Path, key: Path) -> str:
        data = self.dir / "data"
        shutil.copy(cert, data / "server.crt")
        shutil.copy(key, data / "server.key")
        os.chmod(data / "server.key", 0o600)
        if self.run_as:
            subprocess.run(["chown", f"{self.run_as}:", str(data / "server.crt"), str(data / "server.key")],
                           check=True)
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 trust\n")
        return " -c ssl=on -c ssl_cert_file=server.crt -c ssl_key_file=server.key"

    def url(self, password: str | None = None) -> str:
        user = f"airlock:{password}" if password else "airlock"
        return f"postgres://{user}@127.0.0.1:{self.port}/postgres"

    def stop(self):
        data = self.dir / "data"
        if (data / "postmaster.pid").exists():
            subprocess.run(self._cmd("pg_ctl", "-D", str(data), "-m", "immediate", "-w", "stop"), capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def pg():
    bin_dir = find_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/setup-test-env "
                    "or set AIRLOCK_PG_BIN")
    cluster = PgCluster(bin_dir)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
