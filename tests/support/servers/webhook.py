"""The account portal's webhook endpoint, as a real local HTTP server.

It verifies every delivery with the Standard Webhooks reference library (`standardwebhooks`),
deduplicates on `webhook-id` the way the specification asks receivers to, and answers from a
script of responses the test sets (`plan`), then 204.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.support.servers import Handler, Server


@dataclass
class Reply:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0  # answer late, to make the client's request timeout fire


@dataclass
class Attempt:
    webhook_id: str
    verified: bool
    status: int
    headers: dict[str, str]


class _WebhookHandler(Handler):
    def do_POST(self) -> None:
        app: WebhookReceiver = self.app
        body = self.body()
        headers = {k.lower(): v for k, v in self.headers.items()}
        try:
            payload = Webhook(app.secret).verify(body, headers)
            verified = True
        except WebhookVerificationError:
            payload, verified = None, False
        with app.server.lock:
            reply = app.plan.pop(0) if app.plan else None
            if reply is None:
                reply = Reply(204) if verified else Reply(401, body=b'{"error":"bad signature"}')
            msg_id = headers.get("webhook-id", "")
            if verified and reply.status < 300 and msg_id not in app.delivered:
                app.delivered[msg_id] = payload
            app.attempts.append(Attempt(msg_id, verified, reply.status, headers))
        if reply.delay_s:
            time.sleep(reply.delay_s)
        self.reply(reply.status, reply.body, reply.headers)


class WebhookReceiver:
    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.plan: list[Reply] = []
        self.delivered: dict[str, Any] = {}  # webhook-id → verified payload, first delivery
        self.attempts: list[Attempt] = []
        self.server = Server(_WebhookHandler)
        self.server.httpd.app = self

    @property
    def url(self) -> str:
        return self.server.url + "/hooks/plana"

    def __enter__(self) -> WebhookReceiver:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)

    def payloads(self) -> list[dict[str, Any]]:
        return [json.loads(json.dumps(p)) for p in self.delivered.values()]
