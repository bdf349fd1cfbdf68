"""Marker data as the jobs write it, for a test that plants a marker of ours by hand (a tenant
made without tenant-db, another tenant's work copy, an upgrade's rollback copy).

Each fits its kind's schema (`jobs.ops.marker.SCHEMAS`), as `marker.write` requires: a marker
that does not fit is no marker of ours, and a test that wants one of those (someone else's
comment) writes it with COMMENT ON DATABASE, as anyone could.
"""

from __future__ import annotations

from typing import Any

TEMPLATE = "template_basic_18"


def tenant(subdomain: str, **extra: Any) -> dict[str, Any]:
    """A tenant marker's data as tenant-db writes it (cloned from a template made by other
    means: no fingerprint)."""
    return {"subdomain": subdomain, "project_id": 7, "template": TEMPLATE,
            "template_fingerprint": None, **extra}  # fmt: skip


def environment(subdomain: str, env: str, **extra: Any) -> dict[str, Any]:
    """An environment marker's data as environment-db writes it (fresh from the template)."""
    return {"subdomain": f"{subdomain}--{env}", "tenant": subdomain, "env": env,
            "source": "template", "generation": None, **extra}  # fmt: skip


def template(fingerprint: str, **extra: Any) -> dict[str, Any]:
    """A template marker's data as template-build writes it (of Odoo 18, base only)."""
    return {"fingerprint": fingerprint, "code": "basic", "odoo_version": 18, "modules": ["base"],
            "binary": "Odoo Server 18.0", "addons_revision": "", **extra}  # fmt: skip
