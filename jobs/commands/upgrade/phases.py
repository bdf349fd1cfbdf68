"""The snapshot-then-upgrade phases of `plana-job upgrade` (OpenUpgrade, one major per run).

Where a tenant stands is read from three `COMMENT ON DATABASE` markers (`jobs.ops.marker`):

- the live tenant `{db}` (kind "tenant", written by tenant-db): while an upgrade is under way its
  data carries `upgrading: {from, to, base, attempt}` (the tenant is frozen); after the cutover
  `odoo_version`, `upgraded_from` and `rollback_db`.
- the work copy `{db}__up{to}` (kind "upgrade-work"): the `phases` done, in order (each recorded
  once, alembic-like), the `prefixes` applied, and `running`: the pass under way. A pass found
  running was killed midway, and a failed pass leaves state "failed": OpenUpgrade migrations
  cannot be resumed, so such a copy is never passed again; the next `snapshot` drops it and
  clones a fresh one from the frozen live database.
- the rollback copy `{db}__rb{from}` (kind "rollback"): the old live database after the cutover.

`upgrade same-major` (jobs.commands.upgrade.same_major) uses the same names, markers and swap with
from = to: `{db}__up{V}` and `{db}__rb{V}`; `rollback` and `status` take from = to for it.

Suffixes are at most 6 bytes, so with a 40-byte subdomain and the default base domain every
name stays within PostgreSQL's 63 bytes; longer base domains are refused (64) up front.
Every phase runs under the tenant's advisory lock "tenant:{db}" (the one tenant-db takes).
"""

from __future__ import annotations

import importlib.resources
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from jobs.adapters import filestore, odoo, pg
from jobs.core import naming, retry, runner
from jobs.core.errors import ConfigError, ConflictError, TransientError
from jobs.core.result import Done
from jobs.ops import marker
from jobs.ops.clone import create_clone, restrict_connect  # a clone is made as tenant-db makes it

PHASES = ("snapshot", "source-pass", "prefix", "target-pass", "cutover")
FRAMEWORK = "openupgrade_framework"
SCRIPTS_ADDON = "openupgrade_scripts"
OPENUPGRADE_LOAD = ("base", "web", FRAMEWORK)
MAX_DB_NAME = 63
# What Odoo 17/18 log when a `--load` module cannot be imported (then they go on, exit 0):
# CRITICAL "Couldn't load module X" (odoo.modules.module), ERROR "Failed to load server-wide
# module `X`." with the ModuleNotFoundError (odoo.service.server). OpenUpgrade's framework logs
# nothing when it loads, so its absence is the only thing to see.
_FRAMEWORK_FAILED = re.compile(
    rf"Failed to load server-wide module `{FRAMEWORK}`|Couldn't load module {FRAMEWORK}\b"
)


@dataclass(frozen=True)
class Spec:
    """A validated TenantUpgrade: tenant, hop, and where this phase's filestores live."""

    tenant: naming.Tenant
    from_version: int
    to_version: int
    data_dir: Path
    dsn: str | None

    @property
    def db(self) -> str:
        return self.tenant.db_name

    @property
    def work(self) -> str:
        return f"{self.db}__up{self.to_version}"

    @property
    def rollback(self) -> str:
        return f"{self.db}__rb{self.from_version}"

    def fs(self, name: str) -> Path:
        return naming.filestore(name, self.data_dir)

    def hop(self) -> dict[str, Any]:
        return {
            "subdomain": self.tenant.subdomain,
            "from": self.from_version,
            "to": self.to_version,
        }


@dataclass(frozen=True)
class Side:
    """The Odoo of one side of the hop: its executable and its config file.

    `config` None is `$ODOO_RC` (the image's config), as in `jobs.adapters.odoo`; `upgrade run`
    gives each side its own, so the fromVersion binary never sees the toVersion addons.
    """

    odoo_bin: str
    config: str | None = None

    def env(self) -> dict[str, str] | None:
        """The child's environment: `$ODOO_RC` names this side's config too (Odoo itself reads
        only `-c` then, but a wrapper script may read the variable)."""
        return None if self.config is None else {**os.environ, "ODOO_RC": self.config}


def scripts_addons_dir(upgrade_path: str) -> Path:
    """The addons-path entry holding the openupgrade_scripts addon of `upgrade_path`.

    `--upgrade-path` is `…/openupgrade_scripts/scripts`; the scripts import
    `odoo.addons.openupgrade_scripts`, so the addon's parent must be an addons path (Odoo
    normalises its paths with realpath: so does this).
    """
    return Path(upgrade_path).resolve().parent.parent


def addons_path_of(side: Side) -> list[str]:
    """The entries of the side config's addons_path (empty: Odoo's defaults apply)."""
    value = odoo.base_option("addons_path", side.config) or ""
    return [entry.strip() for entry in value.split(",") if entry.strip()]


def pass_addons_path(side: Side, upgrade_path: str | None) -> str | None:
    """`--addons-path` of a pass: None keeps the config's; the target pass gets the config's
    entries plus the openupgrade_scripts addon's directory (a command-line `--addons-path`
    replaces the config's addons_path, hence the composition)."""
    if upgrade_path is None:
        return None
    entries = addons_path_of(side)
    extra = scripts_addons_dir(upgrade_path)
    if not any(Path(os.path.expanduser(entry)).resolve() == extra for entry in entries):
        entries.append(str(extra))
    return ",".join(entries)


@dataclass
class Ctx:
    job: runner.Job
    conn: psycopg.Connection[Any]
    spec: Spec


# --------------------------------------------------------------------------- observing


def live_marker(ctx: Ctx) -> marker.Marker:
    """The live tenant's marker; 65 when the database is missing or not ours."""
    db = ctx.spec.db
    if not pg.database_exists(ctx.conn, db):
        raise ConflictError(f"tenant database {db} does not exist", database=db)
    return marker.require_ours(
        ctx.conn, db, marker.Kind.TENANT, states=("complete",),
        match={"subdomain": ctx.spec.tenant.subdomain}, what="is not a plana-jobs tenant",
    )  # fmt: skip


def upgraded(ctx: Ctx, mark: marker.Marker) -> bool:
    return mark.data.get("odoo_version") == ctx.spec.to_version and "upgrading" not in mark.data


def allows_connections(conn: psycopg.Connection[Any], db: str) -> bool:
    row = conn.execute("SELECT datallowconn FROM pg_database WHERE datname = %s", (db,)).fetchone()
    return bool(row and row[0])


def owner_of(conn: psycopg.Connection[Any], db: str) -> str:
    row = conn.execute(
        "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (db,)
    ).fetchone()
    assert row is not None
    return str(row[0])


def base_version(ctx: Ctx, db: str) -> str:
    """`latest_version` of the installed `base` module of `db` ("" when there is none)."""
    with pg.connection(db, dsn=ctx.spec.dsn, deadline=ctx.job.deadline) as conn:
        if not odoo.has_module_table(conn):
            raise ConflictError(f"database {db} is not an Odoo database", database=db)
        return odoo.base_version(conn) or ""


def work_marker(ctx: Ctx) -> marker.Marker | None:
    """The work copy's marker when it is ours and still passable, else None."""
    mark = marker.ours(ctx.conn, ctx.spec.work, marker.Kind.UPGRADE_WORK, match=ctx.spec.hop())
    if mark is None or mark.state in ("failed", "rolled-back") or mark.data.get("running"):
        return None
    return mark


def require_work(ctx: Ctx, after: str) -> marker.Marker:
    """The work copy, which must have completed phase `after` (65 otherwise)."""
    work = ctx.spec.work
    mark = work_marker(ctx) if pg.database_exists(ctx.conn, work) else None
    if mark is None or after not in mark.data.get("phases", []):
        raise ConflictError(
            f"work copy {work} is missing, spoilt or not past {after}: run `upgrade snapshot` "
            "(a fresh copy) and the phases after it",
            database=work,
        )
    return mark


def check_binary(odoo_bin: str, version: int, deadline: retry.Deadline) -> str:
    """The binary's version line; 78 when the image holds another major version."""
    text = odoo.binary_version(odoo_bin, deadline=deadline)
    if odoo.major(text) != version:
        raise ConfigError(f"{odoo_bin} is {text!r}, not Odoo {version}.0", odoo_bin=odoo_bin)
    return text


def set_allow_connections(conn: psycopg.Connection[Any], db: str, allow: bool) -> None:
    conn.execute(
        sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(
            sql.Identifier(db), sql.Literal(allow)
        )
    )


# --------------------------------------------------------------------------- phases


def snapshot(ctx: Ctx, fresh: bool) -> Done:
    """Freeze the live tenant and, when `fresh` (the plan's choice), clone a new work copy.

    The plan (`plans.decide`) has checked the tenant is ours, unfrozen or frozen by this hop,
    and its base at fromVersion; what was recorded is done again only where it is missing.
    """
    conn, s, log = ctx.conn, ctx.spec, ctx.job.log
    live = live_marker(ctx)
    up = live.data.get("upgrading")
    if not isinstance(up, dict):
        base = base_version(ctx, s.db)
        drop_superseded_rollback(ctx)
        up = {"from": s.from_version, "to": s.to_version, "base": base, "attempt": 0}
        live.data["upgrading"] = up
        marker.write(conn, s.db, live)  # recorded before the freeze: a re-run completes it
    if allows_connections(conn, s.db):
        set_allow_connections(conn, s.db, False)
    ended = pg.terminate_sessions(conn, s.db)
    log.info("tenant frozen", database=s.db, sessions_ended=ended)
    if not fresh:
        return Done("updated", {"phase": "snapshot", **up})
    if pg.database_exists(conn, s.work):
        # Failed, killed midway, rolled back or unrecorded: never passed again. Start afresh.
        log.info("dropping the spoilt work copy", database=s.work)
        pg.drop_database(conn, s.work)
    filestore.discard(s.fs(s.work))
    up["attempt"] = int(up.get("attempt", 0)) + 1
    marker.write(conn, s.db, live)
    owner = owner_of(conn, s.db)
    create_clone(conn, s.db, s.work, owner=owner, deadline=ctx.job.deadline)
    ctx.job.check_locks()  # a long copy: the lock may have been lost meanwhile
    restrict_connect(conn, s.work, owner)
    body = {**s.hop(), "attempt": up["attempt"], "phases": ["snapshot"], "prefixes": []}
    marker.write(conn, s.work, marker.Marker(marker.Kind.UPGRADE_WORK, "snapshot", body))
    log.info("work copy cloned", database=s.work, attempt=up["attempt"])
    return Done("created", {"phase": "snapshot", "work_db": s.work, **up})


def rollback_copy(ctx: Ctx, db: str, frm: int, to: int) -> marker.Marker | None:
    """The marker of `db` when it is this tenant's rollback copy of the hop `frm` → `to`."""
    return marker.ours(
        ctx.conn, db, marker.Kind.ROLLBACK,
        match={"subdomain": ctx.spec.tenant.subdomain, "from": frm, "to": to},
    )  # fmt: skip


def drop_superseded_rollback(ctx: Ctx) -> bool:
    """Drop a same-major update's rollback copy `{db}__rb{from}` (and its filestore here).

    A major upgrade starting from the frozen live database makes that the restore point, and
    its cutover needs the name; anything else under the name is left for the cutover to refuse.
    """
    s = ctx.spec
    v = s.from_version
    if rollback_copy(ctx, s.rollback, v, v) is None:
        return False
    ctx.job.log.info("dropping the same-major rollback copy", database=s.rollback)
    filestore.discard(s.fs(s.rollback))  # first: files are never left without their database
    pg.drop_database(ctx.conn, s.rollback)
    return True


def _record(ctx: Ctx, mark: marker.Marker) -> None:
    marker.write(ctx.conn, ctx.spec.work, mark)


def _seed_filestore(ctx: Ctx) -> None:
    """The work copy's attachments must be readable where Odoo looks: filestore/{work}.

    Seeded from the live filestore when this data dir has it (one volume for both versions, or
    the target volume once `filestore-copy --db {db}` brought the live files there: a re-run
    of that copy is then safe, unlike one of `{work}`). Neither: refused (65), since
    a pass or a cutover without the files would leave attachments pointing at nothing.
    """
    s = ctx.spec
    src = s.fs(s.db)
    if filestore.present(src):  # a symlinked live filestore is refused (65), never followed
        stats = filestore.copy_tree(src, s.fs(s.work), kind="upgrade")
        ctx.job.log.info("work filestore seeded", **stats.as_dict())
    elif not s.fs(s.work).is_dir():
        raise ConflictError(
            f"no filestore for {s.work} under {s.data_dir}: copy the live filestore there first"
            f" (filestore-copy --db {s.db}); the pass seeds {s.work} from it",
            data_dir=str(s.data_dir),
        )


def run_pass(
    ctx: Ctx,
    phase: str,
    after: str,
    side: Side,
    version: int,
    upgrade_path: str | None = None,
) -> Done:
    """One OpenUpgrade pass on the work copy; the work copy is spoilt if it does not verify."""
    s, log = ctx.spec, ctx.job.log
    mark = require_work(ctx, after)
    phases: list[str] = list(mark.data.get("phases", []))
    check_binary(side.odoo_bin, version, ctx.job.deadline)
    addons = pass_addons_path(side, upgrade_path)  # before `running`: an unreadable config is 78
    _seed_filestore(ctx)
    mark.data["running"] = phase
    _record(ctx, mark)  # from here on, an interruption spoils the copy
    inv = odoo.Invocation(
        db=s.work,
        update=["all"],
        load=OPENUPGRADE_LOAD,
        upgrade_path=upgrade_path,
        addons_path=addons,
        data_dir=s.data_dir,
    )
    no_framework: list[str] = []

    def watch(line: str) -> None:
        if _FRAMEWORK_FAILED.search(line):
            no_framework.append(line)

    done = odoo.run(
        side.odoo_bin,
        version,
        inv,
        dsn=s.dsn,
        base_config=side.config,
        deadline=ctx.job.deadline,
        env=side.env(),
        watch=watch,
    )
    problems = [f"{FRAMEWORK} did not load"] if no_framework else []
    if done.returncode != 0 and not done.stopped:
        problems.append(done.failure())
    problems += verify(ctx, s.work, version)
    ctx.job.check_locks()  # the pass may have run for long: record it only while still ours
    if problems and done.stopped is not None:
        # Stopped midway: the copy stays marked `running` (spoilt), the failure is transient.
        raise TransientError(
            f"{phase} on {s.work}: {done.failure()}: {'; '.join(problems[:5])}"
            " (the next attempt starts from a fresh copy)",
            phase=phase,
        )
    if problems:
        mark.state = "failed"
        mark.data["failed"] = {"phase": phase, "problems": problems[:10]}
        _record(ctx, mark)
        if no_framework:
            # Odoo went on without it, exit 0 and all: a plain `-u all`, not a migration.
            raise ConfigError(
                f"{phase}: {side.odoo_bin} could not load {FRAMEWORK} (--load): it is on none "
                f"of its addons paths ({_addons_where(side, addons)}), or does not import (e.g. "
                "openupgradelib missing); put OpenUpgrade's directory on the config's "
                "addons_path (the next attempt starts from a fresh copy)",
                phase=phase,
                odoo_bin=side.odoo_bin,
            )
        raise ConflictError(
            f"{phase} on {s.work} failed: {'; '.join(problems[:5])}"
            " (the next attempt starts from a fresh copy)",
            phase=phase,
        )
    mark.data.pop("running", None)
    mark.data["phases"] = [*phases, phase]
    mark.state = phase
    _record(ctx, mark)
    log.info("pass done", phase=phase, duration_s=done.duration_s)
    return Done("updated", {"phase": phase, "phases": mark.data["phases"]})


def _addons_where(side: Side, addons: str | None) -> str:
    """Where that Odoo looked for addons, in words, for an error message."""
    config = side.config or os.environ.get("ODOO_RC") or "no config file"
    if addons is not None:
        return f"--addons-path={addons}"
    entries = addons_path_of(side)
    if entries:
        return f"addons_path = {','.join(entries)} in {config}"
    return f"Odoo's default addons only: no addons_path in {config}"


def verify(ctx: Ctx, db: str, version: int) -> list[str]:
    """What Odoo really did: base at `version`, nothing left to install/upgrade/remove."""
    try:
        with pg.connection(db, dsn=ctx.spec.dsn, deadline=ctx.job.deadline) as conn:
            states = odoo.module_states(conn)
            row = conn.execute(
                "SELECT latest_version FROM ir_module_module WHERE name = 'base'"
            ).fetchone()
    except psycopg.errors.UndefinedTable:
        return [f"{db} has no module table"]
    problems = odoo.check_modules(states, ["base"])
    base = str(row[0]) if row and row[0] else ""
    if odoo.version_major(base) != version:
        problems.append(f"base is at {base or 'nothing'}, not {version}.0")
    return problems


def prefix_files(from_v: int, to_v: int) -> list[tuple[str, str]]:
    """(name, SQL) of sql/upgrade/{from}-{to}/*.sql, in name order."""
    folder = importlib.resources.files("jobs.sql").joinpath("upgrade").joinpath(f"{from_v}-{to_v}")
    if not folder.is_dir():
        return []
    files = sorted((p for p in folder.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    return [(p.name, p.read_text(encoding="utf-8")) for p in files]


def prefix(ctx: Ctx) -> Done:
    """Apply this hop's SQL pre-fixes to the work copy, each once, with its record."""
    s = ctx.spec
    mark = require_work(ctx, "source-pass")
    phases: list[str] = list(mark.data.get("phases", []))
    applied: list[str] = list(mark.data.get("prefixes", []))
    with pg.connection(s.work, dsn=s.dsn, deadline=ctx.job.deadline) as conn:
        for name, text in prefix_files(s.from_version, s.to_version):
            if name in applied:
                continue
            # The fix and its record commit together (COMMENT ON DATABASE is transactional):
            # a kill leaves it either applied and recorded, or neither.
            with conn.transaction():
                cur = conn.execute(text)  # a reviewed file shipped with the image, no values
                applied.append(name)
                mark.data["prefixes"] = applied
                marker.write(conn, s.work, mark)
            ctx.job.log.info("pre-fix applied", file=name, rows=cur.rowcount)
    mark.data["phases"] = [*phases, "prefix"]
    mark.state = "prefix"
    _record(ctx, mark)
    return Done("updated", {"phase": "prefix", "prefixes": applied})


def _move(src: Path, dst: Path) -> None:
    if dst.exists():
        filestore.discard(dst)  # a stale leftover of an earlier cycle
    os.rename(src, dst)


def _promote(incoming: Path, live: Path, aside: Path) -> bool:
    """Live filestore aside, `incoming` into its place; False when there is nothing to bring in."""
    if not filestore.present(incoming):  # a symlink is refused (65), never moved into place
        return False
    if filestore.present(live):
        _move(live, aside)
    os.rename(incoming, live)
    return True


def cutover_filestore(ctx: Ctx) -> bool:
    """filestore/{db} → {rollback}, filestore/{work} → {db}; resumable after a crash."""
    s = ctx.spec
    return _promote(incoming=s.fs(s.work), live=s.fs(s.db), aside=s.fs(s.rollback))


def rollback_filestore(ctx: Ctx) -> bool:
    """The reverse of `cutover_filestore`, while the rollback filestore exists."""
    s = ctx.spec
    return _promote(incoming=s.fs(s.rollback), live=s.fs(s.db), aside=s.fs(s.work))


def finish_swap_filestore(ctx: Ctx, live: marker.Marker) -> bool:
    """The filestore renames of the swap that made the live database, if a kill left them.

    A cutover into `to` and a same-major update at `to` both swap `{db}__up{to}` in and name
    their rollback copy in the live marker; their renames are done while the work name holds
    no database (it became the live one), never otherwise: a work filestore beside a work
    database is that copy's own.
    """
    s = ctx.spec
    made = live.data.get("rollback_db")
    if (
        made not in (f"{s.db}__rb{s.to_version - 1}", f"{s.db}__rb{s.to_version}")
        or live.data.get("odoo_version") != s.to_version
        or "upgrading" in live.data
        or pg.database_exists(ctx.conn, s.work)
    ):
        return False
    incoming, current, aside = s.fs(s.work), s.fs(s.db), s.fs(str(made))
    if filestore.present(current) and filestore.present(aside) and filestore.present(incoming):
        # Both renames happened: this work filestore came later (e.g. copied again by a
        # re-run filestore-copy) and is stale; publishing it would put the pre-upgrade files
        # in place and overwrite the rollback copy's.
        ctx.job.log.warning("stale work filestore left alone", filestore=str(incoming))
        return False
    return _promote(incoming=incoming, live=current, aside=aside)


def finish_rollback_filestore(ctx: Ctx) -> bool:
    """The filestore renames of a rollback killed after its swap (the copy marked rolled-back,
    the rollback name free), never otherwise: a rollback filestore beside its database is the
    rollback copy's own."""
    s = ctx.spec
    if pg.database_exists(ctx.conn, s.rollback) or not pg.database_exists(ctx.conn, s.work):
        return False
    if marker.ours(ctx.conn, s.work, marker.Kind.UPGRADE_WORK, states=("rolled-back",),
                   match=s.hop()) is None:  # fmt: skip
        return False
    return rollback_filestore(ctx)


def swap(
    ctx: Ctx, renames: list[tuple[str, str]], marks: dict[str, marker.Marker], allow: str
) -> None:
    """Renames, markers and unfreezing in ONE transaction: all of it happens, or none."""
    conn = ctx.conn

    def attempt() -> None:
        for old, _ in renames:
            pg.terminate_sessions(conn, old)
        with conn.transaction():
            for old, new in renames:
                pg.rename_database(conn, old, new)
            set_allow_connections(conn, allow, True)
            for db, mark in marks.items():
                marker.write(conn, db, mark)

    retry.call(attempt, what="swap databases", deadline=ctx.job.deadline, transient=pg.transient)


def cutover(ctx: Ctx) -> Done:
    """Live → rollback name, work copy → live name, connections allowed, markers updated."""
    s, conn = ctx.spec, ctx.conn
    live = live_marker(ctx)
    mark = require_work(ctx, "target-pass")
    _seed_filestore(ctx)  # refuses to publish a database without its files
    if pg.database_exists(conn, s.rollback):
        raise ConflictError(f"rollback name {s.rollback} is taken: left untouched")
    tenant = {k: v for k, v in live.data.items() if k != "upgrading"}
    up = live.data.get("upgrading") or {}
    history = {
        "attempt": mark.data.get("attempt"),
        "phases": [*mark.data.get("phases", []), "cutover"],
        "prefixes": mark.data.get("prefixes", []),
        "base_before": up.get("base") if isinstance(up, dict) else None,
    }
    new_live = marker.Marker(
        marker.Kind.TENANT,
        "complete",
        {
            **tenant,
            "odoo_version": s.to_version,
            "upgraded_from": s.from_version,
            "rollback_db": s.rollback,
            "upgrade": history,
        },
    )
    old_live = marker.Marker(marker.Kind.ROLLBACK, "complete", {**s.hop(), "tenant": tenant})
    ctx.job.check_locks()  # after seeding the filestore (a copy): still ours before the swap
    swap(ctx, [(s.db, s.rollback), (s.work, s.db)], {s.db: new_live, s.rollback: old_live}, s.db)
    ctx.job.log.info("cut over", database=s.db, rollback_db=s.rollback)
    cutover_filestore(ctx)
    return Done("updated", {"phase": "cutover", "rollback_db": s.rollback, **history})


def finish_cutover(ctx: Ctx) -> Done:
    """The filestore renames of a cutover a kill left after its swap (the plan saw them)."""
    moved = finish_swap_filestore(ctx, live_marker(ctx))
    return Done("updated" if moved else "unchanged", {"phase": "cutover", "state": "upgraded"})


def rollback(ctx: Ctx) -> Done:
    """Undo a cutover while the rollback copy exists, or unfreeze an unfinished upgrade."""
    s, conn = ctx.spec, ctx.conn
    live = live_marker(ctx)
    details: dict[str, Any] = {"phase": "rollback"}
    changed = False
    # The plan (`plans.decide_rollback`) refused another hop's upgrade or rollback copy.
    old = rollback_copy(ctx, s.rollback, s.from_version, s.to_version)
    if old is not None:
        if pg.database_exists(conn, s.work):
            pg.drop_database(conn, s.work)  # only an abandoned copy can hold the name now
        restored = marker.Marker(marker.Kind.TENANT, "complete", dict(old.data.get("tenant", {})))
        upgraded_mark = marker.Marker(
            marker.Kind.UPGRADE_WORK, "rolled-back", {**s.hop(), "was": live.data}
        )
        swap(
            ctx, [(s.db, s.work), (s.rollback, s.db)], {s.db: restored, s.work: upgraded_mark}, s.db
        )
        ctx.job.log.info("rolled back", database=s.db, upgraded_copy=s.work)
        details["upgraded_copy"] = s.work
        changed = True
    elif "upgrading" in live.data:
        live.data.pop("upgrading")
        with conn.transaction():
            set_allow_connections(conn, s.db, True)
            marker.write(conn, s.db, live)
        mark = work_marker(ctx) if pg.database_exists(conn, s.work) else None
        if mark is not None:
            mark.state = "rolled-back"
            _record(ctx, mark)
        ctx.job.log.info("unfrozen without cutover", database=s.db)
        changed = True
    changed = finish_rollback_filestore(ctx) or changed
    return Done("updated" if changed else "unchanged", details)


def status(ctx: Ctx, next_phase: str | None) -> Done:
    """Where the tenant stands (read-only); `next_phase` is the plan's first step."""
    s, conn = ctx.spec, ctx.conn
    live = live_marker(ctx)
    info: dict[str, Any] = {
        "phase": "status",
        "database": s.db,
        "accepts_connections": allows_connections(conn, s.db),
        "odoo_version": live.data.get("odoo_version"),
    }
    if upgraded(ctx, live):
        info["state"] = "upgraded"
        info["rollback_available"] = pg.database_exists(conn, s.rollback)
        return Done("unchanged", info)
    if "upgrading" not in live.data:
        info["state"] = "not-started"
        return Done("unchanged", info)
    info["upgrading"] = live.data["upgrading"]
    raw = marker.read(conn, s.work) if pg.database_exists(conn, s.work) else None
    if raw is None:
        info["state"] = "frozen"
    else:
        done = list(raw.data.get("phases", []))
        info.update(state=raw.state, phases=done, prefixes=raw.data.get("prefixes", []))
        if raw.data.get("running"):
            info["interrupted"] = raw.data["running"]
    info["next"] = next_phase
    return Done("unchanged", info)
