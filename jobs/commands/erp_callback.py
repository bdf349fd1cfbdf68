"""`plana-job erp-callback`: upsert the tenant's subscription record in the PLANA ERP.

The ERP is Odoo with the `plana_saas` module, reached over Odoo's external API: JSON-RPC
(`/jsonrpc`, Odoo 17/18) or JSON-2 (`/json/2/<model>/<method>`, Odoo 19). The record is found
by subdomain; it is created when absent, only its differing fields are written when present,
and nothing is sent when it already agrees. Two runs racing to create it converge: the loser's
create is refused by the model's unique subdomain, and it re-reads and continues as an update.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from typing import Any, Protocol

import click
import httpx

from jobs.adapters import http
from jobs.core import options as params
from jobs.core import redact, retry, runner, secrets
from jobs.core.errors import ConfigError, ConflictError, UsageError
from jobs.core.result import Done

DEFAULT_MODEL = "plana.saas.subscription"
FIELDS = ("subdomain", "project_id", "tier", "odoo_version", "hostname", "state")
APIS = ("jsonrpc", "json2")
KEY_FILE = "PLANA_ERP_API_KEY_FILE"

_MODEL = re.compile(r"[a-z][a-z0-9_]*(\.[a-z0-9_]+)+", re.ASCII)
_FIELD = re.compile(r"[a-z_][a-z0-9_]*", re.ASCII)
_STATE = re.compile(r"[a-z][a-z0-9_]{0,31}", re.ASCII)

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
        return ConfigError(f"{KEY_FILE}: the ERP refused access ({text})")
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
                raise ConfigError("erpUrl: no /jsonrpc endpoint there (HTTP 404)")
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
                raise ConfigError(f"{KEY_FILE}: the ERP refused the login {self.login!r} and key")
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
                    raise ConfigError("erpUrl: no JSON-2 endpoint there (HTTP 404)")
                raise ConflictError(
                    f"{what}: HTTP {response.status_code}: {http.snippet(response)}"
                )
            name, message = str(error.get("name", "")), str(error.get("message", ""))
            if response.status_code in (401, 403):
                raise ConfigError(f"{KEY_FILE}: the ERP refused access ({what}: {name}: {message})")
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


def field_map(value: str | None, field: str = "erpFields") -> dict[str, str]:
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
    return mapping


def _choice(value: str | None, allowed: tuple[str, ...], field: str) -> str:
    if value not in allowed:
        raise UsageError(field, f"must be one of {', '.join(allowed)}, got {value!r}")
    return value


def _pattern(value: str | None, pattern: re.Pattern[str], field: str, what: str) -> str:
    if not value or not pattern.fullmatch(value):
        raise UsageError(field, f"must be {what}, got {value!r}")
    return value


@click.command("erp-callback")
@params.client_spec
@params.option("--erp-url", env="PLANA_ERP_URL", default=None, help="Base URL of the ERP (Odoo).")
@params.option(
    "--erp-db",
    env="PLANA_ERP_DB",
    default=None,
    help="ERP database (required for jsonrpc; sent as X-Odoo-Database for json2).",
)
@params.option("--erp-login", env="PLANA_ERP_LOGIN", default=None, help="ERP user login (jsonrpc).")
@params.option(
    "--erp-api-key-file", env=KEY_FILE, default=None, help="File holding the ERP user's API key."
)
@params.option(
    "--erp-api",
    env="PLANA_ERP_API",
    default="jsonrpc",
    show_default=True,
    help="jsonrpc (Odoo 17/18) or json2 (Odoo 19).",
)
@params.option(
    "--erp-model",
    env="PLANA_ERP_MODEL",
    default=DEFAULT_MODEL,
    show_default=True,
    help="The subscription model.",
)
@params.option(
    "--erp-fields",
    env="PLANA_ERP_FIELDS",
    default="",
    help=f"ERP field names where they differ: name=erp_field,… ({', '.join(FIELDS)}).",
)
@params.option(
    "--state",
    env="PLANA_ERP_STATE",
    default="active",
    show_default=True,
    help="Value of the record's state field.",
)
@params.request_timeout
@params.common
def erp_callback(**kw: Any) -> None:
    """Upsert the tenant's subscription record in the PLANA ERP (Odoo external API)."""
    runner.run("erp-callback", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Everything is validated before the key is read or a request is sent.
    spec = params.client(kw, owner=False)
    base = http.url(kw["erp_url"], "erpUrl").rstrip("/")
    api_name = _choice(kw["erp_api"], APIS, "erpApi")
    model = _pattern(kw["erp_model"], _MODEL, "erpModel", "an Odoo model name (a.b)")
    names = field_map(kw["erp_fields"])
    state = _pattern(kw["state"], _STATE, "state", "a lowercase selection value")
    timeout = http.request_timeout(kw["request_timeout"])
    db, login = kw["erp_db"], kw["erp_login"]
    if api_name == "jsonrpc":
        db = _pattern(db, re.compile(r"[A-Za-z0-9_.-]{1,63}"), "erpDb", "a database name")
        login = _pattern(login, re.compile(r"\S{1,254}"), "erpLogin", "a login")
    elif db:
        db = _pattern(db, re.compile(r"[A-Za-z0-9_.-]{1,63}"), "erpDb", "a database name")
    job.bind(tenant=spec.tenant.subdomain)
    key = secrets.read_file(kw["erp_api_key_file"], KEY_FILE)
    redact.register_basic(login, key)  # a peer may echo the pair as HTTP Basic credentials

    wanted_by_name: dict[str, Any] = {
        "subdomain": spec.tenant.subdomain,
        "project_id": spec.project_id,
        "tier": spec.tier,
        "odoo_version": str(spec.odoo_version),
        "hostname": spec.tenant.hostname,
        "state": state,
    }
    wanted = {names[k]: v for k, v in wanted_by_name.items()}
    key_field = names["subdomain"]
    domain = [[key_field, "=", spec.tenant.subdomain]]
    details: dict[str, Any] = {"model": model, "api": api_name}

    with http.client(timeout, base) as client:
        caller = Caller(client, base, job, timeout)
        api: Api = (
            JsonRpc(caller, db, login, key) if api_name == "jsonrpc" else Json2(caller, db, key)
        )
        job.step("search")
        found = api.search_read(model, domain, list(wanted))
        if not found:
            job.step("create")
            try:
                rid = api.create(model, wanted)
            except ErpRefused:
                # A concurrent run may have created it between our search and create.
                found = api.search_read(model, domain, list(wanted))
                if not found:
                    raise
            else:
                details.update(record_id=rid, fields=sorted(wanted))
                job.log.info("subscription created", **details)
                return Done("created", details)
        if len(found) > 1:
            ids = [r.get("id") for r in found]
            raise ConflictError(
                f"{model}: several records for {key_field}={spec.tenant.subdomain}", record_ids=ids
            )
        record = found[0]
        rid = int(record["id"])
        diff = {f: v for f, v in wanted.items() if record.get(f) != v}
        details["record_id"] = rid
        if not diff:
            job.log.info("subscription unchanged", **details)
            return Done("unchanged", details)
        job.step("write")
        api.write(model, rid, diff)
        details["changed"] = sorted(diff)
        job.log.info("subscription updated", **details)
        return Done("updated", details)
