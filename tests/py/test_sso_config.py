"""Single sign-on (`[oidc]`) around the edges, against the real binary: `airlock
check` names bad keys with their line, a gateway whose provider cannot be reached
still starts (static tokens work, the sign-in route answers a clear 502 page),
and the open `GET /api/login` tells the login page what to offer. The sign-in
itself runs in a browser against a real provider: tests/e2e/sso.test.mjs."""
from __future__ import annotations


import rawmcp as rm
from harness import free_port
from holdkit import ALICE, run_cli, start_gateway
from test_config_e2e import APPROVER, stdio_upstream

SECRET_ENV = {"AIRLOCK_TEST_OIDC_SECRET": "oidc-client-secret-0123456789"}


def oidc_table(issuer: str, extra: str = "", roles: str = '"airlock-approvers" = "approver"\n') -> str:
    return (f'[oidc]\nissuer = "{issuer}"\nclient_id = "airlock"\n'
            f'client_secret_env = "AIRLOCK_TEST_OIDC_SECRET"\n{extra}\n[oidc.roles]\n{roles}')


def test_check_names_the_bad_oidc_key_and_its_line(tmp_path):
    cfg = tmp_path / "sso.toml"
    cfg.write_text(stdio_upstream("test") + oidc_table("http://login.example.com"))
    done = run_cli("check", cfg, env=SECRET_ENV)
    assert done.returncode == 1, done
    assert "sso.toml:6:10: oidc.issuer: `http://login.example.com` must use https://" in done.stdout + done.stderr

    cfg.write_text(stdio_upstream("test") + oidc_table("https://login.example.com", roles='"ops" = "root"\n'))
    done = run_cli("check", cfg, env=SECRET_ENV)
    assert done.returncode == 1
    assert 'oidc.roles."ops": role `root` is not one of viewer, approver, admin' in done.stdout + done.stderr

    cfg.write_text(stdio_upstream("test") + oidc_table("https://login.example.com"))
    done = run_cli("check", cfg)  # the secret's variable is not set
    assert done.returncode == 1
    assert "oidc.client_secret_env names environment variable `AIRLOCK_TEST_OIDC_SECRET`, which is not set" in (
        done.stdout + done.stderr)

    done = run_cli("check", cfg, env=SECRET_ENV)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "single sign-on with https://login.example.com (1 group(s) mapped)" in done.stdout


def test_an_unreachable_provider_leaves_tokens_working_and_explains_itself(procs, monkeypatch):
    monkeypatch.setenv("AIRLOCK_TEST_OIDC_SECRET", SECRET_ENV["AIRLOCK_TEST_OIDC_SECRET"])
    nobody = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = procs.tmp_path / "sso-down.toml"
    cfg.write_text(stdio_upstream("test") + APPROVER + oidc_table(nobody, 'provider_name = "Acme SSO"\n'))
    gw = start_gateway(procs, config=cfg)

    options = gw.http.get("/api/login")
    assert options.status_code == 200
    assert options.json() == {"token": True, "sso": {"provider": "Acme SSO", "login_url": "/auth/oidc/login"}}

    r = gw.http.get("/auth/oidc/login")
    assert r.status_code == 502
    assert r.headers["content-type"].startswith("text/html")
    assert "Identity provider unavailable" in r.text
    assert "default-src 'self'" in r.headers["content-security-policy"]
    assert r.headers["cache-control"] == "no-store"

    # A callback nobody started: refused before anything is sent to the provider.
    r = gw.http.get("/auth/oidc/callback", params={"code": "c", "state": "s"})
    assert r.status_code == 400 and "not started here" in r.text
    assert "airlock_oidc=;" in r.headers.get("set-cookie", ""), "the state cookie is cleared"

    # Static-token approvers are untouched.
    assert gw.api("GET", "/api/me", token=ALICE).json()["sso"] is False
    assert rm.wait_until(lambda: "identity provider not usable yet" in gw.proc.stderr_text(), 10)


def test_without_oidc_the_sign_in_routes_say_so(procs):
    gw = start_gateway(procs)
    assert gw.http.get("/api/login").json() == {"token": True, "sso": None}
    r = gw.http.get("/auth/oidc/login")
    assert r.status_code == 404 and "Single sign-on is off" in r.text
    assert gw.http.get("/auth/oidc/callback").status_code == 404
