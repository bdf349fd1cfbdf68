"""The naming contract and the input rules; the only place that knows them.

Every validator returns the normalised value or raises UsageError naming the spec field, so a
job refuses bad input (exit 64) before it has touched anything.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from jobs.core.errors import UsageError

DEFAULT_BASE_DOMAIN: Final = "planapulse.app"
DEFAULT_DATA_DIR: Final = "/var/lib/odoo"
DEFAULT_ODOO_VERSION: Final = 18
EVENTS_STREAM: Final = "PLANA:events"

ODOO_VERSIONS: Final = (17, 18, 19)
NAMESPACES: Final = {17: "plana-odoo", 18: "plana-odoo-18", 19: "plana-odoo-19"}
TIER_TEMPLATE: Final = {"starter": "basic", "pro": "pro", "enterprise": "enterprise"}
TEMPLATE_CODES: Final = ("basic", "pro", "enterprise")

SUBDOMAIN_MAX: Final = 40
MAX_DB_NAME: Final = 63  # PostgreSQL's NAMEDATALEN - 1, in bytes
# `{subdomain}--{env}` names an environment. Neither part may contain "--", so the first "--"
# separates them and no environment's name can equal a tenant's (or another tenant's
# environment's). Work copies append `__{suffix}`: "_" is in no subdomain nor base domain.
ENV_SEPARATOR: Final = "--"
WORK_SEPARATOR: Final = "__"
OWNER_NAME_MAX: Final = 128
# Names that would collide with platform hostnames, PostgreSQL's own databases or our templates.
RESERVED_SUBDOMAINS: Final = frozenset(
    {
        "www", "api", "app", "admin", "mail", "smtp", "imap", "pop", "ftp", "ns1", "ns2",
        "matrix", "portal", "account", "accounts", "erp", "status", "support", "help", "docs",
        "blog", "static", "cdn", "assets", "auth", "login", "sso", "plana", "planapulse",
        "postgres", "template0", "template1", "template", "root", "backup", "backups",
        "localhost", "odoo", "internal", "system",
    }
)  # fmt: skip

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?", re.ASCII)
_PART = r"[a-z0-9]+(?:-[a-z0-9]+)*"  # a DNS label without "--"
_WORK = r"[a-z0-9]+"
# The tails the jobs give hidden filestore leftovers (staging kinds, `.old`, `.env`, a discard's
# `.trash-…`, temporary `.tmp-`/`.link-` names), nested when a leftover is itself renamed. Only
# these: with any tail, `.acme.planapulse.app.example.clone.partial` (the staging of tenant
# acme under the base domain `planapulse.app.example`) would be taken for acme's.
_HIDDEN_WORD = (
    r"(?:partial|old|env|clone|restore|upgrade|copy|trash-[0-9a-f]+|tmp-[0-9]+|link-[0-9]+)"
)
_HIDDEN_TAIL = _HIDDEN_WORD + r"(?:\." + _HIDDEN_WORD + ")*"
_DOMAIN = re.compile(r"(?:[a-z0-9](?:[a-z0-9-]*[a-z0-9])?\.)+[a-z]{2,63}", re.ASCII)
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@" + _DOMAIN.pattern, re.ASCII | re.I)
_POSITIVE_INT = re.compile(r"[1-9][0-9]{0,8}", re.ASCII)


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def subdomain(value: str | None, field: str = "subdomain") -> str:
    if not value:
        raise UsageError(field, "is required")
    if len(value) > SUBDOMAIN_MAX:
        raise UsageError(field, f"at most {SUBDOMAIN_MAX} characters, got {len(value)}")
    if not _LABEL.fullmatch(value):
        raise UsageError(field, f"must be a lowercase DNS label [a-z0-9-], got {_show(value)}")
    if ENV_SEPARATOR in value:
        raise UsageError(
            field, f"must not contain '--' (it names environments), got {_show(value)}"
        )
    if value in RESERVED_SUBDOMAINS:
        raise UsageError(field, f"{_show(value)} is a reserved name")
    return value


def environment(
    sub: str,
    env: str | None,
    domain: str = DEFAULT_BASE_DOMAIN,
    *,
    work_suffix_max: int = 0,
    field: str = "env",
) -> Tenant:
    """Environment `env` of tenant `sub` (already validated): `{sub}--{env}`, checked so that
    its database name plus a work suffix of `work_suffix_max` bytes fits PostgreSQL's 63."""
    if not env:
        raise UsageError(field, "is required")
    if not _LABEL.fullmatch(env):
        raise UsageError(field, f"must be a lowercase DNS label [a-z0-9-], got {_show(env)}")
    if ENV_SEPARATOR in env:
        raise UsageError(field, f"must not contain '--', got {_show(env)}")
    name = Tenant(f"{sub}{ENV_SEPARATOR}{env}", domain)
    if len(name.db_name.encode()) + work_suffix_max > MAX_DB_NAME:
        raise UsageError(field, f"database name {name.db_name!r} is too long for PostgreSQL")
    return name


@dataclass(frozen=True)
class Owned:
    """A database or filestore name in a tenant's namespace: whose it is and what it is."""

    base: str  # the live database it derives from: `{sub}.{domain}` or `{sub}--{env}.{domain}`
    env: str | None  # the environment, or None for the tenant's own database
    work: str | None  # the work suffix after "__" (e.g. "new", "up18"), or None for `base`
    hidden: str | None = None  # a hidden leftover's tail after the name ("partial", "old", …)


def owned_name(
    name: str, sub: str, domain: str = DEFAULT_BASE_DOMAIN, *, hidden: bool = False
) -> Owned | None:
    """`name` parsed as `{sub}[--{env}].{domain}[__{work}]`, or None when it is not one of them.

    Exact: `acmex…`, `acme-x…` or another base domain are never acme's. `hidden`: a filestore
    leftover beside such a name instead, `.{name}.{tail}` (staging, `.old`, `.trash-…`;
    more leading dots when the leftover is itself of a hidden tree).
    """
    pattern = (
        re.escape(sub) + f"(?:{ENV_SEPARATOR}(?P<env>{_PART}))?" + r"\." + re.escape(domain)
        + f"(?:{WORK_SEPARATOR}(?P<work>{_WORK}))?"
    )  # fmt: skip
    if hidden:
        pattern = r"\.+" + pattern + rf"\.(?P<hidden>{_HIDDEN_TAIL})"
    found = re.fullmatch(pattern, name, re.ASCII | re.DOTALL)
    if found is None:
        return None
    env = found.group("env")
    base = db_name(f"{sub}{ENV_SEPARATOR}{env}" if env else sub, domain)
    return Owned(base, env, found.group("work"), found.group("hidden") if hidden else None)


def project_id(value: str | int | None, field: str = "projectId") -> int:
    text = str(value).strip() if value is not None else ""
    if not _POSITIVE_INT.fullmatch(text):
        raise UsageError(field, f"must be a positive integer, got {_show(value)}")
    return int(text)


def odoo_version(value: str | int | None, field: str = "odooVersion") -> int:
    # Not given (None) means the default; given but empty is a mistake to refuse, not a default.
    if value is None:
        return DEFAULT_ODOO_VERSION
    text = str(value).strip()
    if text not in {str(v) for v in ODOO_VERSIONS}:
        raise UsageError(field, f"must be one of 17, 18, 19, got {_show(value)}")
    return int(text)


def tier(value: str | None, field: str = "tier") -> str:
    if value not in TIER_TEMPLATE:
        raise UsageError(field, f"must be one of {', '.join(TIER_TEMPLATE)}, got {_show(value)}")
    return value


def template_code(value: str | None, field: str = "templateCode") -> str:
    if value not in TEMPLATE_CODES:
        raise UsageError(field, f"must be one of {', '.join(TEMPLATE_CODES)}, got {_show(value)}")
    return value


def owner_email(value: str | None, field: str = "ownerEmail") -> str:
    if not value:
        raise UsageError(field, "is required")
    if len(value) > 254 or not _EMAIL.fullmatch(value) or ".." in value:
        raise UsageError(field, f"must be an email address, got {_show(value)}")
    return value


def owner_name(value: str | None, field: str = "ownerName") -> str:
    if value is None or not value.strip():
        raise UsageError(field, "is required")
    if len(value) > OWNER_NAME_MAX:
        raise UsageError(field, f"at most {OWNER_NAME_MAX} characters, got {len(value)}")
    if not value.isprintable():
        raise UsageError(field, "must be printable text (no control characters)")
    return value


def base_domain(value: str | None, field: str = "baseDomain") -> str:
    value = value or DEFAULT_BASE_DOMAIN
    if len(value) > 253 or not _DOMAIN.fullmatch(value):
        raise UsageError(field, f"must be a lowercase DNS name, got {_show(value)}")
    return value


def server_name(value: str | None, field: str = "matrixServerName") -> str:
    if not value:
        raise UsageError(field, "is required")
    if not re.fullmatch(r"[A-Za-z0-9.-]+(?::[0-9]{1,5})?", value, re.ASCII):
        raise UsageError(field, f"must be a Matrix server name, got {_show(value)}")
    return value


def namespace(version: int) -> str:
    """Worker namespace of an Odoo major version."""
    return NAMESPACES[version]


def template_for_tier(tier_name: str) -> str:
    return TIER_TEMPLATE[tier_name]


def template_db(code: str, version: int) -> str:
    return f"template_{code}_{version}"


def db_name(sub: str, domain: str = DEFAULT_BASE_DOMAIN) -> str:
    return f"{sub}.{domain}"


def hostname(sub: str, domain: str = DEFAULT_BASE_DOMAIN) -> str:
    return f"{sub}.{domain}"


def filestore(db: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> Path:
    return Path(data_dir) / "filestore" / db


def room_localpart(sub: str, project: int) -> str:
    return f"support-{sub}-{project:03d}"


def room_alias(sub: str, project: int, server: str) -> str:
    return f"#{room_localpart(sub, project)}:{server}"


@dataclass(frozen=True)
class Tenant:
    """A PLANAClient's identity: everything the jobs derive from subdomain and base domain."""

    subdomain: str
    base_domain: str = DEFAULT_BASE_DOMAIN

    @property
    def db_name(self) -> str:
        return db_name(self.subdomain, self.base_domain)

    @property
    def hostname(self) -> str:
        return hostname(self.subdomain, self.base_domain)

    def filestore(self, data_dir: str | Path = DEFAULT_DATA_DIR) -> Path:
        return filestore(self.db_name, data_dir)


@dataclass(frozen=True)
class ClientSpec:
    """The validated PLANAClient spec."""

    tenant: Tenant
    project_id: int
    tier: str
    odoo_version: int
    owner_email: str
    owner_name: str

    @property
    def template(self) -> str:
        return template_db(template_for_tier(self.tier), self.odoo_version)

    @property
    def namespace(self) -> str:
        return namespace(self.odoo_version)
