"""`plana-job upgrade same-major`: `odoo -u all` on a work copy of the frozen tenant, swapped in.

Odoo commits after each module it updates, so a `-u all` that fails at a later module leaves
the database it ran on half updated. Same-major therefore never runs Odoo on the live tenant;
in one run, under the tenant's lock, it works like the snapshot-then-upgrade chain, with its
names, markers and swap (`jobs.commands.upgrade.phases` with from = to = V). Which steps run
comes from `plans.decide_same_major`; each is one function here:

0. finish-filestore: only after a kill between a swap (or a rollback's) and its renames.
1. observe (the plan): the live marker records the version and addons revision last updated
   to; the same again, with every module installed and base at V, is `unchanged` (Odoo does not
   run).
2. same-major (the freeze): `upgrading: {from: V, to: V, strategy, revision, base, attempt}` in
   the live marker, then `ALLOW_CONNECTIONS false` and its sessions ended.
3. clone: `{db}__up{V}` (`CREATE DATABASE … TEMPLATE`, CONNECT only for the owner, marker kind
   upgrade-work) and its own filestore, copied from the live one.
4. odoo: `odoo -d {db}__up{V} -u all` (`running` recorded before it starts), then verified
   (`odoo.check_modules`, base at V); the copy's marker becomes `verified`.
5. swap: in ONE transaction live → `{db}__rb{V}` (the rollback copy, kind rollback, holding the
   old tenant marker), the copy → `{db}`, connections allowed, both markers; then the
   filestores likewise. A previous update's rollback copy is dropped just before: one per
   tenant and version. `upgrade rollback --from-version V --to-version V` swaps it back.

A failure up to the swap (Odoo, the verification, any error while the lock is still ours)
drops the copy and its filestore and unfreezes the tenant, untouched. A kill leaves a state the
next run resumes: frozen by this strategy → a verified copy of the same revision is swapped in,
any other is dropped and cloned afresh (a killed Odoo's copy is never trusted); swapped but the
filestores not yet renamed → renamed first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import psycopg

from jobs.adapters import filestore, odoo, pg
from jobs.adapters.odoo import addons_digest
from jobs.commands.upgrade import phases as ph
from jobs.core import plan, redact
from jobs.core.errors import ConflictError, JobError, TransientError
from jobs.core.result import Done
from jobs.ops import marker
from jobs.ops.clone import create_clone, restrict_connect

STRATEGY = "same-major"
VERIFIED = "verified"


@dataclass
class Run:
    """What the steps of one same-major run share: the image and the markers as they go."""

    ctx: ph.Ctx
    odoo_bin: str
    odoo_config: str | None
    rev: str
    live: marker.Marker | None = None
    up: dict[str, Any] = field(default_factory=dict)
    took: dict[str, Any] = field(default_factory=dict)
    swapped: dict[str, Any] = field(default_factory=dict)


def revision(ctx: ph.Ctx, odoo_bin: str, given: str | None, odoo_config: str | None) -> str:
    """The addons revision this image brings: `--addons-revision`, else read from the image
    (`odoo --version` and the code digest); 78 first when the binary is another version."""
    text = ph.check_binary(odoo_bin, ctx.spec.to_version, ctx.job.deadline)
    return given or _code_revision(ctx, odoo_bin, odoo_config, text)


def apply(r: Run, steps: plan.Plan) -> Done:
    """Run the planned steps; a failure before the swap drops the copy and unfreezes."""
    job = r.ctx.job
    details: dict[str, Any] = {"strategy": STRATEGY, "odoo_version": r.ctx.spec.to_version,
                               "revision": r.rev}  # fmt: skip
    actions = {"finish-filestore": _finish_filestore, "same-major": _freeze, "clone": _clone,
               "odoo": _odoo, "swap": _swap, "filestore": _filestore}  # fmt: skip
    for step in steps.steps:
        job.step(step.name)
        if step.name in ("same-major", "clone", "odoo"):
            try:
                actions[step.name](r)
            except Exception:
                _abandon(r.ctx)
                raise
        else:
            actions[step.name](r)
    if "swap" not in steps:
        return Done(
            "updated" if steps.steps else "unchanged",
            {**details, "updated_at": (steps.details or {}).get("updated_at")},
        )
    return Done("updated", {**details, **r.swapped, **r.took})


def _finish_filestore(r: Run) -> None:
    """A run (or a rollback) killed after its swap: its filestore renames come first."""
    ph.finish_rollback_filestore(r.ctx) or ph.finish_swap_filestore(r.ctx, ph.live_marker(r.ctx))


def _freeze(r: Run) -> None:
    """`upgrading` recorded (unless a killed run's is there), connections refused."""
    ctx, s, conn = r.ctx, r.ctx.spec, r.ctx.conn
    r.live = live = ph.live_marker(ctx)
    up = live.data.get("upgrading")
    if up is None:
        v = s.to_version
        up = {"from": v, "to": v, "strategy": STRATEGY, "revision": r.rev}
        up.update(base=ph.base_version(ctx, s.db), attempt=0)
        live.data["upgrading"] = up
        marker.write(conn, s.db, live)  # recorded before the freeze: a re-run resumes it
    r.up = up
    if ph.allows_connections(conn, s.db):
        ph.set_allow_connections(conn, s.db, False)
    ended = pg.terminate_sessions(conn, s.db)
    ctx.job.log.info("tenant frozen", database=s.db, sessions_ended=ended)


def _code_revision(ctx: ph.Ctx, odoo_bin: str, odoo_config: str | None, text: str) -> str:
    """Without --addons-revision: the `--version` line and the digest of the code of the
    tenant's installed modules on this image's addons path, so a new image whose modules' code
    changed runs `-u all` again although every 18 build prints `Odoo Server 18.0`."""
    installed = _installed(ctx)
    if installed is None:  # frozen and no copy to read: keep the revision this run recorded
        up = ph.live_marker(ctx).data.get("upgrading") or {}
        return str(up.get("revision") or text)
    path = addons_digest.search_path(odoo_bin, odoo_config=odoo_config)
    return f"{text}; code {addons_digest.digest(installed, path).value[:16]}"


def _installed(ctx: ph.Ctx) -> list[str] | None:
    """The tenant's installed modules: from the live database, or, while a killed run keeps
    it frozen (no connection is allowed, not even ours), from its work copy; None if neither."""
    s = ctx.spec
    for db in (s.db, s.work):
        if not ph.allows_connections(ctx.conn, db):  # also False for a missing database
            continue
        try:
            with pg.connection(db, dsn=s.dsn, deadline=ctx.job.deadline) as conn:
                states = odoo.module_states(conn)
        except psycopg.errors.UndefinedTable:
            continue
        # A killed run's copy has modules still `to upgrade`: they count as installed, so the
        # revision read from it equals the one read from the live database.
        kept = {"installed", "to upgrade", "to remove"}
        return sorted(name for name, state in states.items() if state in kept)
    return None


def _ours(ctx: ph.Ctx, up: Any) -> bool:
    """Whether the live marker's `upgrading` is this strategy's, at this version."""
    v = ctx.spec.to_version
    return (
        isinstance(up, dict)
        and up.get("strategy") == STRATEGY
        and (up.get("from"), up.get("to")) == (v, v)
    )


def _check_names(ctx: ph.Ctx) -> None:
    """The rollback name is free or holds this tenant's previous same-major rollback copy."""
    s, v = ctx.spec, ctx.spec.to_version
    if pg.database_exists(ctx.conn, s.rollback):
        if ph.rollback_copy(ctx, s.rollback, v, v) is None:
            raise ConflictError(f"rollback name {s.rollback} is taken: left untouched")
    elif filestore.present(s.fs(s.rollback)):
        # Without its database: the live filestore of a rollback killed before its renames.
        raise ConflictError(
            f"filestore {s.fs(s.rollback)} has no database: finish the rollback that left it "
            "(`upgrade rollback` again) first",
            database=s.db,
        )


def _drop_previous_rollback(ctx: ph.Ctx) -> None:
    """The previous update's rollback copy (checked ours), its filestore first: a kill between
    the two leaves a database without files, never files without their database."""
    s = ctx.spec
    if pg.database_exists(ctx.conn, s.rollback):
        _check_names(ctx)
        ctx.job.log.info("dropping the previous rollback copy", database=s.rollback)
        filestore.discard(s.fs(s.rollback))
        pg.drop_database(ctx.conn, s.rollback)


def _clone(r: Run) -> None:
    """A fresh `{db}__up{V}` of the frozen tenant, marked, with its own filestore."""
    ctx, s, conn, log = r.ctx, r.ctx.spec, r.ctx.conn, r.ctx.job.log
    assert r.live is not None  # the freeze came first
    if pg.database_exists(conn, s.work):
        # Being cloned, passed or killed midway, failed, rolled back, or of another revision:
        # never trusted. Start afresh from the frozen live database.
        log.info("dropping the work copy", database=s.work)
        pg.drop_database(conn, s.work)
    filestore.discard(s.fs(s.work))
    r.up["attempt"] = int(r.up.get("attempt", 0)) + 1
    r.up["revision"] = r.rev
    marker.write(conn, s.db, r.live)
    owner = ph.owner_of(conn, s.db)
    create_clone(conn, s.db, s.work, owner=owner, deadline=ctx.job.deadline)
    ctx.job.check_locks()  # a long copy: the lock may have been lost meanwhile
    restrict_connect(conn, s.work, owner)
    body = {**s.hop(), "strategy": STRATEGY, "revision": r.rev, "attempt": r.up["attempt"]}
    marker.write(conn, s.work, marker.Marker(marker.Kind.UPGRADE_WORK, "snapshot", body))
    if filestore.present(s.fs(s.db)):  # a symlinked live filestore is refused (65)
        stats = filestore.copy_tree(s.fs(s.db), s.fs(s.work), kind="upgrade")
        log.info("work filestore copied", **stats.as_dict())
    log.info("work copy cloned", database=s.work, attempt=r.up["attempt"])


def _odoo(r: Run) -> None:
    """`-u all` on the copy (`running` recorded first), verified, the copy marked verified."""
    ctx, s, conn = r.ctx, r.ctx.spec, r.ctx.conn
    mark = marker.require_ours(conn, s.work, marker.Kind.UPGRADE_WORK, match=s.hop())
    mark.data["running"] = STRATEGY
    marker.write(conn, s.work, mark)  # from here on, an interruption spoils the copy
    inv = odoo.Invocation(db=s.work, update=["all"], data_dir=s.data_dir)
    done = odoo.run(r.odoo_bin, s.to_version, inv, dsn=s.dsn, base_config=r.odoo_config,
                    deadline=ctx.job.deadline)  # fmt: skip
    problems = [] if done.returncode == 0 or done.stopped else [done.failure()]
    problems += ph.verify(ctx, s.work, s.to_version)
    ctx.job.check_locks()  # Odoo may have run for long: record it only while still ours
    if problems and done.stopped is not None:  # stopped before it finished: retry
        raise TransientError(
            f"-u all on a copy of {s.db}: {done.failure()}: {'; '.join(problems[:5])}"
            " (the tenant is left as it was)"
        )
    if problems:
        raise ConflictError(
            f"-u all on a copy of {s.db} failed: {'; '.join(problems[:5])}"
            " (the tenant is left as it was)",
        )
    mark.data.pop("running")
    mark.state = VERIFIED
    marker.write(conn, s.work, mark)
    r.took = {"duration_s_odoo": done.duration_s}


def _swap(r: Run) -> None:
    """The previous rollback copy dropped; then live → rollback copy, work copy → live, in one
    transaction. From the drop on the copy is verified: a failure after it leaves the tenant
    frozen with it, and the retry swaps it in."""
    ctx, s = r.ctx, r.ctx.spec
    try:
        _drop_previous_rollback(ctx)
    except Exception:
        _abandon(ctx)
        raise
    assert r.live is not None  # the freeze came first
    tenant = {k: v for k, v in r.live.data.items() if k != "upgrading"}
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    history = {
        "attempt": r.up.get("attempt"),
        "base_before": r.up.get("base"),
        "revision_before": tenant.get("addons_revision"),
    }
    new_live = marker.Marker(
        marker.Kind.TENANT,
        "complete",
        {
            **tenant,
            "odoo_version": s.to_version,
            "addons_revision": r.rev,
            "updated_at": now,
            "rollback_db": s.rollback,
            "update": history,
        },
    )
    old_live = marker.Marker(
        marker.Kind.ROLLBACK, "complete", {**s.hop(), "strategy": STRATEGY, "tenant": tenant}
    )
    ctx.job.check_locks()
    ph.swap(ctx, [(s.db, s.rollback), (s.work, s.db)], {s.db: new_live, s.rollback: old_live}, s.db)
    ctx.job.log.info("swapped in", database=s.db, rollback_db=s.rollback)
    r.swapped = {"updated_at": now, "rollback_db": s.rollback, **history}


def _filestore(r: Run) -> None:
    ph.cutover_filestore(r.ctx)


def _abandon(ctx: ph.Ctx) -> None:
    """After a failure before the swap: the copy dropped, the tenant unfrozen, untouched.

    Only while the lock is still ours (another run may hold it now); a cleanup that fails
    (the connection lost, say) leaves the state a re-run resumes from.
    """
    s, conn, log = ctx.spec, ctx.conn, ctx.job.log
    try:
        ctx.job.check_locks()
    except JobError:
        return
    try:
        pg.drop_database(conn, s.work)
        filestore.discard(s.fs(s.work))
        live = ph.live_marker(ctx)
        if _ours(ctx, live.data.get("upgrading")):
            live.data.pop("upgrading")
            with conn.transaction():
                ph.set_allow_connections(conn, s.db, True)
                marker.write(conn, s.db, live)
        log.info("work copy dropped, tenant unfrozen", database=s.db)
    except Exception as exc:  # the original failure is what the job reports
        error = redact.text(f"{type(exc).__name__}: {exc}")
        log.warning("could not unfreeze the tenant: a re-run will", error=error)
