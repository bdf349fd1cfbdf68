"""`plana-job erp-callback`: upsert the tenant's subscription record in the PLANA ERP.

The ERP is Odoo with the `plana_saas` module, reached over Odoo's external API: JSON-RPC
(`/jsonrpc`, Odoo 17/18) or JSON-2 (`/json/2/<model>/<method>`, Odoo 19). The record is found
by subdomain; it is created when absent, only its differing fields are written when present,
and nothing is sent when it already agrees. Two runs racing to create it converge: the loser's
create is refused by the model's unique subdomain, and it re-reads and continues as an update.

observe: the records found by subdomain (`search_read`, read-only). plan: `create` when there is
none, `write` of the differing fields when there is one, nothing when it agrees, blocked (65)
when there are several.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

import click
import httpx

from jobs.adapters import http
from jobs.core import params, plan, redact, retry, runner, secrets
from jobs.core.errors import ConfigError, ConflictError, UsageError
from jobs.core.params import DEFAULT_REQUEST_TIMEOUT_S
from jobs.core.result import Done

DEFAULT_MODEL = "plana.saas.subscription"
FIELDS = ("subdomain", "project_id", "tier", "odoo_version", "hostname", "state")
APIS = ("jsonrpc", "json2")
KEY_FILE = "PLANA_ERP_API_KEY_FILE"

_MODEL = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", re.ASCII)
_FIELD = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)
_STATE = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)
_DB = re.compile(r"[A-Za-z0-9_.-]{1,63}", re.ASCII)
_LOGIN = re.compile(r"\S{1,254}")

# Odoo exception names (JSON-RPC `error.data.name`, JSON-2 body `name`) and what they mean here.
AUTH_ERRORS = {
    "odoo.exceptions.AccessDenied",
    "odoo.exceptions.AccessError",
    "odoo.http.SessionExpiredException",
    "werkzeug.exceptions.Unauthorized",
    "werkzeug.exceptions.Forbidden",
}
DATA_ERRORS = {
    "odoo.exceptions.ValidationError",
    "odoo.exceptions.UserError",
    "odoo.exceptions.MissingError",
    "odoo.exceptions.RedirectWarning",
}
# A field, model or argument the ERP does not know is our configuration, not a passing fault.
CONFIG_ERRORS = {
    "builtins.ValueError",
    "builtins.KeyError",
    "builtins.TypeError",
    "werkzeug.exceptions.NotFound",
    "werkzeug.exceptions.UnprocessableEntity",
}


class ErpRefused(ConflictError):
    """The ERP refused the data (validation): 65, unless a racing create explains it."""


def classify(name: str, message: str, what: str) -> Exception:
    text = f"{what}: {name}: {message}"
    if name in AUTH_ERRORS:
        return ConfigError(f"{KEY}: the ERP refused access ({text})")
    if name in DATA_ERRORS:
        return ErpRefused(f"the ERP refused the record ({text})")
    if name in CONFIG_ERRORS:
        return ConfigError(f"ERP model or fields misconfigured ({text})")
    return retry.RetryLater(f"ERP server error ({text})")


class Api(Protocol):
    def search_read(self, model: str, domain: list[Any], fields: list[str]) -> list[Any]: ...
    def create(self, model: str, vals: dict[str, Any]) -> int: ...
    def write(self, model: str, rid: int, vals: dict[str, Any]) -> None: ...


class JsonRpc:
    """Odoo's JSON-RPC: authenticate once, then `object.execute_kw`."""

    def __init__(self, caller: Caller, db: str, login: str, key: str) -> None:
        self.caller, self.db, self.login, self.key = caller, db, login, key
        self.ids = itertools.count(1)
        self.uid: int | None = None

    def _rpc(self, service: str, method: str, args: list[Any], what: str) -> Any:
        body = {
            "jsonrpc": "2.0",
            "method": "call",
            "id": next(self.ids),
            "params": {"service": service, "method": method, "args": args},
        }

        def parse(response: httpx.Response) -> Any:
            if response.status_code == 404:
                raise ConfigError(f"{URL}: no /jsonrpc endpoint there (HTTP 404)")
            if response.status_code != 200:
                raise ConflictError(
                    f"{what}: HTTP {response.status_code}: {http.snippet(response)}"
                )
            try:
                reply = response.json()
            except ValueError:
                raise retry.RetryLater(f"{what}: not a JSON-RPC answer") from None
            if "error" in reply:
                error = reply["error"] or {}
                data = error.get("data") or {}
                raise classify(
                    str(data.get("name", "")),
                    str(data.get("message") or error.get("message", "")),
                    what,
                )
            return reply.get("result")

        return self.caller.call("POST", "/jsonrpc", what, parse, json=body)

    def _uid(self) -> int:
        if self.uid is None:
            uid = self._rpc(
                "common", "authenticate", [self.db, self.login, self.key, {}], "authenticate"
            )
            if not isinstance(uid, int) or isinstance(uid, bool) or uid <= 0:
                raise ConfigError(f"{KEY}: the ERP refused the login {self.login!r} and key")
            self.uid = uid
        return self.uid

    def _execute(self, model: str, method: str, args: list[Any], kwargs: dict[str, Any]) -> Any:
        uid = self._uid()
        return self._rpc(
            "object",
            "execute_kw",
            [self.db, uid, self.key, model, method, args, kwargs],
            f"{model}.{method}",
        )

    def search_read(self, model: str, domain: list[Any], fields: list[str]) -> list[Any]:
        kwargs = {"fields": fields, "limit": 2, "context": {"active_test": False}}
        return list(self._execute(model, "search_read", [domain], kwargs) or [])

    def create(self, model: str, vals: dict[str, Any]) -> int:
        return _one_id(self._execute(model, "create", [[vals]], {}))

    def write(self, model: str, rid: int, vals: dict[str, Any]) -> None:
        self._execute(model, "write", [[rid], vals], {})


class Json2:
    """Odoo 19's JSON-2: one POST per call, bearer key, named arguments."""

    def __init__(self, caller: Caller, db: str | None, key: str) -> None:
        self.caller = caller
        self.headers = {"Authorization": f"bearer {key}"}
        if db:
            self.headers["X-Odoo-Database"] = db

    def _call(self, model: str, method: str, body: dict[str, Any]) -> Any:
        what = f"{model}.{method}"

        def parse(response: httpx.Response) -> Any:
            if response.status_code == 200:
                return response.json()
            try:
                error = response.json()
            except ValueError:
                error = None
            if not isinstance(error, dict):
                if http.retryable(response):
                    raise http.later(response, f"ERP {what}")
                if response.status_code == 404:
                    raise ConfigError(f"{URL}: no JSON-2 endpoint there (HTTP 404)")
                raise ConflictError(
                    f"{what}: HTTP {response.status_code}: {http.snippet(response)}"
                )
            name, message = str(error.get("name", "")), str(error.get("message", ""))
            if response.status_code in (401, 403):
                raise ConfigError(f"{KEY}: the ERP refused access ({what}: {name}: {message})")
            # Odoo answers 500 for any unexpected exception: retry it unless its name says the
            # request itself is wrong (an unknown field is not going to appear by waiting).
            if http.retryable(response) and name not in CONFIG_ERRORS | DATA_ERRORS:
                raise http.later(response, f"ERP {what}")
            raise classify(name, message, what)

        return self.caller.call(
            "POST",
            f"/json/2/{model}/{method}",
            what,
            parse,
            json=body,
            headers=self.headers,
            retry_statuses=False,
        )

    def search_read(self, model: str, domain: list[Any], fields: list[str]) -> list[Any]:
        body = {"domain": domain, "fields": fields, "limit": 2, "context": {"active_test": False}}
        return list(self._call(model, "search_read", body) or [])

    def create(self, model: str, vals: dict[str, Any]) -> int:
        return _one_id(self._call(model, "create", {"vals_list": [vals]}))

    def write(self, model: str, rid: int, vals: dict[str, Any]) -> None:
        self._call(model, "write", {"ids": [rid], "vals": vals})


def _one_id(result: Any) -> int:
    value = result[0] if isinstance(result, list) and len(result) == 1 else result
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConflictError(f"the ERP answered create with {str(result)[:80]!r}, not an id")
    return value


class Caller:
    """POSTs to the ERP through the shared retry policy. `parse` may raise RetryLater as well,
    so a server error inside a JSON-RPC envelope (HTTP 200) is retried like an HTTP 5xx."""

    def __init__(self, client: httpx.Client, base: str, job: runner.Job, timeout: float) -> None:
        self.client, self.base, self.job, self.timeout = client, base, job, timeout

    def call(
        self,
        method: str,
        path: str,
        what: str,
        parse: Callable[[httpx.Response], Any],
        **kwargs: Any,
    ) -> Any:
        def once() -> Any:
            response = http.attempt(
                self.client,
                method,
                self.base + path,
                what=f"ERP {what}",
                deadline=self.job.deadline,
                timeout=self.timeout,
                **kwargs,
            )
            return parse(response)

        return retry.call(
            once, what=f"ERP {what}", deadline=self.job.deadline, transient=retry.http_transient
        )


def field_map(value: str | None, field: str = "fields") -> Mapping[str, str]:
    """`name=erp_field,…` overrides of the ERP's field names (default: the same names)."""
    mapping = {f: f for f in FIELDS}
    for item in [v for v in re.split(r"[\s,]+", value or "") if v]:
        ours, sep, theirs = item.partition("=")
        if not sep or ours not in FIELDS or not _FIELD.fullmatch(theirs):
            raise UsageError(
                field,
                f"expected name=erp_field with name in {', '.join(FIELDS)}, got {item[:60]!r}",
            )
        mapping[ours] = theirs
    if len(set(mapping.values())) != len(mapping):
        raise UsageError(field, "two names map to the same ERP field")
    return MappingProxyType(mapping)


def _pattern(pattern: re.Pattern[str], what: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if not value or not pattern.fullmatch(value):
            raise UsageError("value", f"must be {what}, got {value!r}")
        return value

    return check


def _url(value: str) -> str:
    return http.url(value, "url").rstrip("/")


def _given(value: str) -> str:
    # An explicitly empty path is as good as none: bad input (64), not a missing file (78).
    if not value.strip():
        raise UsageError("file", "is required")
    return value


@params.spec
class Params(params.ClientSpec):
    owner_email: str | None = params.owner_email(required=False)
    owner_name: str | None = params.owner_name(required=False)
    erp_url: str = params.option(
        "--erp-url",
        "PLANA_ERP_URL",
        "Base URL of the ERP (Odoo).",
        type=params.Rule("url", _url),
        required=True,
    )
    erp_db: str | None = params.option(
        "--erp-db",
        "PLANA_ERP_DB",
        "ERP database (required for jsonrpc; sent as X-Odoo-Database for json2).",
        type=params.Rule("name", _pattern(_DB, "a database name")),
    )
    erp_login: str | None = params.option(
        "--erp-login",
        "PLANA_ERP_LOGIN",
        "ERP user login (required for jsonrpc).",
        type=params.Rule("login", _pattern(_LOGIN, "a login")),
    )
    erp_api_key_file: str = params.option(
        "--erp-api-key-file",
        KEY_FILE,
        "Secret file: the ERP user's API key.",
        type=params.Rule("file", _given),
        required=True,
    )
    erp_api: str = params.option(
        "--erp-api",
        "PLANA_ERP_API",
        "jsonrpc (Odoo 17/18) or json2 (Odoo 19).",
        type=click.Choice(APIS),
        default="jsonrpc",
        show_default=True,
    )
    erp_model: str = params.option(
        "--erp-model",
        "PLANA_ERP_MODEL",
        "The subscription model.",
        type=params.Rule("model", _pattern(_MODEL, "an Odoo model name (a.b)")),
        default=DEFAULT_MODEL,
        show_default=True,
    )
    erp_fields: Mapping[str, str] = params.option(
        "--erp-fields",
        "PLANA_ERP_FIELDS",
        f"ERP field names where they differ: name=erp_field,… ({', '.join(FIELDS)}).",
        type=params.Rule("names", field_map),
        default="",
    )
    state: str = params.option(
        "--state",
        "PLANA_ERP_STATE",
        "Value of the record's state field.",
        type=params.Rule("value", _pattern(_STATE, "a lowercase selection value")),
        default="active",
        show_default=True,
    )
    request_timeout: float | None = params.request_timeout()

    def __post_init__(self) -> None:
        # JSON-RPC authenticates with database, login and key; JSON-2 with the key alone.
        if self.erp_api == "jsonrpc":
            for name in ("erp_db", "erp_login"):
                if getattr(self, name) is None:
                    raise UsageError(name, "is required with --erp-api jsonrpc")

    @property
    def http_timeout(self) -> float:
        return DEFAULT_REQUEST_TIMEOUT_S if self.request_timeout is None else self.request_timeout

    @property
    def wanted(self) -> dict[str, Any]:
        """The record as it should be, by ERP field name."""
        spec = self.client
        by_name: dict[str, Any] = {
            "subdomain": spec.tenant.subdomain,
            "project_id": spec.project_id,
            "tier": spec.tier,
            "odoo_version": str(spec.odoo_version),
            "hostname": spec.tenant.hostname,
            "state": self.state,
        }
        return {self.erp_fields[k]: v for k, v in by_name.items()}

    @property
    def key_field(self) -> str:
        return self.erp_fields["subdomain"]

    @property
    def domain(self) -> list[Any]:
        return [[self.key_field, "=", self.subdomain]]


URL = params.label(Params, "erp_url")
KEY = params.label(Params, "erp_api_key_file")


# --------------------------------------------------------------------------- observe → plan


@dataclass(frozen=True)
class State:
    records: tuple[Mapping[str, Any], ...]  # the records found by subdomain (at most 2 asked)


def observe(api: Api, p: Params) -> State:
    return State(tuple(api.search_read(p.erp_model, p.domain, list(p.wanted))))


def decide(state: State, p: Params) -> plan.Plan:
    details: dict[str, Any] = {"model": p.erp_model, "api": p.erp_api}
    if not state.records:
        return plan.of(
            plan.Step("create", f"create the {p.erp_model} record of {p.subdomain}"), **details
        )
    if len(state.records) > 1:
        return plan.blocked(
            f"{p.erp_model}: several records for {p.key_field}={p.subdomain}",
            record_ids=[r.get("id") for r in state.records],
            **details,
        )
    record = state.records[0]
    diff = differing(record, p)
    details["record_id"] = int(record["id"])
    if not diff:
        return plan.of(**details)
    step = plan.Step("write", f"write {', '.join(sorted(diff))} of record {record['id']}")
    return plan.of(step, changed=sorted(diff), **details)


def differing(record: Mapping[str, Any], p: Params) -> dict[str, Any]:
    """The wanted values the record does not have yet."""
    return {f: v for f, v in p.wanted.items() if record.get(f) != v}


# --------------------------------------------------------------------------- run


@contextmanager
def connect(job: runner.Job, p: Params) -> Iterator[Api]:
    # Everything was validated by click; the key is read only now, before the first request.
    key = secrets.read_file(p.erp_api_key_file, KEY)
    login = p.erp_login or ""
    redact.register_basic(login, key)  # a peer may echo the pair as HTTP Basic credentials
    with http.client(p.http_timeout, p.erp_url) as client:
        caller = Caller(client, p.erp_url, job, p.http_timeout)
        if p.erp_api == "jsonrpc":
            yield JsonRpc(caller, p.erp_db or "", login, key)
        else:
            yield Json2(caller, p.erp_db, key)


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain)
    with connect(job, p) as api:
        return decide(observe(api, p), p)


def run(job: runner.Job, p: Params) -> Done:
    job.bind(tenant=p.subdomain)
    with connect(job, p) as api:
        state = observe(api, p)
        steps = decide(state, p)
        steps.require_unblocked(**(steps.details or {}))
        if "create" in steps:
            job.step("create")
            try:
                rid = api.create(p.erp_model, p.wanted)
            except ErpRefused:
                # A concurrent run may have created it between our search and create: read it
                # again and go on with what it made (an update, or nothing).
                state = observe(api, p)
                steps = decide(state, p)
                if "create" in steps:
                    raise
                steps.require_unblocked(**(steps.details or {}))
            else:
                details = {**(steps.details or {}), "record_id": rid, "fields": sorted(p.wanted)}
                job.log.info("subscription created", **details)
                return Done("created", details)
        details = dict(steps.details or {})
        if "write" not in steps:
            job.log.info("subscription unchanged", **details)
            return Done("unchanged", details)
        record = state.records[0]
        job.step("write")
        api.write(p.erp_model, int(record["id"]), differing(record, p))
        job.log.info("subscription updated", **details)
        return Done("updated", details)


erp_callback = params.command(
    "erp-callback",
    Params,
    run,
    preview,
    "Upsert the tenant's subscription record in the PLANA ERP (Odoo external API).",
)
