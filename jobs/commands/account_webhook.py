"""`plana-job account-webhook`: the tenant event, POSTed to the account portal, signed.

Signed per the Standard Webhooks specification. The `webhook-id` is derived from (event,
tenant, generation), so a re-delivery carries the same message id and the portal deduplicates it.

With `PLANA_REDIS_URL` set, each delivery the portal acknowledged is recorded in a ledger key
(`{ledger prefix}:delivered:{webhook-id}`), and a re-run that finds its id there reports
`unchanged` without sending. The record is written only after a 2xx, so a crash between the
delivery and the record means one more (deduplicated) delivery, never a lost one.

observe: the ledger's record of this webhook id (read-only; nothing without a ledger). plan:
nothing when the ledger says delivered, else `deliver` (the signed POST) and, with a ledger,
`ledger` (record the delivery). The signing secret is read before either, in a dry run too.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from jobs.adapters import http
from jobs.core import params, plan, redact, retry, runner, secrets
from jobs.core.errors import ConfigError, ConflictError, UsageError
from jobs.core.naming import ClientSpec
from jobs.core.params import DEFAULT_REQUEST_TIMEOUT_S
from jobs.core.result import Done

if TYPE_CHECKING:  # the adapter imports httpx; here it only names a type
    import httpx

# Namespace for uuid5 webhook ids: fixed forever, or re-deliveries would stop deduplicating.
WEBHOOK_NAMESPACE = uuid.UUID("2b0d3f0e-9a51-4c61-8f55-3c2f7e6b9d42")
EVENTS = ("tenant.provisioned", "tenant.updated", "tenant.deprovisioned")
SECRET_PREFIX = "whsec_"
DEFAULT_LEDGER_PREFIX = "PLANA:webhooks"
LEDGER_TTL_S = 90 * 24 * 3600


def webhook_id(event: str, subdomain: str, generation: int | None) -> str:
    name = f"{event}/{subdomain}/{generation if generation is not None else '-'}"
    return "msg_" + uuid.uuid5(WEBHOOK_NAMESPACE, name).hex


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret; a malformed secret is configuration (78)."""
    # The base64 body alone is as secret as the whole: a peer or a library may echo it unprefixed.
    redact.register(secret.removeprefix(SECRET_PREFIX))
    if not secret.startswith(SECRET_PREFIX):
        raise ConfigError(f"{SECRET}: secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{SECRET}: secret is not base64") from None
    if len(key) < 16:
        raise ConfigError(f"{SECRET}: secret key is shorter than 16 bytes")
    return key


def sign(key: bytes, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (Standard Webhooks)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def payload(event: str, spec: ClientSpec, generation: int | None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "subdomain": spec.tenant.subdomain,
        "hostname": spec.tenant.hostname,
        "projectId": spec.project_id,
        "tier": spec.tier,
        "odooVersion": spec.odoo_version,
        "owner": {"email": spec.owner_email, "name": spec.owner_name},
    }
    if generation is not None:
        data["generation"] = generation
    return {
        "type": event,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
        "data": data,
    }


def _url(value: str) -> str:
    return http.url(value, "url")


def _given(value: str) -> str:
    # An explicitly empty path is as good as none: bad input (64), not a missing file (78).
    if not value.strip():
        raise UsageError("file", "is required")
    return value


def _prefix(value: str) -> str:
    if not value or any(ch.isspace() for ch in value) or not value.isprintable():
        raise UsageError("ledger prefix", f"must be a Redis key prefix, got {value!r}")
    return value


@params.spec
class Params(params.ClientSpec):
    generation: int | None = params.generation()
    event: str = params.option(
        "--event",
        "PLANA_WEBHOOK_EVENT",
        f"Event type: {', '.join(EVENTS)}.",
        type=click.Choice(EVENTS),
        default="tenant.provisioned",
        show_default=True,
    )
    url: str = params.option(
        "--url",
        "PLANA_ACCOUNT_WEBHOOK_URL",
        "The account portal's webhook endpoint.",
        type=params.Rule("url", _url),
        required=True,
    )
    secret_file: str = params.option(
        "--secret-file",
        "PLANA_ACCOUNT_WEBHOOK_SECRET_FILE",
        "Secret file: the signing secret (whsec_…).",
        type=params.Rule("file", _given),
        required=True,
    )
    request_timeout: float | None = params.request_timeout()
    redis_url: str | None = params.option(
        "--redis-url",
        "PLANA_REDIS_URL",
        "Redis holding the delivery ledger; without it every run delivers (the portal dedupes).",
    )
    ledger_prefix: str = params.option(
        "--ledger-prefix",
        "PLANA_WEBHOOK_LEDGER_PREFIX",
        "Key prefix of the delivery ledger.",
        type=params.Rule("prefix", _prefix),
        default=DEFAULT_LEDGER_PREFIX,
        show_default=True,
    )

    @property
    def webhook_id(self) -> str:
        return webhook_id(self.event, self.subdomain, self.generation)

    @property
    def http_timeout(self) -> float:
        return DEFAULT_REQUEST_TIMEOUT_S if self.request_timeout is None else self.request_timeout

    @property
    def ids(self) -> dict[str, Any]:
        """What names this delivery in logs, results and errors."""
        return {"type": self.event, "webhook_id": self.webhook_id, "url": self.url}


SECRET = params.label(Params, "secret_file")
URL = params.label(Params, "url")


# --------------------------------------------------------------------------- observe → plan


@dataclass(frozen=True)
class State:
    ledger: bool  # a ledger is configured (--redis-url)
    delivered_at: str | None  # when the portal acknowledged this webhook id, per the ledger


def observe(job: runner.Job, p: Params) -> State:
    ledger = Ledger.open(p.redis_url, p.ledger_prefix, job.deadline)
    if ledger is None:
        return State(ledger=False, delivered_at=None)
    try:
        return State(ledger=True, delivered_at=ledger.delivered(p.webhook_id))
    finally:
        ledger.close()


def decide(state: State, p: Params) -> plan.Plan:
    details = p.ids
    if state.delivered_at is not None:
        return plan.of(delivered_at=state.delivered_at, **details)
    return plan.of(
        plan.Step("deliver", f"POST {p.event} {p.webhook_id} to {p.url}, signed"),
        plan.Step("ledger", f"record {p.webhook_id} as delivered in the ledger")
        if state.ledger
        else None,
        **details,
    )


def key(p: Params) -> bytes:
    """The signing key; read (and checked) before anything is sent, in a dry run too."""
    return signing_key(secrets.read_file(p.secret_file, SECRET))


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    key(p)  # a dry run reports a missing or malformed secret as the run would (78)
    return decide(observe(job, p), p)


# --------------------------------------------------------------------------- apply


def deliver(job: runner.Job, p: Params, signing: bytes) -> dict[str, Any]:
    """The `deliver` step: POST the signed event; the portal's answer, for the result."""
    msg_id = p.webhook_id
    body = json.dumps(payload(p.event, p.client, p.generation), separators=(",", ":")).encode()

    def signed(request: httpx.Request) -> dict[str, str]:
        # A fresh timestamp (and so a fresh signature) on every attempt: receivers refuse
        # timestamps older than their tolerance, and a retry may come minutes later. Signed
        # over the body as sent.
        ts = int(time.time())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(signing, msg_id, ts, request.content),
        }

    signature = http.PerAttempt(signed)
    with http.client(p.http_timeout, p.url) as client:
        response = http.send(
            client, "POST", p.url, what="account webhook", deadline=job.deadline,
            timeout=p.http_timeout, auth=signature, content=body,
            headers={"content-type": "application/json"},
        )  # fmt: skip
    details = {"status": response.status_code, "attempts": signature.attempts}
    if response.is_success:
        return details
    details = {**p.ids, **details}
    if response.is_redirect:
        raise ConfigError(
            f"{URL}: the portal answered HTTP {response.status_code} (a redirect); "
            "configure the final URL",
            **details,
        )
    # 4xx other than 429 (410 "stop sending" included): the portal refuses this message, and
    # sending it again would not change that.
    raise ConflictError(
        f"account portal refused the webhook: HTTP {response.status_code}: "
        f"{http.snippet(response)}",
        **details,
    )


def record(job: runner.Job, p: Params) -> None:
    """The `ledger` step: only after a 2xx, so a crash before it means one more (deduplicated)
    delivery, never a lost one."""
    ledger = Ledger.open(p.redis_url, p.ledger_prefix, job.deadline)
    assert ledger is not None  # planned only with a ledger configured
    try:
        ledger.record(p.webhook_id)
    finally:
        ledger.close()


def run(job: runner.Job, p: Params) -> Done:
    job.bind(tenant=p.subdomain)
    signing = key(p)
    steps = decide(observe(job, p), p)
    details = p.ids
    if "deliver" not in steps:
        delivered_at = (steps.details or {}).get("delivered_at")
        job.log.info("already delivered", delivered_at=delivered_at, **details)
        return Done("unchanged", {**details, "delivered_at": delivered_at})

    def delivered(_: plan.Step) -> None:
        details.update(deliver(job, p, signing))
        job.log.info("webhook delivered", **details)

    plan.apply(job, steps, {"deliver": delivered, "ledger": lambda _: record(job, p)})
    return Done("created", details)


account_webhook = params.command(
    "account-webhook",
    Params,
    run,
    preview,
    "POST the tenant event to the account portal, signed per Standard Webhooks.",
)


class Ledger:
    """Which webhook ids the portal has acknowledged, in Redis (optional)."""

    def __init__(self, client: Any, prefix: str, deadline: retry.Deadline) -> None:
        self.client = client
        self.prefix = prefix
        self.deadline = deadline

    @classmethod
    def open(cls, url: str | None, prefix: str, deadline: retry.Deadline) -> Ledger | None:
        if not url:
            return None
        from jobs.adapters import redis_client  # only jobs with a ledger pay for the driver

        return cls(redis_client.from_url(url), prefix, deadline)

    def close(self) -> None:
        self.client.close()

    def _key(self, msg_id: str) -> str:
        return f"{self.prefix}:delivered:{msg_id}"

    def _call(self, fn: Callable[[], Any], what: str) -> Any:
        """Run one Redis command: transient failures retried; a refused password (78) and
        the rest named by `redis_client.classify`, the same rules as emit-event's."""
        from jobs.adapters import redis_client

        try:
            return retry.call(
                fn, what=what, deadline=self.deadline, transient=redis_client.transient
            )
        except Exception as exc:
            known = redis_client.classify(exc, what)
            if known is None:
                raise
            raise known from None

    def delivered(self, msg_id: str) -> str | None:
        value = self._call(lambda: self.client.get(self._key(msg_id)), "redis GET delivery ledger")
        return value.decode() if isinstance(value, bytes) else value

    def record(self, msg_id: str) -> None:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        self._call(
            lambda: self.client.set(self._key(msg_id), stamp, ex=LEDGER_TTL_S),
            "redis SET delivery ledger",
        )
