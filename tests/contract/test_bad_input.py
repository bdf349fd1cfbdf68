"""Bad input → exit 64, one line naming the field, nothing written anywhere.

Each case runs the real `plana-job` process. Side effects are observed in PostgreSQL (new
databases that carry the case's names) and Redis (keys under the test's unique prefix).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis

from tests.support.harness import Runner, database_names

GOOD = {
    "--subdomain": "acme",
    "--project-id": "23",
    "--tier": "pro",
    "--odoo-version": "18",
    "--owner-email": "owner@example.com",
    "--owner-name": "Acme Owner",
}

# (case id, option, value, the option the message must name, by its flag and its variable)
CASES: list[tuple[str, str, str | None, str]] = [
    ("subdomain-empty", "--subdomain", "", "--subdomain"),
    ("subdomain-missing", "--subdomain", None, "--subdomain"),
    ("subdomain-too-long", "--subdomain", "a" * 41, "--subdomain"),
    ("subdomain-uppercase", "--subdomain", "Acme", "--subdomain"),
    ("subdomain-leading-hyphen", "--subdomain", "-acme", "--subdomain"),
    ("subdomain-trailing-hyphen", "--subdomain", "acme-", "--subdomain"),
    ("subdomain-dot", "--subdomain", "acme.corp", "--subdomain"),
    ("subdomain-dotdot-slash", "--subdomain", "../etc", "--subdomain"),
    ("subdomain-slash", "--subdomain", "acme/x", "--subdomain"),
    ("subdomain-single-quote", "--subdomain", "acme'", "--subdomain"),
    ("subdomain-double-quote", "--subdomain", 'ac"me', "--subdomain"),
    ("subdomain-semicolon", "--subdomain", "acme;drop", "--subdomain"),
    ("subdomain-sql", "--subdomain", "x'; DROP DATABASE postgres; --", "--subdomain"),
    ("subdomain-space", "--subdomain", "ac me", "--subdomain"),
    ("subdomain-underscore", "--subdomain", "ac_me", "--subdomain"),
    ("subdomain-cyrillic-a", "--subdomain", "\u0430cme", "--subdomain"),
    ("subdomain-fullwidth", "--subdomain", "\uff41cme", "--subdomain"),
    ("subdomain-dotless-i", "--subdomain", "adm\u0131n", "--subdomain"),
    ("subdomain-newline", "--subdomain", "acme\nx", "--subdomain"),
    ("subdomain-trailing-newline", "--subdomain", "acme\n", "--subdomain"),
    ("subdomain-nul-like", "--subdomain", "acme\x01", "--subdomain"),
    ("subdomain-reserved-www", "--subdomain", "www", "--subdomain"),
    ("subdomain-reserved-admin", "--subdomain", "admin", "--subdomain"),
    ("subdomain-reserved-postgres", "--subdomain", "postgres", "--subdomain"),
    ("subdomain-reserved-template1", "--subdomain", "template1", "--subdomain"),
    ("subdomain-wildcard", "--subdomain", "%", "--subdomain"),
    ("project-zero", "--project-id", "0", "--project-id"),
    ("project-negative", "--project-id", "-1", "--project-id"),
    ("project-text", "--project-id", "x", "--project-id"),
    ("project-float", "--project-id", "1.5", "--project-id"),
    ("project-leading-zero", "--project-id", "023", "--project-id"),
    ("project-huge", "--project-id", "99999999999999999999", "--project-id"),
    ("project-empty", "--project-id", "", "--project-id"),
    ("tier-gold", "--tier", "gold", "--tier"),
    ("tier-uppercase", "--tier", "Pro", "--tier"),
    ("tier-empty", "--tier", "", "--tier"),
    ("version-16", "--odoo-version", "16", "--odoo-version"),
    ("version-18.0", "--odoo-version", "18.0", "--odoo-version"),
    ("version-text", "--odoo-version", "latest", "--odoo-version"),
    ("version-empty", "--odoo-version", "", "--odoo-version"),
    ("email-no-at", "--owner-email", "owner.example.com", "--owner-email"),
    ("email-no-domain", "--owner-email", "owner@", "--owner-email"),
    ("email-spaces", "--owner-email", "own er@example.com", "--owner-email"),
    ("email-double-dot", "--owner-email", "owner@example..com", "--owner-email"),
    ("email-header-injection", "--owner-email", "a@example.com\nBcc: x@y.z", "--owner-email"),
    ("email-non-ascii", "--owner-email", "ow\u043der@example.com", "--owner-email"),
    ("name-control-char", "--owner-name", "Acme\x07Corp", "--owner-name"),
    ("name-newline", "--owner-name", "Acme\nCorp", "--owner-name"),
    ("name-escape", "--owner-name", "\x1b[31mAcme", "--owner-name"),
    ("name-too-long", "--owner-name", "A" * 129, "--owner-name"),
    ("name-blank", "--owner-name", "   ", "--owner-name"),
    ("base-domain-bad", "--base-domain", "Bad_Domain", "--base-domain"),
    ("unknown-option", "--colour", "blue", "--colour"),
]

VARIABLES = {
    "--subdomain": "PLANA_SUBDOMAIN",
    "--project-id": "PLANA_PROJECT_ID",
    "--tier": "PLANA_TIER",
    "--odoo-version": "PLANA_ODOO_VERSION",
    "--owner-email": "PLANA_OWNER_EMAIL",
    "--owner-name": "PLANA_OWNER_NAME",
    "--base-domain": "PLANA_BASE_DOMAIN",
}

# Jobs that take the whole PLANAClient spec: each is checked against every case. "{uid}" in
# their extra arguments is the test's unique token.
JOBS: list[list[str]] = [
    ["emit-event", "--type", "client.provisioned", "--stream", "{uid}:events"],
    ["tenant-db", "--data-dir", "/tmp/{uid}-data", "--owner-role", "postgres"],
]


def _argv(job: list[str], option: str, value: str | None, uid: str) -> list[str]:
    # A base domain of the test's own, so anything the job created would carry the uid.
    values: dict[str, str | None] = {**GOOD, "--base-domain": f"{uid}.test", option: value}
    argv = [arg.replace("{uid}", uid) for arg in job]
    for opt, val in values.items():
        if val is not None:
            argv += [opt, val]
    return argv


def _redis_keys(url: str, prefix: str) -> list[Any]:
    client = redis.Redis.from_url(url)
    try:
        return list(client.scan_iter(match=f"{prefix}*"))
    finally:
        client.close()


def test_table_is_large_enough() -> None:
    assert len(CASES) >= 40


@pytest.mark.parametrize("job", JOBS, ids=lambda j: j[0])
@pytest.mark.parametrize(("option", "value", "field"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])  # fmt: skip
def test_bad_input_exits_64_before_any_side_effect(
    run_job: Runner,
    pg: psycopg.Connection[Any],
    redis_url: str,
    uid: str,
    job: list[str],
    option: str,
    value: str | None,
    field: str,
) -> None:
    before = database_names(pg)
    run = run_job(_argv(job, option, value, uid))
    assert run.rc == 64, run.output
    message = run.stderr.strip()
    assert "\n" not in message, message
    assert field in message
    if field in VARIABLES:
        assert f"{field} / {VARIABLES[field]}:" in message, message
    assert run.result["outcome"] == "failed"
    assert run.result["exit_code"] == 64
    # Other suites may create databases meanwhile: look for anything this case could have made.
    new = database_names(pg) - before
    # What a case could make carries its uid (its base domain) or its value: not another
    # module's tenants, which may be made meanwhile (the suite runs modules side by side).
    assert not {d for d in new if uid in d or (value and len(value) > 2 and value in d)}
    assert _redis_keys(redis_url, uid) == []
    assert not Path(f"/tmp/{uid}-data").exists()


def test_good_twin_does_write(run_job: Runner, redis_url: str, uid: str) -> None:
    """Control for the table above: with valid input the same observation sees the write."""
    run = run_job(_argv(JOBS[0], "--subdomain", "acme", uid))
    assert run.rc == 0, run.output
    assert _redis_keys(redis_url, uid) != []
