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

# (case id, option, value, the field the message must name)
CASES: list[tuple[str, str, str | None, str]] = [
    ("subdomain-empty", "--subdomain", "", "subdomain"),
    ("subdomain-missing", "--subdomain", None, "subdomain"),
    ("subdomain-too-long", "--subdomain", "a" * 41, "subdomain"),
    ("subdomain-uppercase", "--subdomain", "Acme", "subdomain"),
    ("subdomain-leading-hyphen", "--subdomain", "-acme", "subdomain"),
    ("subdomain-trailing-hyphen", "--subdomain", "acme-", "subdomain"),
    ("subdomain-dot", "--subdomain", "acme.corp", "subdomain"),
    ("subdomain-dotdot-slash", "--subdomain", "../etc", "subdomain"),
    ("subdomain-slash", "--subdomain", "acme/x", "subdomain"),
    ("subdomain-single-quote", "--subdomain", "acme'", "subdomain"),
    ("subdomain-double-quote", "--subdomain", 'ac"me', "subdomain"),
    ("subdomain-semicolon", "--subdomain", "acme;drop", "subdomain"),
    ("subdomain-sql", "--subdomain", "x'; DROP DATABASE postgres; --", "subdomain"),
    ("subdomain-space", "--subdomain", "ac me", "subdomain"),
    ("subdomain-underscore", "--subdomain", "ac_me", "subdomain"),
    ("subdomain-cyrillic-a", "--subdomain", "\u0430cme", "subdomain"),
    ("subdomain-fullwidth", "--subdomain", "\uff41cme", "subdomain"),
    ("subdomain-dotless-i", "--subdomain", "adm\u0131n", "subdomain"),
    ("subdomain-newline", "--subdomain", "acme\nx", "subdomain"),
    ("subdomain-trailing-newline", "--subdomain", "acme\n", "subdomain"),
    ("subdomain-nul-like", "--subdomain", "acme\x01", "subdomain"),
    ("subdomain-reserved-www", "--subdomain", "www", "subdomain"),
    ("subdomain-reserved-admin", "--subdomain", "admin", "subdomain"),
    ("subdomain-reserved-postgres", "--subdomain", "postgres", "subdomain"),
    ("subdomain-reserved-template1", "--subdomain", "template1", "subdomain"),
    ("subdomain-wildcard", "--subdomain", "%", "subdomain"),
    ("project-zero", "--project-id", "0", "projectId"),
    ("project-negative", "--project-id", "-1", "projectId"),
    ("project-text", "--project-id", "x", "projectId"),
    ("project-float", "--project-id", "1.5", "projectId"),
    ("project-leading-zero", "--project-id", "023", "projectId"),
    ("project-huge", "--project-id", "99999999999999999999", "projectId"),
    ("project-empty", "--project-id", "", "projectId"),
    ("tier-gold", "--tier", "gold", "tier"),
    ("tier-uppercase", "--tier", "Pro", "tier"),
    ("tier-empty", "--tier", "", "tier"),
    ("version-16", "--odoo-version", "16", "odooVersion"),
    ("version-18.0", "--odoo-version", "18.0", "odooVersion"),
    ("version-text", "--odoo-version", "latest", "odooVersion"),
    ("version-empty", "--odoo-version", "", "odooVersion"),
    ("email-no-at", "--owner-email", "owner.example.com", "ownerEmail"),
    ("email-no-domain", "--owner-email", "owner@", "ownerEmail"),
    ("email-spaces", "--owner-email", "own er@example.com", "ownerEmail"),
    ("email-double-dot", "--owner-email", "owner@example..com", "ownerEmail"),
    ("email-header-injection", "--owner-email", "a@example.com\nBcc: x@y.z", "ownerEmail"),
    ("email-non-ascii", "--owner-email", "ow\u043der@example.com", "ownerEmail"),
    ("name-control-char", "--owner-name", "Acme\x07Corp", "ownerName"),
    ("name-newline", "--owner-name", "Acme\nCorp", "ownerName"),
    ("name-escape", "--owner-name", "\x1b[31mAcme", "ownerName"),
    ("name-too-long", "--owner-name", "A" * 129, "ownerName"),
    ("name-blank", "--owner-name", "   ", "ownerName"),
    ("base-domain-bad", "--base-domain", "Bad_Domain", "baseDomain"),
    ("unknown-option", "--colour", "blue", "--colour"),
]

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
    assert run.result["outcome"] == "failed"
    assert run.result["exit_code"] == 64
    # Other suites may create databases meanwhile: look for anything this case could have made.
    new = database_names(pg) - before
    assert not {
        d for d in new if uid in d or "acme" in d or (value and len(value) > 2 and value in d)
    }
    assert _redis_keys(redis_url, uid) == []
    assert not Path(f"/tmp/{uid}-data").exists()


def test_good_twin_does_write(run_job: Runner, redis_url: str, uid: str) -> None:
    """Control for the table above: with valid input the same observation sees the write."""
    run = run_job(_argv(JOBS[0], "--subdomain", "acme", uid))
    assert run.rc == 0, run.output
    assert _redis_keys(redis_url, uid) != []
