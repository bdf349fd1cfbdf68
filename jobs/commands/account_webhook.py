"""`plana-job account-webhook`: the tenant event, POSTed to the account portal, signed.

Signed per the Standard Webhooks specification. The `webhook-id` is derived from (event,
tenant, generation), so a re-delivery carries the same message id and the portal deduplicates it.

With `PLANA_REDIS_URL` set, each delivery the portal acknowledged is recorded in a ledger key
(`{ledger prefix}:delivered:{webhook-id}`), and a re-run that finds its id there reports
`unchanged` without sending. The record is written only after a 2xx, so a crash between the
delivery and the record means one more (deduplicated) delivery, never a lost one.
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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import click

from jobs.adapters import http
from jobs.core import options as params
from jobs.core import redact, retry, runner, secrets
from jobs.core.errors import ConfigError, ConflictError, UsageError
from jobs.core.naming import ClientSpec
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
        raise ConfigError("PLANA_ACCOUNT_WEBHOOK_SECRET_FILE: secret must start with whsec_")
    try:
        key = base64.b64decode(secret[len(SECRET_PREFIX) :], validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("PLANA_ACCOUNT_WEBHOOK_SECRET_FILE: secret is not base64") from None
    if len(key) < 16:
        raise ConfigError("PLANA_ACCOUNT_WEBHOOK_SECRET_FILE: secret key is shorter than 16 bytes")
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


def _event(value: str | None) -> str:
    if value not in EVENTS:
        raise UsageError("event", f"must be one of {', '.join(EVENTS)}, got {value!r}")
    return value


@click.command("account-webhook")
@params.client_spec
@params.generation
@params.option(
    "--event",
    env="PLANA_WEBHOOK_EVENT",
    default="tenant.provisioned",
    show_default=True,
    help=f"Event type: {', '.join(EVENTS)}.",
)
@params.option(
    "--url",
    env="PLANA_ACCOUNT_WEBHOOK_URL",
    default=None,
    help="The account portal's webhook endpoint.",
)
@params.option(
    "--secret-file",
    env="PLANA_ACCOUNT_WEBHOOK_SECRET_FILE",
    default=None,
    help="File holding the signing secret (whsec_…).",
)
@params.request_timeout
@params.option(
    "--redis-url",
    env="PLANA_REDIS_URL",
    default=None,
    help="Redis holding the delivery ledger; without it every run delivers (the portal dedupes).",
)
@params.option(
    "--ledger-prefix",
    env="PLANA_WEBHOOK_LEDGER_PREFIX",
    default=DEFAULT_LEDGER_PREFIX,
    show_default=True,
    help="Key prefix of the delivery ledger.",
)
@params.common
def account_webhook(**kw: Any) -> None:
    """POST the tenant event to the account portal, signed per Standard Webhooks."""
    runner.run("account-webhook", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Every input is checked before the secret is read or a request is sent.
    spec = params.client(kw)
    event = _event(kw["event"])
    generation = params.generation_value(kw["generation"])
    target = http.url(kw["url"], "accountWebhookUrl")
    timeout = http.request_timeout(kw["request_timeout"])
    ledger = Ledger.open(kw["redis_url"], kw["ledger_prefix"], job.deadline)
    job.bind(tenant=spec.tenant.subdomain)
    key = signing_key(secrets.read_file(kw["secret_file"], "PLANA_ACCOUNT_WEBHOOK_SECRET_FILE"))

    msg_id = webhook_id(event, spec.tenant.subdomain, generation)
    details: dict[str, Any] = {"type": event, "webhook_id": msg_id, "url": target}
    if ledger is not None:
        job.step("ledger")
        delivered_at = ledger.delivered(msg_id)
        if delivered_at is not None:
            job.log.info("already delivered", delivered_at=delivered_at, **details)
            return Done("unchanged", {**details, "delivered_at": delivered_at})
    body = json.dumps(payload(event, spec, generation), separators=(",", ":")).encode()

    def signed(request: httpx.Request) -> dict[str, str]:
        # A fresh timestamp (and so a fresh signature) on every attempt: receivers refuse
        # timestamps older than their tolerance, and a retry may come minutes later. Signed
        # over the body as sent.
        ts = int(time.time())
        return {
            "webhook-id": msg_id,
            "webhook-timestamp": str(ts),
            "webhook-signature": sign(key, msg_id, ts, request.content),
        }

    signature = http.PerAttempt(signed)
    job.step("deliver")
    with http.client(timeout, target) as client:
        response = http.send(
            client, "POST", target, what="account webhook", deadline=job.deadline,
            timeout=timeout, auth=signature, content=body,
            headers={"content-type": "application/json"},
        )  # fmt: skip
    details.update(status=response.status_code, attempts=signature.attempts)
    if response.is_success:
        job.log.info("webhook delivered", **details)
        if ledger is not None:
            ledger.record(msg_id)
        return Done("created", details)
    if response.is_redirect:
        raise ConfigError(
            f"accountWebhookUrl: the portal answered HTTP {response.status_code} (a redirect); "
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


class Ledger:
    """Which webhook ids the portal has acknowledged, in Redis (optional)."""

    def __init__(self, client: Any, prefix: str, deadline: retry.Deadline) -> None:
        self.client = client
        self.prefix = prefix
        self.deadline = deadline

    @classmethod
    def open(cls, url: str | None, prefix: str | None, deadline: retry.Deadline) -> Ledger | None:
        if not url:
            return None
        if not prefix or any(ch.isspace() for ch in prefix) or not prefix.isprintable():
            raise UsageError("ledgerPrefix", f"must be a Redis key prefix, got {prefix!r}")
        from jobs.adapters import redis_client  # only jobs with a ledger pay for the driver

        return cls(redis_client.from_url(url), prefix, deadline)

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
