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

observe → plan → apply: `observe_code` reads the fingerprint's inputs, `observe` the catalog
rows and filestore marks of the template, its `__build` and its `__old`; `decide` (pure) gives
the steps still to take (prepare, odoo, verify, freeze, swap, swap-filestore, cleanup) or a
blocked plan (65: another major, a template, build or old copy not ours). `--dry-run` runs
`preview`: the same reads without any lock and without starting Odoo (not even `--version`:
the version line then comes from release.py, or is assumed from the template's marker).
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

import psycopg
from psycopg import sql

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.odoo import addons_digest
from jobs.adapters.pg import locks
from jobs.core import background, naming, params, plan, runner
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


def module_list(value: str) -> tuple[str, ...] | None:
    """`--modules` (comma or space separated): sorted, unique; None when blank (the code's list,
    which depends on the code and the version: `Params.wanted_modules`)."""
    if not value.strip():
        return None
    names = [n for n in _MODULE_SPLIT.split(value.strip()) if n]
    for name in names:
        if not odoo.MODULE_NAME.fullmatch(name):
            raise UsageError("modules", f"{name!r} is not an Odoo module name ([a-z0-9_])")
    if not names:
        raise UsageError("modules", "is empty")
    return tuple(sorted(set(names)))


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


@params.spec
class Params(params.Common):
    template_code: str = params.option(
        "--template-code",
        "PLANA_TEMPLATE_CODE",
        "TemplateSnapshot templateCode: basic | pro | enterprise.",
        type=params.Rule("code", naming.template_code),
        required=True,
    )
    odoo_version: int | None = params.odoo_version()
    modules: tuple[str, ...] | None = params.option(
        "--modules",
        "PLANA_TEMPLATE_MODULES",
        "Modules to install (comma separated) instead of the code's default list.",
        type=params.Rule("modules", module_list),
    )
    addons_revision: str | None = params.option(
        "--addons-revision",
        "PLANA_ADDONS_REVISION",
        "Revision of the addons (part of the fingerprint, with the digest of their code).",
    )
    addons_path: str | None = params.addons_path()
    odoo_config: str | None = params.odoo_config()
    template_db: str | None = params.option(
        "--template-db",
        "PLANA_TEMPLATE_DB",
        "Template database name [default: template_{code}_{version}].",
        type=params.Rule("name", clone.template_name),
    )
    force: bool = params.option(
        "--force",
        "PLANA_TEMPLATE_FORCE",
        "Rebuild even when the fingerprint matches.",
        is_flag=True,
        default=False,
    )
    odoo_bin: str = params.odoo_bin()
    data_dir: str = params.data_dir()
    pg_dsn: str | None = params.pg_dsn()

    @property
    def version(self) -> int:
        return naming.DEFAULT_ODOO_VERSION if self.odoo_version is None else self.odoo_version

    @property
    def wanted_modules(self) -> list[str]:
        return sorted(set(self.modules or default_modules(self.template_code, self.version)))

    @property
    def template(self) -> str:
        return self.template_db or naming.template_db(self.template_code, self.version)

    @property
    def build_db(self) -> str:
        return self.template + BUILD_SUFFIX

    @property
    def old_db(self) -> str:
        return self.template + OLD_SUFFIX

    def fs(self, db: str) -> Path:
        return naming.filestore(db, self.data_dir)


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class Code:
    """What the wanted template is built from: the Odoo binary's version line and the digest
    of the modules' code."""

    binary: str | None  # None: only `odoo --version` could say, and a dry run never starts Odoo
    addons_digest: str
    addons_missing: tuple[str, ...] = ()


@dataclass(frozen=True)
class Database:
    """One of the template's three databases (live, `__build`, `__old`), from the catalog."""

    name: str
    exists: bool = False
    comment: str | None = None
    frozen: bool = False  # datistemplate and not datallowconn: what a clone's template is


@dataclass(frozen=True)
class Files:
    """One of the template's filestore directories and the fingerprint in its mark file."""

    exists: bool = False
    fingerprint: str | None = None


@dataclass(frozen=True)
class State:
    code: Code
    live: Database
    build: Database
    old: Database
    live_fs: Files = Files()
    build_fs: Files = Files()
    old_fs: Files = Files()


def observe_code(job: runner.Job, p: Params, *, start_odoo: bool) -> Code:
    """The fingerprint's inputs. `start_odoo` False (a dry run): the version line only from the
    release.py of the odoo package the binary imports, never from `odoo --version`."""
    found = addons_digest.installation(p.odoo_bin)
    path = addons_digest.search_path(
        p.odoo_bin, odoo_config=p.odoo_config, addons_path=p.addons_path, found=found
    )
    # The version line comes from the release.py of the odoo package the binary imports, when
    # its interpreter could say which (an unchanged run then starts no Odoo: importing it is
    # most of `odoo --version`'s 1.5-2 s); else from `odoo --version`. Meanwhile the code digest
    # reads files in a thread (jobs.core.background: the log context, job and template, kept;
    # joined before a SIGTERM unwinds). It does not watch `stop`: it only reads, and a digest
    # of the addons takes about a second.
    with background.workers() as side:
        pending = side.start(addons_digest.digest, p.wanted_modules, path)
        if start_odoo:
            binary: str | None = odoo.installed_version(
                p.odoo_bin, found.release_package, deadline=job.deadline
            )
        else:
            binary = odoo.known_version(p.odoo_bin, found.release_package)
    code_digest = pending.result()
    return Code(binary, code_digest.value, tuple(code_digest.missing))


_CATALOG = (
    "SELECT datname, shobj_description(oid, 'pg_database'), datistemplate AND NOT datallowconn"
    " FROM pg_database WHERE datname = ANY(%s)"
)


def _files(path: Path) -> Files:
    mark = filestore.read_mark(path)
    value = mark.get("fingerprint") if mark else None
    return Files(os.path.lexists(path), str(value) if value else None)


def observe(conn: psycopg.Connection[Any], p: Params, code: Code) -> State:
    """The catalog rows and filestore marks of the template, its build and its old copy."""
    names = (p.template, p.build_db, p.old_db)
    rows = {r[0]: r for r in conn.execute(_CATALOG, (list(names),)).fetchall()}

    def database(name: str) -> Database:
        row = rows.get(name)
        return Database(name) if row is None else Database(name, True, row[1], bool(row[2]))

    live, build, old = names
    return State(
        code,
        database(live),
        database(build),
        database(old),
        live_fs=_files(p.fs(live)),
        build_fs=_files(p.fs(build)),
        old_fs=_files(p.fs(old)),
    )


# --------------------------------------------------------------------------- plan


def marker_data(p: Params, code: Code, binary: str) -> dict[str, Any]:
    """The template marker's data: the fingerprint and what it was computed from."""
    modules = p.wanted_modules
    return {
        "fingerprint": fingerprint(
            p.version, modules, binary, p.addons_revision, code.addons_digest
        ),
        "code": p.template_code,
        "odoo_version": p.version,
        "modules": modules,
        "binary": binary,
        "addons_revision": p.addons_revision or "",
        "addons_digest": code.addons_digest,
        "addons_missing": list(code.addons_missing),
    }


def _template_marker(db: Database) -> tuple[marker.Marker | None, str | None]:
    """(our template marker, None), (None, what it carries instead) or (None, None): absent."""
    if not db.exists:
        return None, None
    return marker.examine(db.comment, marker.Kind.TEMPLATE)


def _assumed_binary(state: State) -> tuple[str | None, str]:
    """The version line (and where it was read): a dry run of a binary that is no Python
    script (a shell wrapper) cannot read it without starting Odoo, so it takes the line the
    template (or its build) was built with, and says so."""
    if state.code.binary is not None:
        return state.code.binary, "odoo"
    for db in (state.live, state.build):
        mark, _ = _template_marker(db)
        recorded = mark.data.get("binary") if mark else None
        if isinstance(recorded, str):
            return recorded, f"assumed from the marker of {db.name} (a dry run starts no Odoo)"
    return None, "unknown (a dry run starts no Odoo)"


def _leftover_problem(db: Database, *, unmarked_ok: bool) -> str | None:
    """Why `db` (a `__build` or `__old`) is not ours to drop, or None.

    A build Odoo was creating when its run was killed has no comment yet; an `__old` always
    carries the marker of the template it was.
    """
    if not db.exists or (unmarked_ok and db.comment is None):
        return None
    _, found = _template_marker(db)
    return None if found is None else f"database {db.name} exists but is not ours ({found})"


def _current(state: State, p: Params, fp: str | None) -> bool:
    live, _ = _template_marker(state.live)
    return (
        not p.force
        and fp is not None
        and live is not None
        and live.data.get("fingerprint") == fp
        and live.state == "complete"
        and state.live.frozen
    )


def _resumable(state: State, p: Params, fp: str | None) -> bool:
    """A build a killed run verified, of the fingerprint wanted, its filestore beside it."""
    build, _ = _template_marker(state.build)
    return (
        not p.force
        and fp is not None
        and build is not None
        and build.state == "verified"
        and build.data.get("fingerprint") == fp
        and state.build_fs.fingerprint == fp
    )


def _steps_of_build(p: Params, state: State) -> list[plan.Step]:
    odoo_line = f"odoo -d {p.build_db} -i {','.join(p.wanted_modules)} --stop-after-init"
    leftover = state.build.exists or state.build_fs.exists
    says = "drop the stale build and its filestore" if leftover else "no stale build to drop"
    return [
        plan.Step("prepare", says, target=p.build_db),
        plan.Step("odoo", odoo_line, target=p.build_db),
        plan.Step(
            "verify",
            "every module installed and none pending, filestore content checked; marker verified",
            target=p.build_db,
        ),
    ]


def _cleanup(p: Params) -> plan.Step:
    return plan.Step(
        "cleanup", f"drop {p.old_db} and any leftover {p.build_db}, with their filestores",
        target=p.old_db,
    )  # fmt: skip


def decide(state: State, p: Params) -> plan.Plan:
    """The steps still to take from `state` (pure: unit tests drive every crash state)."""
    if state.code.binary is not None and odoo.major(state.code.binary) != p.version:
        why = f"{p.odoo_bin} is {state.code.binary!r}, not Odoo {p.version}"
        return plan.blocked(why, binary=state.code.binary, odoo_version=p.version)
    _, found = _template_marker(state.live)
    if found is not None:
        why = f"database {p.template} exists but was not built by plana-jobs ({found})"
        return plan.blocked(f"{why}: left untouched", database=p.template)
    for db, unmarked_ok in ((state.build, True), (state.old, False)):
        problem = _leftover_problem(db, unmarked_ok=unmarked_ok)
        if problem is not None:
            return plan.blocked(f"{problem}: left untouched", database=db.name)

    binary, source = _assumed_binary(state)
    fp = marker_data(p, state.code, binary)["fingerprint"] if binary is not None else None
    details: dict[str, Any] = {
        "template": p.template,
        "fingerprint": fp,
        "modules": p.wanted_modules,
    }
    if state.code.binary is None:
        details["binary_source"] = source

    if _current(state, p, fp):
        if state.live_fs.fingerprint == fp:
            leftovers = (state.old, state.build, state.old_fs, state.build_fs)
            return plan.of(_cleanup(p) if any(x.exists for x in leftovers) else None, **details)
        if state.build_fs.fingerprint == fp:  # a run died between the two halves of the swap
            swap_fs = plan.Step(
                "swap-filestore", f"move the build's filestore into place for {p.template}"
                " (the database is swapped already), under the exclusive template lock",
                target=p.template,
            )  # fmt: skip
            return plan.of(swap_fs, _cleanup(p), **details)

    steps = [] if _resumable(state, p, fp) else _steps_of_build(p, state)
    swap = "; ".join(
        [*([f"{p.template} → {p.old_db}"] if state.live.exists else []),
         f"{p.build_db} → {p.template}, marker complete, then the filestores"]
    )  # fmt: skip
    return plan.of(
        *steps,
        plan.Step("freeze", "end its sessions; is_template true, ALLOW_CONNECTIONS false",
                  target=p.build_db),
        plan.Step("swap", f"under the exclusive lock template:{p.template}: {swap}",
                  target=p.template),
        _cleanup(p),
        **details,
    )  # fmt: skip


def preview(job: runner.Job, p: Params) -> plan.Plan:
    """observe + decide: reads files and the catalog, takes no lock, never starts Odoo."""
    job.bind(template=p.template)
    code = observe_code(job, p, start_odoo=False)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        return decide(observe(conn, p, code), p)


# --------------------------------------------------------------------------- apply


def run(job: runner.Job, p: Params) -> Done:
    job.bind(template=p.template)
    job.step("fingerprint")
    code = observe_code(job, p, start_odoo=True)
    with pg.connection(dsn=p.pg_dsn, deadline=job.deadline) as conn:
        # One build per template at a time; clones are not blocked by this lock.
        with locks.advisory(locks.template_build(p.template), deadline=job.deadline, dsn=p.pg_dsn):
            job.step("observe")
            state = observe(conn, p, code)
            steps = decide(state, p)
            steps.require_unblocked(**(steps.details or {}))
            return _Apply(job, conn, p, state).apply(steps)


class _Apply:
    """The actions of the plan's steps, sharing the connection and what earlier steps found."""

    def __init__(
        self, job: runner.Job, conn: psycopg.Connection[Any], p: Params, state: State
    ) -> None:
        assert state.code.binary is not None  # a run reads it, by `odoo --version` if need be
        self.job, self.conn, self.p, self.state = job, conn, p, state
        self.data = marker_data(p, state.code, state.code.binary)
        self.done: odoo.Completed | None = None
        self.cleaned: list[str] = []

    def apply(self, steps: plan.Plan) -> Done:
        if "freeze" in steps and "odoo" not in steps:
            self.job.log.info("resuming a verified build", database=self.p.build_db)
        plan.apply(
            self.job,
            steps,
            {
                "prepare": self.prepare,
                "odoo": self.install,
                "verify": self.verify,
                "freeze": self.freeze,
                "swap": self.swap,
                "swap-filestore": self.swap_filestore,
                "cleanup": self.cleanup,
            },
        )
        details = dict(steps.details or {})
        if not steps.steps:
            return Done("unchanged", details)
        if steps.names == ("cleanup",):
            return Done("updated", {**details, "cleaned": self.cleaned})
        if "swap-filestore" in steps:
            return Done("updated", {**details, "resumed": "filestore swap"})
        return Done("updated" if self.state.live.exists else "created", details)

    def prepare(self, _step: plan.Step) -> None:
        _drop_database(self.conn, self.p.build_db)
        filestore.discard(self.p.fs(self.p.build_db))

    def install(self, _step: plan.Step) -> None:
        p = self.p
        inv = odoo.Invocation(
            db=p.build_db, install=p.wanted_modules, data_dir=Path(p.data_dir),
            addons_path=p.addons_path,
        )  # fmt: skip
        self.done = odoo.run(
            p.odoo_bin, p.version, inv, dsn=p.pg_dsn, base_config=p.odoo_config,
            deadline=self.job.deadline,
        )  # fmt: skip

    def verify(self, _step: plan.Step) -> None:
        """Odoo's exit code is never trusted alone: the module states and the filestore are."""
        p, conn, done = self.p, self.conn, self.done
        assert done is not None  # the odoo step comes first in every plan that verifies
        problems = [] if done.returncode == 0 or done.stopped is not None else [done.failure()]
        states = self._module_states()
        problems += odoo.check_modules(states, p.wanted_modules)
        if not problems:
            # Tenants copy this filestore trusting names; check its content once, here.
            report = filestore.verify(p.fs(p.build_db))
            problems += [f"filestore {rel}: content does not match its name" for rel in report.bad]
        if problems:
            self._discard_failed(done, problems)
        clone.restrict_connect(conn, p.build_db)  # CONNECT for the building role only
        filestore.write_mark(p.fs(p.build_db), {"fingerprint": self.data["fingerprint"]})
        marker.write(conn, p.build_db, marker.Marker(marker.Kind.TEMPLATE, "verified", self.data))
        self.job.log.info("build verified", modules={m: states[m] for m in p.wanted_modules})

    def _module_states(self) -> dict[str, str]:
        if not pg.database_exists(self.conn, self.p.build_db):
            return {}
        with pg.connection(self.p.build_db, dsn=self.p.pg_dsn, deadline=self.job.deadline) as c:
            try:
                return odoo.module_states(c)
            except psycopg.errors.UndefinedTable:
                return {}

    def _discard_failed(self, done: odoo.Completed, problems: list[str]) -> None:
        """Drop the failed build (the live template is untouched) and say why: 75 or 65."""
        _drop_database(self.conn, self.p.build_db)
        filestore.discard(self.p.fs(self.p.build_db))
        said = "; ".join(problems)[:600]
        if done.stopped is not None:  # stopped before it finished: a retry may well succeed
            raise TransientError(
                f"{done.failure()} before the build finished: {said}", build=self.p.build_db
            )
        raise ConflictError(
            f"template build failed, live template untouched: {said}", problems=problems[:20]
        )

    def freeze(self, _step: plan.Step) -> None:
        build = self.p.build_db
        pg.terminate_sessions(self.conn, build)
        self.conn.execute(
            sql.SQL("ALTER DATABASE {} WITH is_template true ALLOW_CONNECTIONS false").format(
                sql.Identifier(build)
            )
        )
        pg.terminate_sessions(self.conn, build)  # allow_connections does not end existing sessions

    def swap(self, _step: plan.Step) -> None:
        with self._template_lock():
            self._swap_database()
            self._swap_filestore()

    def swap_filestore(self, _step: plan.Step) -> None:
        with self._template_lock():
            self._swap_filestore()

    def cleanup(self, _step: plan.Step) -> None:
        p = self.p
        for db in (p.old_db, p.build_db):
            if _drop_database(self.conn, db):
                self.cleaned.append(db)
            if filestore.discard(p.fs(db)):
                self.cleaned.append(str(p.fs(db)))

    def _template_lock(self) -> Any:
        """Clones hold it shared: the swap waits for clones in progress, new ones wait for it."""
        return clone.template_lock(
            self.p.template, deadline=self.job.deadline, shared=False, dsn=self.p.pg_dsn
        )

    def _swap_database(self) -> None:
        """live → __old and __build → live, with the live marker, in one transaction."""
        conn, p, existed = self.conn, self.p, self.state.live.exists
        _drop_database(conn, p.old_db)
        if existed:
            pg.terminate_sessions(conn, p.template)
        with conn.transaction():
            if existed:
                pg.rename_database(conn, p.template, p.old_db)
            pg.rename_database(conn, p.build_db, p.template)
            marker.write(
                conn, p.template, marker.Marker(marker.Kind.TEMPLATE, "complete", self.data)
            )
        self.job.log.info("template database swapped in", database=p.template)

    def _swap_filestore(self) -> None:
        """Move the build's filestore into place (the previous one goes to __old)."""
        p = self.p
        live, build, old = p.fs(p.template), p.fs(p.build_db), p.fs(p.old_db)
        if live.exists():
            filestore.discard(old)
            os.rename(live, old)
        os.rename(build, live)
        self.job.log.info("template filestore swapped in", path=str(live))


def _drop_database(conn: psycopg.Connection[Any], name: str) -> bool:
    if not pg.database_exists(conn, name):
        return False
    ident = sql.Identifier(name)
    conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
    pg.drop_database(conn, name)
    return True


template_build = params.command(
    "template-build",
    Params,
    run,
    preview,
    "Build the template database of a TemplateSnapshot aside and swap it in.",
)
