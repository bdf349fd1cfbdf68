"""Redaction: linear time on any input, and registered secrets masked in every printed form."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import psycopg
import pytest

from jobs.core import redact
from tests.support import odoo_target
from tests.support.harness import OWNER_ROLE, ROOT, Runner, job_dsn
from tests.support.odoo_target import SLEEP, SLEEP_LINE, SLEEP_VAR
from tests.support.servers.webhook import Reply, WebhookReceiver
from tests.support.tenant_db import ensure_role

# 200k-character inputs built to make a backtracking pattern scan ahead from every position:
# long runs a pattern's prefix accepts, with the character it needs at the end never coming.
ADVERSARIAL = [
    "'a' * 200_000",  # a URL scheme that never meets '://'
    "'a.' * 100_000",
    "'a://:' * 40_000",  # URL userinfo whose '@' never comes
    "'x://u:' + 'p' * 200_000",
    "'postgresql://u:' * 13_000",
    '"password=\'" * 20_000',  # quoted DSN values never closed
    "'password=\"' * 20_000",
    "'password=' * 22_000",
    "'password' + ' ' * 200_000",
    "\"'password': '\" * 15_000",
    "'bearer ' * 30_000",
    "'basic' + ' ' * 200_000",
    "'whsec_' * 33_000",
    "'syt_' * 50_000",
    "'x' * 199_990 + ' Zq'",  # a short registered secret at the end of a long word run
]

PROBE = """
import sys
from jobs.core import redact
redact.register("Zq")
for expr in sys.argv[1:]:
    out = redact.text(eval(expr))
print("ok")
"""


def test_every_pattern_is_linear_on_200k_adversarial_input() -> None:
    # The hard timeout is what fails: a quadratic pattern needs minutes on the first input alone
    # (40k characters took 13-65 s), a linear one well under a second for all of them.
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *ADVERSARIAL],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_patterns_still_mask_after_the_rewrite() -> None:
    assert "hunter22" not in redact.text("postgresql://u:hunter22@db:5432/x")
    assert "p/a:ss" not in redact.text("see redis://:p/a:ss@cache:6379/0 now")
    assert redact.text("http://host/path a://x@y") == "http://host/path a://x@y"
    for line in ("host=db password='a b c' user=u", 'password="a b c"', "{'password': 'a b c'}",
                 '{"password": "a b c"}', "password = 'a \\' b c'"):  # fmt: skip
        masked = redact.text(line)
        assert "a b" not in masked and "b c" not in masked, masked
    assert "user=u" in redact.text("host=db password='a b c' user=u")


def test_registered_secrets_are_masked_in_every_printed_form() -> None:
    key = "K3y/with space+&'\"\\é-" + os.urandom(4).hex()
    redact.register(key)
    forms = {
        "raw": key,
        "json": json.dumps(key)[1:-1],
        "json-unicode": json.dumps(key, ensure_ascii=False)[1:-1],
        "repr": repr(key)[1:-1],
        "quote": quote(key),
        "quote-safe": quote(key, safe=""),
        "quote_plus": quote_plus(key),
        "libpq": key.replace("\\", "\\\\").replace("'", "\\'"),
        "quote-lower-hex": re.sub(r"%[0-9A-F]{2}", lambda m: m.group(0).lower(), quote(key)),
        "base64": base64.b64encode(key.encode()).decode(),
    }
    for name, form in forms.items():
        masked = redact.text(f"peer said [{form}]")
        assert form not in masked, name
        assert masked == "peer said [***]", (name, masked)

    login, erp_key = "erp-bot", "ek-" + os.urandom(6).hex()
    redact.register(erp_key)
    redact.register_basic(login, erp_key)
    pair = base64.b64encode(f"{login}:{erp_key}".encode()).decode()
    assert pair not in redact.text(f"upstream echoed {pair}")
    assert pair.rstrip("=") not in redact.text(f"token={pair.rstrip('=')}x")


def test_short_registered_secrets_are_masked_as_whole_tokens() -> None:
    redact.register("Q7")
    assert redact.text("user=u password=Q7") == "user=u password=***"
    assert redact.text("login with Q7 failed ('Q7')") == "login with *** failed ('***')"
    # Inside a longer word or number it is left alone: otherwise every log would be masked.
    assert redact.text("Q7x and xQ7 and Q70") == "Q7x and xQ7 and Q70"


def test_the_webhook_key_without_its_prefix_never_reaches_any_output(
    run_job: Runner, tmp_path: Path
) -> None:
    body = base64.b64encode(os.urandom(24)).decode()
    secret = "whsec_" + body
    path = tmp_path / "secret"
    path.write_text(secret)
    with WebhookReceiver(secret) as receiver:
        # A portal that echoes the key it holds, unprefixed, in its refusal.
        receiver.plan = [Reply(400, body=json.dumps({"error": f"key {body} revoked"}).encode())]
        run = run_job(
            ["account-webhook", "--subdomain", "acme", "--project-id", "23", "--tier", "pro",
             "--owner-email", "o@example.com", "--owner-name", "O"],
            PLANA_ACCOUNT_WEBHOOK_URL=receiver.url,
            PLANA_ACCOUNT_WEBHOOK_SECRET_FILE=str(path),
            PLANA_REDIS_URL="",
        )  # fmt: skip
    assert run.rc == 65, run.output
    assert "revoked" in run.result["error"]  # the refusal is reported...
    assert body not in run.output  # ...without the key, in stdout, stderr and termination


# ----------------------------------------------------------------------------- Odoo's password


@pytest.mark.timeout(1800 if odoo_target.current().real else 300)  # a real install: minutes
def test_a_sigkill_during_odoo_leaves_no_password_in_tmpdir(
    run_job: Runner, pg_dsn: str, pg: psycopg.Connection[Any], uid: str, tmp_path: Path,
    drop_dbs: list[str],
) -> None:  # fmt: skip
    """The Odoo under test (odoo_target: the stand-in, or real Odoo 18) is killed while its SLEEP
    addon holds it mid-install: the job's temporary Odoo config is left behind, without the
    password, and nothing the job or Odoo printed up to then holds it."""
    odoo_target.current().require(18)
    target = odoo_target.current().for_admin(pg_dsn)
    ensure_role(pg, OWNER_ROLE)
    drop_dbs.append(f"template_{uid}%")
    secret = "odoo-pw-" + uid
    dsn = psycopg.conninfo.make_conninfo(job_dsn(pg_dsn), password=secret)  # trust: ignored
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    odoo = target.binary(tmp_path / "odoo", 18, env={SLEEP_VAR: "3600"})  # until the kill
    args = ["template-build", "--template-code", "basic", "--odoo-version", "18",
            "--modules", f"base,web,{SLEEP}", "--template-db", f"template_{uid}",
            "--odoo-bin", str(odoo), "--odoo-config", str(target.config(tmp_path / "odoo", 18)),
            "--data-dir", str(tmp_path / "data")]  # fmt: skip
    proc = run_job.popen(args, PLANA_PG_DSN=dsn, TMPDIR=str(tmpdir))
    assert proc.stdout is not None and proc.stderr is not None
    child, printed = None, []
    try:
        for line in proc.stdout:
            printed.append(line)
            event = json.loads(line)
            if event.get("event") == "started" and event.get("child") == "odoo":
                child = int(event["pid"])
            if SLEEP_LINE in line:
                break
        assert child is not None
        # Odoo got the password the way real Odoo reads it: libpq's environment.
        environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
        assert f"PGPASSWORD={secret}".encode() in environ
    finally:
        if child is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)  # a pod kill takes the job and its Odoo child
        proc.send_signal(signal.SIGKILL)
        out, err = proc.communicate(timeout=60)
    assert any(SLEEP_LINE in line for line in printed)  # Odoo was mid-install, connected
    assert secret not in "".join(printed) + out + err  # the job's log, Odoo's lines in it
    confs = list(tmpdir.glob("plana-odoo-*.conf"))
    assert confs  # the kill skipped the clean-up, as it does in a pod...
    for conf in confs:
        text = conf.read_text()
        assert "db_password" not in text and secret not in text  # ...and left no password
