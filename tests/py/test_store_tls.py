"""TLS to the shared PostgreSQL store (`sslmode`, `sslrootcert`, `[store] ca_file`), end to end.

The test makes a CA and a server certificate with `openssl` (for the name `db.airlock.test`, not
for 127.0.0.1), and a second, unrelated CA. PostgreSQL runs with `ssl = on` and accepts TCP
connections over TLS only. URLs connect to 127.0.0.1 (`hostaddr`) under the certificate's name
(`host`), as a client reaching a database by name does.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import AIRLOCK_BIN, gateway_number, listening_port
from holdkit import HOLD_POLICY, TOKENS_ENV, Gateway, run_cli, write_config
from pgcluster import PgCluster, find_bin

NAME = "db.airlock.test"


def openssl(*args: str, cwd: Path):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> Path:
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.pem",
            "-days", "2", "-subj", f"/CN=Airlock test {name}", cwd=d)
    return d / f"{name}.pem"


def make_server_cert(d: Path, ca: str) -> tuple[Path, Path]:
    (d / "ext.cnf").write_text(f"subjectAltName=DNS:{NAME}\nbasicConstraints=CA:FALSE\n"
                               "keyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", f"/CN={NAME}", cwd=d)
    openssl("x509", "-req", "-in", "server.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", cwd=d)
    return d / "server.pem", d / "server.key"


@pytest.fixture
def tls_pg(tmp_path):
    bin_dir = find_bin()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found; run scripts/setup-test-env")
    ca = make_ca(tmp_path, "ca")
    other = make_ca(tmp_path, "other-ca")
    cluster = PgCluster(bin_dir)
    try:
        cluster.start(tls=make_server_cert(tmp_path, "ca"))
        yield cluster, ca, other
    finally:
        cluster.stop()


def url(pg: PgCluster, query: str, host: str = NAME) -> str:
    return f"postgres://airlock@{host}:{pg.port}/postgres?hostaddr=127.0.0.1&{query}"


def serve(procs, store: str) -> tuple[list, Path]:
    """The command line of a gateway whose `[store]` section is `store`."""
    n = gateway_number()
    config = write_config(procs.tmp_path, HOLD_POLICY, name=f"tls-{n}")
    config.write_text(config.read_text() + f"\n[store]\n{store}\nreplica = \"t{n}\"\n")
    audit = procs.tmp_path / f"tls-{n}.db"
    return [AIRLOCK_BIN, "serve", "--config", config, "--listen", "127.0.0.1:0", "--audit", audit], audit


def refused_start(procs, store: str) -> str:
    cmd, _ = serve(procs, store)
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env={**TOKENS_ENV, "PATH": "/usr/bin:/bin"})
    assert done.returncode != 0, done.stderr
    return done.stderr


def test_verify_full_with_the_ca_file_connects_and_the_chain_verifies(procs, tls_pg):
    pg, ca, _ = tls_pg
    cmd, audit = serve(procs, f"url = {url(pg, 'sslmode=verify-full')!r}\nca_file = {str(ca)!r}".replace("'", '"'))
    proc = procs.start(cmd, env=TOKENS_ENV)
    gw = Gateway(proc, listening_port(proc), audit, cmd[3])
    r = gw.http.get("/healthz")
    assert r.status_code == 200, r.text
    assert gw.metrics()["airlock_store_healthy"] == 1
    # The CLI reaches the same chain with the CA in the URL (libpq's sslrootcert).
    verify = run_cli("audit", "verify", "--store", url(pg, f"sslmode=verify-full&sslrootcert={ca}"))
    assert verify.returncode == 0, verify.stderr


def test_a_server_certificate_from_another_ca_is_refused_naming_the_problem(procs, tls_pg):
    pg, _, other = tls_pg
    stderr = refused_start(procs, f'url = "{url(pg, "sslmode=verify-full")}"\nca_file = "{other}"')
    assert "certificate" in stderr.lower() and "UnknownIssuer" in stderr, stderr
    # verify-ca checks the issuer too.
    stderr = refused_start(procs, f'url = "{url(pg, "sslmode=verify-ca")}"\nca_file = "{other}"')
    assert "UnknownIssuer" in stderr, stderr


def test_verify_full_checks_the_host_name_and_verify_ca_does_not(procs, tls_pg):
    pg, ca, _ = tls_pg
    by_ip = f"postgres://airlock@127.0.0.1:{pg.port}/postgres"
    stderr = refused_start(procs, f'url = "{by_ip}?sslmode=verify-full"\nca_file = "{ca}"')
    assert 'certificate not valid for name "127.0.0.1"' in stderr, stderr
    verify = run_cli("audit", "verify", "--store", f"{by_ip}?sslmode=verify-ca&sslrootcert={ca}")
    # Connected (TLS accepted); the database holds no chain yet, which is what it says.
    assert "certificate" not in verify.stderr.lower(), verify.stderr


def test_without_tls_the_server_refuses_and_require_without_a_ca_encrypts(procs, tls_pg):
    pg, _, _ = tls_pg
    stderr = refused_start(procs, f'url = "{url(pg, "sslmode=disable")}"')
    assert "no encryption" in stderr or "pg_hba.conf" in stderr, stderr
    cmd, audit = serve(procs, f'url = "{url(pg, "sslmode=require")}"')
    proc = procs.start(cmd, env=TOKENS_ENV)
    gw = Gateway(proc, listening_port(proc), audit, cmd[3])
    assert gw.http.get("/healthz").status_code == 200
