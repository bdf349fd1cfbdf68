"""STAND-IN for the PLANA ERP's external API (Odoo with the `plana_saas` module) — not Odoo.

A real local HTTP server that speaks the two envelopes of Odoo's external API faithfully enough
for a client to be tested against it:

* JSON-RPC 2.0 at `POST /jsonrpc` (Odoo 17/18): `common.authenticate(db, login, key, {})` → uid
  or `false`; `object.execute_kw(db, uid, key, model, method, args, kwargs)`. Errors come back
  with HTTP 200 as `{"error": {"code": 200, "message": "Odoo Server Error", "data": {"name":
  "odoo.exceptions.AccessDenied" | "odoo.exceptions.ValidationError" | …, "message", "arguments",
  "context", "debug"}}}`.
* JSON-2 at `POST /json/2/<model>/<method>` (Odoo 19): `Authorization: bearer <api key>`,
  optional `X-Odoo-Database`, a JSON object of named arguments (`ids`, `context`, then the
  method's own parameters); the result is the JSON body. Errors are HTTP 401 (bad key), 403
  (access), 404 (unknown model or method), 422 (user/validation error or bad arguments), 500,
  with `{"name", "message", "arguments", "context", "debug"}`.

The model `plana.saas.subscription` lives in memory (`records`), with the checks the real module
makes: `subdomain` unique and required, `tier` a selection, unknown fields refused. Tests script
failures with `fail_next` (an HTTP status, answered before the request is handled) and read
`calls` to see what the client asked.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.support.servers import Handler, Server

MODEL = "plana.saas.subscription"
FIELDS = {
    "subdomain": str, "project_id": int, "tier": str, "odoo_version": str, "hostname": str,
    "state": str, "name": str, "active": bool,
}  # fmt: skip
TIERS = ("starter", "pro", "enterprise")


class OdooError(Exception):
    name = "odoo.exceptions.UserError"
    status = 422

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class AccessDenied(OdooError):
    name = "odoo.exceptions.AccessDenied"
    status = 401


class AccessError(OdooError):
    name = "odoo.exceptions.AccessError"
    status = 403


class ValidationError(OdooError):
    name = "odoo.exceptions.ValidationError"
    status = 422


class NotFound(OdooError):
    name = "werkzeug.exceptions.NotFound"
    status = 404


class BadArguments(OdooError):
    name = "werkzeug.exceptions.UnprocessableEntity"
    status = 422


class InternalError(OdooError):
    name = "psycopg2.errors.SerializationFailure"
    status = 500


@dataclass
class Call:
    api: str  # jsonrpc | json2
    model: str
    method: str
    payload: Any


@dataclass
class Erp:
    db: str
    login: str
    api_key: str
    uid: int = 2
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    calls: list[Call] = field(default_factory=list)
    fail_next: list[int] = field(default_factory=list)
    raise_next: list[OdooError] = field(default_factory=list)
    raise_on: dict[str, OdooError] = field(default_factory=dict)  # method → error, every time
    readonly_user: bool = False  # the key is valid but the user lacks write access
    _next_id: int = 1

    # -- the model ------------------------------------------------------------------------

    def _check_vals(self, vals: Any) -> dict[str, Any]:
        if not isinstance(vals, dict):
            raise BadArguments("vals must be a dict")
        for key, value in vals.items():
            if key not in FIELDS:
                raise ValueError(f"Invalid field {key!r} on model {MODEL!r}")
            if not isinstance(value, FIELDS[key]):
                raise ValidationError(f"Wrong value for {MODEL}.{key}: {value!r}")
        if "tier" in vals and vals["tier"] not in TIERS:
            raise ValidationError(f"Wrong value for {MODEL}.tier: {vals['tier']!r}")
        return vals

    def _match(self, rec: dict[str, Any], domain: list[Any]) -> bool:
        for leaf in domain:
            if isinstance(leaf, str):
                continue  # '&' — the only operator the clients here use implicitly
            fname, op, value = leaf
            if fname not in FIELDS and fname != "id":
                raise ValueError(f"Invalid field {fname!r} in leaf {leaf!r}")
            if op != "=":
                raise ValueError(f"Invalid operator {op!r}")
            if rec.get(fname) != value:
                return False
        return True

    def search_read(
        self, domain: list[Any], fields: list[str] | None = None, limit: int | None = None,
        context: dict[str, Any] | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        active_test = (context or {}).get("active_test", True)
        for name in fields or []:
            if name not in FIELDS and name != "id":
                raise ValueError(f"Invalid field {name!r} on model {MODEL!r}")
        out = []
        for rid, rec in sorted(self.records.items()):
            if active_test and not rec.get("active", True):
                continue
            if self._match(rec, domain):
                names = fields or list(FIELDS)
                for name in names:
                    if name not in FIELDS and name != "id":
                        raise ValueError(f"Invalid field {name!r} on model {MODEL!r}")
                out.append({"id": rid, **{n: rec.get(n, False) for n in names if n != "id"}})
        return out[:limit] if limit else out

    def create(self, vals_list: list[dict[str, Any]] | dict[str, Any]) -> list[int] | int:
        if self.readonly_user:
            raise AccessError(f"You are not allowed to create '{MODEL}' records.")
        single = isinstance(vals_list, dict)
        ids = []
        batch: list[dict[str, Any]] = [vals_list] if isinstance(vals_list, dict) else vals_list
        for vals in batch:
            vals = self._check_vals(vals)
            if not vals.get("subdomain"):
                raise ValidationError("subdomain is required")
            if any(r["subdomain"] == vals["subdomain"] for r in self.records.values()):
                raise ValidationError("A subscription for this subdomain already exists.")
            rid, self._next_id = self._next_id, self._next_id + 1
            self.records[rid] = {"active": True, "name": vals["subdomain"], **vals}
            ids.append(rid)
        return ids[0] if single else ids

    def write(self, ids: list[int], vals: dict[str, Any]) -> bool:
        if self.readonly_user:
            raise AccessError(f"You are not allowed to modify '{MODEL}' records.")
        vals = self._check_vals(vals)
        for rid in ids:
            if rid not in self.records:
                raise OdooError(f"Record does not exist or has been deleted. ({MODEL}({rid},))")
        for rid in ids:
            if "subdomain" in vals and any(
                r["subdomain"] == vals["subdomain"] for i, r in self.records.items() if i != rid
            ):
                raise ValidationError("A subscription for this subdomain already exists.")
            self.records[rid].update(vals)
        return True

    def dispatch(self, api: str, model: str, method: str, kwargs: dict[str, Any]) -> Any:
        self.calls.append(Call(api, model, method, kwargs))
        if self.raise_next:
            raise self.raise_next.pop(0)
        if method in self.raise_on:
            raise self.raise_on[method]
        if model != MODEL:
            raise NotFound(f"the model {model!r} does not exist")
        func: dict[str, Callable[..., Any]] = {
            "search_read": self.search_read,
            "create": self.create,
            "write": self.write,
        }
        if method not in func:
            raise NotFound(f"The method {method!r} does not exist on the model {model!r}")
        try:
            return func[method](**kwargs)
        except TypeError as exc:
            raise BadArguments(str(exc)) from None


def _serialize(exc: Exception) -> dict[str, Any]:
    name = exc.name if isinstance(exc, OdooError) else f"builtins.{type(exc).__name__}"
    message = exc.message if isinstance(exc, OdooError) else str(exc)
    return {"name": name, "message": message, "arguments": [message], "context": {},
            "debug": f"Traceback (most recent call last):\n{name}: {message}\n"}  # fmt: skip


class _ErpHandler(Handler):
    def do_POST(self) -> None:
        erp: Erp = self.app.erp
        raw = self.body()
        with self.app.lock:
            if erp.fail_next:
                status = erp.fail_next.pop(0)
                self.reply(
                    status, b"<html>upstream unavailable</html>", {"Content-Type": "text/html"}
                )
                return
            if self.path == "/jsonrpc":
                self._jsonrpc(erp, raw)
            elif m := re.fullmatch(r"/json/2/([^/]+)/([^/]+)", self.path):
                self._json2(erp, m.group(1), m.group(2), raw)
            else:
                self.reply(404, b"<html>Not Found</html>", {"Content-Type": "text/html"})

    # JSON-RPC: HTTP 200 whatever happens; the error is in the envelope.
    def _jsonrpc(self, erp: Erp, raw: bytes) -> None:
        req = json.loads(raw)
        params = req.get("params", {})
        service, method, args = params.get("service"), params.get("method"), params.get("args", [])
        try:
            if service == "common" and method == "authenticate":
                db, login, key, _env = args
                if db != erp.db:
                    raise InternalError(f'database "{db}" does not exist')
                erp.calls.append(Call("jsonrpc", "", "authenticate", {"login": login}))
                result: Any = erp.uid if (login, key) == (erp.login, erp.api_key) else False
            elif service == "object" and method == "execute_kw":
                db, uid, key, model, meth, margs, *rest = args
                if db != erp.db or uid != erp.uid or key != erp.api_key:
                    raise AccessDenied("Access Denied")
                kwargs = dict(rest[0]) if rest else {}
                result = erp.dispatch("jsonrpc", model, meth, _positional(meth, margs, kwargs))
            else:
                raise NotFound(f"service {service}.{method} not found")
            body: dict[str, Any] = {"jsonrpc": "2.0", "id": req.get("id"), "result": result}
        except Exception as exc:  # what Odoo's JsonRPCDispatcher.handle_error does
            body = {"jsonrpc": "2.0", "id": req.get("id"), "error": {
                "code": 200, "message": "Odoo Server Error", "data": _serialize(exc)}}  # fmt: skip
        self.reply(200, json.dumps(body).encode())

    # JSON-2: the HTTP status is the error; the body is the serialized exception.
    def _json2(self, erp: Erp, model: str, method: str, raw: bytes) -> None:
        auth = self.headers.get("Authorization", "")
        try:
            scheme, _, key = auth.partition(" ")
            if scheme.lower() != "bearer" or key != erp.api_key:
                raise AccessDenied("Invalid apikey")
            db = self.headers.get("X-Odoo-Database")
            if db is not None and db != erp.db:
                raise NotFound(f"database {db!r} not found")
            kwargs = json.loads(raw) if raw else {}
            if not isinstance(kwargs, dict):
                raise BadArguments("could not parse the body, expecting a json object")
            context = kwargs.pop("context", None)
            if method == "search_read" and context is not None:
                kwargs["context"] = context
            result = erp.dispatch("json2", model, method, kwargs)
            self.reply(200, json.dumps(result).encode())
        except Exception as exc:
            status = exc.status if isinstance(exc, OdooError) else 500
            self.reply(status, json.dumps(_serialize(exc)).encode())


def _positional(method: str, args: list[Any], kwargs: dict[str, Any]) -> dict[str, Any]:
    """execute_kw's positional args → the named parameters of the model method."""
    names = {"search_read": ["domain", "fields"], "create": ["vals_list"],
             "write": ["ids", "vals"]}.get(method, [])  # fmt: skip
    if len(args) > len(names):
        raise BadArguments(f"{method}() takes {len(names)} positional arguments")
    return {**dict(zip(names, args, strict=False)), **kwargs}


class _ErpHttp(Server):
    """The server _ErpHandler serves from (its `app`): the ERP beside the server's lock."""

    def __init__(self, erp: Erp) -> None:
        super().__init__(_ErpHandler)
        self.erp = erp


class ErpServer:
    def __init__(self, erp: Erp) -> None:
        self.erp = erp
        self.server = _ErpHttp(erp)

    @property
    def url(self) -> str:
        return self.server.url

    def __enter__(self) -> ErpServer:
        self.server.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.__exit__(*exc)
