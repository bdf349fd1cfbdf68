"""`plana-job template-build` (TemplateSnapshot): the template database tenants are cloned from.

The template `template_{code}_{version}` is identified by a fingerprint: a hash of the Odoo major
version, the sorted module list, the binary's `--version` line, `PLANA_ADDONS_REVISION` and the
digest of the modules' code on the addons path (`jobs.adapters.odoo.addons_digest`: the modules,
their dependencies and auto-installed modules; `--version` alone is the same for every 18 build). It
is kept in the template's marker (`COMMENT ON DATABASE`, readable without connecting: a template has
`datallowconn = false`) and in its filestore's mark file, so a clone can tell that the two
belong together.

- Same fingerprint and a healthy template → `unchanged`; no Odoo runs when the binary is a
  Python script whose interpreter names the `odoo` package it imports (the image's
  `/usr/bin/odoo`, a venv's): the version line is then read from that package's `release.py`.
  Otherwise (a shell wrapper) only `odoo --version` runs. The digest reads the files either way.
- Otherwise the template is built aside in `template_{code}_{version}__build` (dropped first
  when stale) with `odoo -i <modules> --without-demo=all --stop-after-init`; every requested
  module must be `installed` and nothing left `to install`/`to upgrade`, whatever Odoo's exit
  code said (exit 65 otherwise; the live template is untouched). Then its sessions are ended,
  it is marked `verified`, made `datistemplate = true, datallowconn = false`, and swapped in for
  the live template (database renames and marker in one transaction, then the filestore
  directory) under the exclusive advisory lock "template:{template}" that clones hold shared.
  The previous template is kept as `…__old` until the swap is done, then dropped.
- A run killed anywhere converges on the next run: a verified build is swapped in without
  rebuilding, a half-swapped filestore is completed, leftovers are dropped.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import psycopg
from psycopg import sql

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.odoo import addons_digest
from jobs.adapters.pg import locks
from jobs.core import background, naming, runner
from jobs.core import options as params
from jobs.core.errors import ConflictError, TransientError, UsageError
from jobs.core.result import Done
from jobs.ops import clone, marker

BUILD_SUFFIX = "__build"
OLD_SUFFIX = "__old"
_MODULE_SPLIT = re.compile(r"[\s,]+")


def default_modules(code: str, version: int) -> list[str]:
    """The module list of a template code, from jobs/data/templates.json."""
    text = importlib.resources.files("jobs").joinpath("data/templates.json").read_text("utf-8")
    entry = json.loads(text)[code]
    by_version: dict[str, list[str]] = entry.get("versions", {})
    return list(by_version.get(str(version), entry["modules"]))


def parse_modules(value: str | None, code: str, version: int) -> list[str]:
    """`--modules` (comma or space separated) or the code's default list; sorted, unique."""
    if value is None or not value.strip():
        names = default_modules(code, version)
    else:
        names = [n for n in _MODULE_SPLIT.split(value.strip()) if n]
    for name in names:
        if not odoo.MODULE_NAME.fullmatch(name):
            raise UsageError("modules", f"{name!r} is not an Odoo module name ([a-z0-9_])")
    if not names:
        raise UsageError("modules", "is empty")
    return sorted(set(names))


def fingerprint(
    version: int, modules: list[str], binary: str, revision: str | None, addons: str
) -> str:
    body = {
        "odoo_version": version,
        "modules": sorted(set(modules)),
        "binary": binary,
        "addons_revision": revision or "",
        "addons_digest": addons,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@click.command("template-build")
@params.option(
    "--template-code",
    env="PLANA_TEMPLATE_CODE",
    help="TemplateSnapshot templateCode: basic | pro | enterprise.",
)
@params.odoo_version
@params.option(
    "--modules",
    env="PLANA_TEMPLATE_MODULES",
    default=None,
    help="Modules to install (comma separated) instead of the code's default list.",
)
@params.option(
    "--addons-revision",
    env="PLANA_ADDONS_REVISION",
    default=None,
    help="Revision of the addons (part of the fingerprint, with the digest of their code).",
)
@params.addons_path
@params.odoo_config
@params.option(
    "--template-db",
    env="PLANA_TEMPLATE_DB",
    default=None,
    help="Template database name [default: template_{code}_{version}].",
)
@params.option(
    "--force",
    env="PLANA_TEMPLATE_FORCE",
    is_flag=True,
    default=False,
    help="Rebuild even when the fingerprint matches.",
)
@params.odoo_bin
@params.data_dir
@params.pg_dsn
@params.common
def template_build(**kw: Any) -> None:
    """Build the template database of a TemplateSnapshot aside and swap it in."""
    runner.run("template-build", lambda job: _run(job, kw), timeout=kw["timeout"])


@dataclass
class _Ctx:
    job: runner.Job
    conn: psycopg.Connection[Any]
    template: str
    version: int
    modules: list[str]
    fingerprint: str
    data: dict[str, Any]  # the marker's data
    data_dir: Path
    dsn: str | None

    @property
    def build(self) -> str:
        return self.template + BUILD_SUFFIX

    @property
    def old(self) -> str:
        return self.template + OLD_SUFFIX

    def fs(self, db: str) -> Path:
        return naming.filestore(db, self.data_dir)


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    # Input first: every field is validated before anything runs or connects.
    code = naming.template_code(kw["template_code"])
    version = naming.odoo_version(kw["odoo_version"])
    modules = parse_modules(kw["modules"], code, version)
    data_dir = Path(kw["data_dir"] or naming.DEFAULT_DATA_DIR)
    odoo_bin = kw["odoo_bin"] or "odoo"
    template = (
        clone.template_name(kw["template_db"])
        if kw["template_db"]
        else naming.template_db(code, version)
    )
    job.bind(template=template)

    job.step("fingerprint")
    found = addons_digest.installation(odoo_bin)
    path = addons_digest.search_path(
        odoo_bin, odoo_config=kw["odoo_config"], addons_path=kw["addons_path"], found=found
    )
    # The version line comes from the release.py of the odoo package the binary imports, when
    # its interpreter could say which (an unchanged run then starts no Odoo: importing it is
    # most of `odoo --version`'s 1.5-2 s); else from `odoo --version`. Meanwhile the code digest
    # reads files in a thread (jobs.core.background: the log context, job and template, kept;
    # joined before a SIGTERM unwinds). It does not watch `stop`: it only reads, and a digest
    # of the addons takes about a second.
    with background.workers() as side:
        pending = side.start(addons_digest.digest, modules, path)
        binary = odoo.installed_version(odoo_bin, found.release_package, deadline=job.deadline)
    code_digest = pending.result()
    if odoo.major(binary) != version:
        raise ConflictError(
            f"{odoo_bin} is {binary!r}, not Odoo {version}", binary=binary, odoo_version=version
        )
    fp = fingerprint(version, modules, binary, kw["addons_revision"], code_digest.value)
    data = {
        "fingerprint": fp,
        "code": code,
        "odoo_version": version,
        "modules": modules,
        "binary": binary,
        "addons_revision": kw["addons_revision"] or "",
        "addons_digest": code_digest.value,
        "addons_missing": code_digest.missing,
    }

    with pg.connection(dsn=kw["pg_dsn"], deadline=job.deadline) as conn:
        ctx = _Ctx(job, conn, template, version, modules, fp, data, data_dir, kw["pg_dsn"])
        # One build per template at a time; clones are not blocked by this lock.
        with locks.advisory(locks.template_build(template), deadline=job.deadline, dsn=ctx.dsn):
            return _converge(ctx, kw, odoo_bin)


def _converge(ctx: _Ctx, kw: dict[str, Any], odoo_bin: str) -> Done:
    job, conn = ctx.job, ctx.conn
    job.step("observe")
    live = marker.require_ours(
        conn, ctx.template, marker.TEMPLATE_KIND, what="was not built by plana-jobs", absent_ok=True
    )
    existed = live is not None  # ours: absent is None, anything not ours is 65 above
    details = {"template": ctx.template, "fingerprint": ctx.fingerprint, "modules": ctx.modules}

    if not kw["force"] and live is not None and live.data.get("fingerprint") == ctx.fingerprint:
        if live.state == "complete" and _frozen(conn, ctx.template):
            if _fs_fingerprint(ctx, ctx.template) == ctx.fingerprint:
                cleaned = _drop_leftovers(ctx)
                if cleaned:
                    return Done("updated", {**details, "cleaned": cleaned})
                return Done("unchanged", details)
            if _fs_fingerprint(ctx, ctx.build) == ctx.fingerprint:
                job.step("swap-filestore")  # a run died between the two halves of the swap
                with clone.template_lock(
                    ctx.template, deadline=job.deadline, shared=False, dsn=ctx.dsn
                ):
                    _swap_filestore(ctx)
                _drop_leftovers(ctx)
                return Done("updated", {**details, "resumed": "filestore swap"})

    build = marker.ours(
        conn, ctx.build, marker.TEMPLATE_KIND, states=("verified",),
        match={"fingerprint": ctx.fingerprint},
    )  # fmt: skip
    resumable = (
        not kw["force"] and build is not None and _fs_fingerprint(ctx, ctx.build) == ctx.fingerprint
    )
    if resumable:
        job.log.info("resuming a verified build", database=ctx.build)
    else:
        _build(ctx, kw, odoo_bin)

    job.step("freeze")
    pg.terminate_sessions(conn, ctx.build)
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH is_template true ALLOW_CONNECTIONS false").format(
            sql.Identifier(ctx.build)
        )
    )
    pg.terminate_sessions(conn, ctx.build)  # allow_connections does not end existing sessions

    job.step("swap")
    with clone.template_lock(ctx.template, deadline=job.deadline, shared=False, dsn=ctx.dsn):
        _swap_database(ctx, existed)
        _swap_filestore(ctx)
    job.step("cleanup")
    _drop_leftovers(ctx)
    return Done("updated" if existed else "created", details)


def _build(ctx: _Ctx, kw: dict[str, Any], odoo_bin: str) -> None:
    job, conn = ctx.job, ctx.conn
    job.step("prepare")
    _drop_database(conn, ctx.build)
    filestore.discard(ctx.fs(ctx.build))

    job.step("odoo")
    inv = odoo.Invocation(
        db=ctx.build, install=ctx.modules, data_dir=ctx.data_dir, addons_path=kw["addons_path"]
    )
    done = odoo.run(
        odoo_bin,
        ctx.version,
        inv,
        dsn=ctx.dsn,
        base_config=kw["odoo_config"],
        deadline=job.deadline,
    )

    job.step("verify")
    problems: list[str] = []
    if done.returncode != 0 and done.stopped is None:
        problems.append(done.failure())
    states: dict[str, str] = {}
    if pg.database_exists(conn, ctx.build):
        with pg.connection(ctx.build, dsn=ctx.dsn, deadline=job.deadline) as build_conn:
            try:
                states = odoo.module_states(build_conn)
            except psycopg.errors.UndefinedTable:
                states = {}
    problems += odoo.check_modules(states, ctx.modules)
    if not problems:
        # Tenants copy this filestore trusting names; check its content once, here.
        report = filestore.verify(ctx.fs(ctx.build))
        problems += [f"filestore {rel}: content does not match its name" for rel in report.bad]
    if problems:
        _drop_database(conn, ctx.build)
        filestore.discard(ctx.fs(ctx.build))
        if done.stopped is not None:  # stopped before it finished: a retry may well succeed
            raise TransientError(
                f"{done.failure()} before the build finished: {'; '.join(problems)[:600]}",
                build=ctx.build,
            )
        raise ConflictError(
            f"template build failed, live template untouched: {'; '.join(problems)[:600]}",
            problems=problems[:20],
        )
    clone.restrict_connect(conn, ctx.build)  # CONNECT for the building role only
    filestore.write_mark(ctx.fs(ctx.build), {"fingerprint": ctx.fingerprint})
    marker.write(conn, ctx.build, marker.Marker(marker.TEMPLATE_KIND, "verified", ctx.data))
    job.log.info("build verified", modules={m: states[m] for m in ctx.modules})


def _swap_database(ctx: _Ctx, existed: bool) -> None:
    """live → __old and __build → live, with the live marker, in one transaction."""
    conn = ctx.conn
    _drop_database(conn, ctx.old)
    if existed:
        pg.terminate_sessions(conn, ctx.template)
    with conn.transaction():
        if existed:
            pg.rename_database(conn, ctx.template, ctx.old)
        pg.rename_database(conn, ctx.build, ctx.template)
        marker.write(conn, ctx.template, marker.Marker(marker.TEMPLATE_KIND, "complete", ctx.data))
    ctx.job.log.info("template database swapped in", database=ctx.template)


def _swap_filestore(ctx: _Ctx) -> None:
    """Move the build's filestore into place (the previous one goes to __old)."""
    live, build, old = ctx.fs(ctx.template), ctx.fs(ctx.build), ctx.fs(ctx.old)
    if live.exists():
        filestore.discard(old)
        os.rename(live, old)
    os.rename(build, live)
    ctx.job.log.info("template filestore swapped in", path=str(live))


def _drop_leftovers(ctx: _Ctx) -> list[str]:
    cleaned = []
    if _drop_database(ctx.conn, ctx.old):
        cleaned.append(ctx.old)
    if filestore.discard(ctx.fs(ctx.old)):
        cleaned.append(str(ctx.fs(ctx.old)))
    return cleaned


def _drop_database(conn: psycopg.Connection[Any], name: str) -> bool:
    if not pg.database_exists(conn, name):
        return False
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
    pg.drop_database(conn, name)
    return True


def _frozen(conn: psycopg.Connection[Any], name: str) -> bool:
    row = conn.execute(
        "SELECT datistemplate AND NOT datallowconn FROM pg_database WHERE datname = %s", (name,)
    ).fetchone()
    return bool(row and row[0])


def _fs_fingerprint(ctx: _Ctx, db: str) -> str | None:
    mark = filestore.read_mark(ctx.fs(db))
    value = mark.get("fingerprint") if mark else None
    return str(value) if value else None
