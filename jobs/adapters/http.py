"""HTTP peers (account portal, ERP): httpx with explicit timeouts and the shared retry policy.

A peer's answer is sorted into three kinds here, once, so every job treats them alike: 2xx is
returned; 5xx and 429 become `RetryLater` (honouring `Retry-After`) and are retried by
`jobs.core.retry` until the job's deadline; anything else is returned for the job to classify (a 4xx
means something different to each peer).
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Mapping
from typing import Any
from urllib.parse import urlsplit

import httpx

from jobs.core import retry
from jobs.core.errors import UsageError
from jobs.core.params import DEFAULT_REQUEST_TIMEOUT_S

CONNECT_TIMEOUT_S = 5.0
USER_AGENT = "plana-jobs"


def url(value: str | None, field: str) -> str:
    """An absolute http(s) URL with a host; anything else is bad input (exit 64).

    The jobs use it as a click type (`params.Rule`), which puts the option's flag and variable
    in place of `field`.
    """
    if not value:
        raise UsageError(field, "is required")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(field, "must be an http:// or https:// URL with a host")
    if parts.username or parts.password:
        raise UsageError(field, "must not carry credentials (use the secret file)")
    if any(ch.isspace() for ch in value):
        raise UsageError(field, "must not contain whitespace")
    return value


def client(timeout: float = DEFAULT_REQUEST_TIMEOUT_S, target: str = "https:") -> httpx.Client:
    """A client with explicit timeouts; redirects are not followed (a peer that moved is a
    configuration problem, and a redirect could carry our signature or key elsewhere).

    For a plain-http `target` (an in-cluster Service) the CA bundle is not loaded: no TLS is
    spoken, and loading it is a third of a re-run's work.
    """
    return httpx.Client(
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT_S, timeout)),
        follow_redirects=False,
        headers={"User-Agent": USER_AGENT},
        verify=not target.startswith("http:"),
    )


def _bounded(timeout: float, deadline: retry.Deadline) -> httpx.Timeout:
    # One slow attempt must not overrun the job's deadline: cap it at what is left (≥ 0.1 s).
    seconds = max(0.1, min(timeout, deadline.remaining()))
    return httpx.Timeout(seconds, connect=min(CONNECT_TIMEOUT_S, seconds))


def attempt(
    http: httpx.Client,
    method: str,
    target: str,
    *,
    what: str,
    deadline: retry.Deadline,
    timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    retry_statuses: bool = True,
    **kwargs: Any,
) -> httpx.Response:
    """One request, bounded by the deadline. 5xx and 429 raise RetryLater (with Retry-After)
    unless `retry_statuses` is false (for a peer whose error bodies say more than the status)."""
    response = http.request(method, target, timeout=_bounded(timeout, deadline), **kwargs)
    if retry_statuses and retryable(response):
        raise later(response, what)
    return response


def retryable(response: httpx.Response) -> bool:
    return response.status_code >= 500 or response.status_code == 429


def later(response: httpx.Response, what: str) -> retry.RetryLater:
    return retry.RetryLater(
        f"{what}: HTTP {response.status_code}: {snippet(response, 120)}",
        retry_after=retry.parse_retry_after(response.headers.get("Retry-After")),
    )


def send(
    http: httpx.Client,
    method: str,
    target: str,
    *,
    what: str,
    deadline: retry.Deadline,
    timeout: float = DEFAULT_REQUEST_TIMEOUT_S,
    **kwargs: Any,
) -> httpx.Response:
    """Send a request, retrying transport errors, 5xx and 429 within the deadline (then 75).

    Headers that must be fresh on each attempt (a signature over the current timestamp) come
    from an `auth=PerAttempt(...)`: httpx runs it for every request it sends.
    """

    def once() -> httpx.Response:
        return attempt(http, method, target, what=what, deadline=deadline, timeout=timeout,
                       **kwargs)  # fmt: skip

    return retry.call(once, what=what, deadline=deadline, transient=retry.http_transient)


class PerAttempt(httpx.Auth):
    """Headers computed for each request as httpx sends it (every attempt of `send`), from the
    request itself: httpx's own hook for signing (`Auth.auth_flow`), so a retry carries a
    fresh timestamp and a signature over exactly the bytes it sends."""

    requires_request_body = True  # a streamed body is read first: what is signed is what is sent

    def __init__(self, headers: Callable[[httpx.Request], Mapping[str, str]]) -> None:
        self._headers = headers
        self.attempts = 0

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.attempts += 1
        request.headers.update(self._headers(request))
        yield request


def snippet(response: httpx.Response, limit: int = 200) -> str:
    """The start of a response body for an error message (redacted by the runner)."""
    text = " ".join(response.text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
