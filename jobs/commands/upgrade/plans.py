"""What `plana-job upgrade` still has to do: observe the three databases, decide the phases.

`observe_*` read the catalog (markers, `datallowconn`), `base`'s version when the live database
accepts connections, and which filestores exist; they change nothing and take no lock. The
`decide*` functions are pure: from what was observed to the phases that remain, each one
`plan.Step` with its line, or `plan.blocked` (65) for a state no run may resolve alone (a
database or marker that is not ours, another upgrade under way, `base` at another version). A
tenant already at `toVersion` with nothing left over plans nothing.

The phase functions (`phases`, `same_major`) do the work and record it in the markers exactly
as before; which of them run, and in what order, comes from here only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from jobs.adapters import odoo, pg
from jobs.commands.upgrade import phases as ph
from jobs.core import fstree, plan
from jobs.core.errors import ConflictError
from jobs.ops import marker

SAME_MAJOR = "same-major"
VERIFIED = "verified"
# Step targets that pick the variant of a phase (the target is what the step acts on).
FRESH = "fresh"  # snapshot: clone a fresh work copy
KEEP = "keep"  # snapshot: freeze again, the work copy is kept
RENAMES = "filestore"  # cutover / rollback: only the filestore renames a kill left

# The line each phase of the snapshot-then-upgrade chain plans, in order ({…} from the hop).
CHAIN = {
    "snapshot": "freeze {db} (upgrading recorded, connections refused) and clone it to {work}",
    "source-pass": "odoo {from_v} --load=base,web,openupgrade_framework -u all on {work},"
    " verified (base at {from_v}.0)",
    "prefix": "apply the {from_v}-{to_v} SQL pre-fixes to {work}, each once with its record",
    "target-pass": "odoo {to_v} with OpenUpgrade (--upgrade-path) -u all on {work};"
    " base must reach {to_v}.0",
    "cutover": "in one transaction {db} → {rollback}, {work} → {db}, connections allowed;"
    " then the filestores",
}
# The steps of a same-major run, in order.
SAME = {
    "finish-filestore": "finish the filestore renames a killed run left",
    "same-major": "record `upgrading` (same-major) in {db}'s marker and freeze it",
    "clone": "clone {db} to a fresh {work} (and its filestore)",
    "odoo": "odoo {to_v} -u all on {work}, verified (no module pending, base at {to_v}.0)",
    "swap": "in one transaction {db} → {rollback} (the rollback copy), {work} → {db}",
    "filestore": "filestore/{db} → {rollback}, filestore/{work} → {db}",
}


@dataclass(frozen=True)
class Db:
    """A database under one of the upgrade's names, as the catalog shows it."""

    comment: bool = False  # it has a comment at all (None: killed before it was marked)
    kind: str | None = None  # its plana-jobs marker's kind; None: no marker of ours
    state: str = ""
    data: Mapping[str, Any] = field(default_factory=dict)
    allows_connections: bool = True

    def of(self, kind: str, **match: object) -> bool:
        return self.kind == kind and all(self.data.get(k) == v for k, v in match.items())


@dataclass(frozen=True)
class State:
    """The tenant's databases, filestores and pre-fixes, for one hop (from → to)."""

    live: Db | None  # None: missing
    live_problem: str | None = None  # why the live database is not this tenant's
    base: str | None = None  # base's version, read only when an upgrade would start from it
    base_problem: str | None = None  # why it could not be read (not an Odoo database)
    pending_modules: tuple[str, ...] = ()  # same-major: modules left to install/upgrade/remove
    work: Db | None = None
    rollback: Db | None = None
    fs_live: bool = False
    fs_work: bool = False
    fs_rollback: bool = False
    fs_made: bool = False  # the filestore of the rollback copy the live marker names
    fs_refused: tuple[str, ...] = ()  # filestore names that are symlinks or not directories
    prefixes: tuple[str, ...] = ()  # the hop's pre-fix files shipped with the image
    revision: str | None = None  # same-major: the addons revision of this image (None: unknown)


# --------------------------------------------------------------------------- observing


def _db(conn: Any, name: str) -> Db | None:
    exists, comment = pg.described(conn, name)
    if not exists:
        return None
    mark = marker.parse(comment)  # one that does not fit its schema is someone else's
    allows = ph.allows_connections(conn, name)
    if mark is None:
        return Db(comment=comment is not None, allows_connections=allows)
    return Db(True, mark.kind, mark.state, dict(mark.data), allows)


def _live_problem(ctx: ph.Ctx) -> str | None:
    try:
        ph.live_marker(ctx)  # the one check of "ours", with its message
    except ConflictError as exc:
        return exc.message
    return None


def _kind(path: Path) -> str:
    return fstree.kind_of(path)


def observe(ctx: ph.Ctx, *, base: bool = True) -> State:
    """The databases and filestores of the hop, read only (no lock, no write, no Odoo)."""
    s, conn = ctx.spec, ctx.conn
    live = _db(conn, s.db)
    problem = _live_problem(ctx)
    found_base = base_problem = None
    data = live.data if live is not None else {}
    if base and problem is None and live is not None and live.allows_connections:
        if "upgrading" not in data:
            try:
                found_base = ph.base_version(ctx, s.db)
            except ConflictError as exc:
                base_problem = exc.message
    made = data.get("rollback_db")
    names = {"live": s.db, "work": s.work, "rollback": s.rollback}
    if made in made_names(s):
        names["made"] = str(made)
    kinds = {key: _kind(s.fs(name)) for key, name in names.items()}
    return State(
        live=live,
        live_problem=problem,
        base=found_base,
        base_problem=base_problem,
        work=_db(conn, s.work),
        rollback=_db(conn, s.rollback),
        fs_live=kinds["live"] == "dir",
        fs_work=kinds["work"] == "dir",
        fs_rollback=kinds["rollback"] == "dir",
        fs_made=kinds.get("made") == "dir",
        fs_refused=tuple(str(s.fs(names[k])) for k, v in kinds.items() if v == "other"),
        prefixes=tuple(name for name, _ in ph.prefix_files(s.from_version, s.to_version)),
    )


def observe_same_major(ctx: ph.Ctx, revision: str | None) -> State:
    """As `observe`, plus the live database's pending modules (what makes a re-run due)."""
    state = observe(ctx)
    pending: tuple[str, ...] = ()
    live = state.live
    if state.live_problem is None and live is not None and live.allows_connections:
        if "upgrading" not in live.data:
            pending = tuple(ph.verify(ctx, ctx.spec.db, ctx.spec.to_version))
    return replace(state, pending_modules=pending, revision=revision)


# --------------------------------------------------------------------------- deciding


def made_names(s: ph.Spec) -> tuple[str, str]:
    """The rollback copies a swap into `to` names: a cutover's and a same-major update's."""
    return (f"{s.db}__rb{s.to_version - 1}", f"{s.db}__rb{s.to_version}")


def hop_problem(s: ph.Spec, same_major: bool | None) -> str | None:
    """Why the hop cannot be run (65); `same_major` None: as the versions say."""
    if same_major is None:
        same_major = s.from_version == s.to_version
    if same_major and s.from_version != s.to_version:
        return (
            f"strategy same-major needs fromVersion = toVersion, got {s.from_version} → "
            f"{s.to_version}"
        )
    if not same_major and s.to_version != s.from_version + 1:
        return (
            f"OpenUpgrade migrates one major version per run: {s.from_version} → "
            f"{s.to_version} is not a hop"
        )
    return None


def _says(text: str, s: ph.Spec) -> str:
    return text.format(
        db=s.db, work=s.work, rollback=s.rollback, from_v=s.from_version, to_v=s.to_version
    )


def _data(state: State) -> Mapping[str, Any]:
    return state.live.data if state.live is not None else {}


def upgraded(state: State, s: ph.Spec) -> bool:
    data = _data(state)
    return data.get("odoo_version") == s.to_version and "upgrading" not in data


def swap_renames(state: State, s: ph.Spec) -> str | None:
    """After a swap into `to` (a cutover or a same-major update): "pending" when a kill left
    its filestore renames, "stale" when a work filestore came after both were done, else None.

    Only while the work name holds no database: a work filestore beside a work database is
    that copy's own (`phases.finish_swap_filestore` does the renames, checking the same).
    """
    data = _data(state)
    if (
        data.get("rollback_db") not in made_names(s)
        or data.get("odoo_version") != s.to_version
        or "upgrading" in data
        or state.work is not None
        or not state.fs_work
    ):
        return None
    return "stale" if state.fs_live and state.fs_made else "pending"


def rollback_renames(state: State, s: ph.Spec) -> bool:
    """A rollback killed after its swap: the copy rolled back, its name free, files to move."""
    work = state.work
    return (
        state.rollback is None
        and work is not None
        and work.state == "rolled-back"
        and work.of(marker.Kind.UPGRADE_WORK, **s.hop())
        and state.fs_rollback
    )


def _details(state: State, s: ph.Spec) -> dict[str, Any]:
    data = _data(state)
    work = state.work
    applied = list(work.data.get("prefixes", [])) if work is not None else []
    out: dict[str, Any] = {
        "database": s.db,
        "work_db": s.work,
        "rollback_db": s.rollback,
        "odoo_version": data.get("odoo_version"),
        "upgrading": data.get("upgrading"),
        "work_phases": list(work.data.get("phases", [])) if work is not None else [],
        # The hop's pre-fixes (17→18: agreement_legal's stale views) applied to the copy.
        "prefixes_applied": applied,
        "prefixes_pending": [p for p in state.prefixes if p not in applied],
    }
    if swap_renames(state, s) == "stale":
        out["stale_filestore"] = str(s.fs(s.work))
    return out


def _common_blocks(state: State, s: ph.Spec, same_major: bool | None) -> str | None:
    """What blocks every run of the hop: the hop itself, a live database not ours, a link."""
    why = hop_problem(s, same_major)
    if why is not None:
        return why
    if state.live is None:
        return f"tenant database {s.db} does not exist"
    if state.live_problem is not None:
        return state.live_problem
    if state.fs_refused:
        return f"{state.fs_refused[0]} is a symlink or not a directory: refused, never followed"
    return None


def _work_usable(state: State, s: ph.Spec) -> bool:
    """The work copy may be passed on: ours, of this hop, not failed, rolled back or killed."""
    work = state.work
    return (
        work is not None
        and work.of(marker.Kind.UPGRADE_WORK, **s.hop())
        and work.state not in ("failed", "rolled-back")
        and not work.data.get("running")
    )


def _foreign_work(state: State, s: ph.Spec) -> str | None:
    """A database under the work name that no upgrade of this tenant made (65, untouched).

    One without any comment is a clone killed before its marker: the next snapshot drops it.
    """
    work = state.work
    if work is None or not work.comment:
        return None
    if work.of(marker.Kind.UPGRADE_WORK, subdomain=s.tenant.subdomain):
        return None
    return f"database {s.work} exists and is not this tenant's upgrade work copy: left untouched"


def decide(state: State, s: ph.Spec) -> plan.Plan:
    """The phases of the snapshot-then-upgrade chain still to run for the hop, in order."""
    why = _common_blocks(state, s, same_major=False)
    if why is not None:
        return plan.blocked(why, database=s.db)
    details = _details(state, s)
    data = _data(state)
    if upgraded(state, s):
        if swap_renames(state, s) == "pending":
            step = plan.Step("cutover", "finish the filestore renames a killed cutover left",
                             target=RENAMES)  # fmt: skip
            return plan.of(step, state="upgraded", **details)
        return plan.of(state="upgraded", **details)
    up = data.get("upgrading")
    if isinstance(up, dict) and (up.get("from"), up.get("to")) != (s.from_version, s.to_version):
        return plan.blocked(
            f"an upgrade {up.get('from')} → {up.get('to')} of {s.db} is under way: finish "
            "or roll it back first",
            database=s.db,
        )
    recorded = isinstance(up, dict)
    if not recorded:
        why = _start_blocks(state, s, s.from_version, " (fromVersion)")
        if why is not None:
            return plan.blocked(why, database=s.db)
    why = _foreign_work(state, s) or _rollback_taken(state, s, recorded)
    if why is not None:
        return plan.blocked(why, database=s.db)
    steps = _chain_steps(state, s, recorded)
    return plan.of(*steps, state="upgrading" if recorded else "not-started", **details)


def _start_blocks(state: State, s: ph.Spec, want: int, which: str = "") -> str | None:
    """Before an upgrade starts: the tenant must be unfrozen and its base at `want` (a major
    upgrade's fromVersion, a same-major update's version)."""
    assert state.live is not None
    if not state.live.allows_connections:
        return f"{s.db} is frozen, but not by an upgrade: left untouched"
    if state.base_problem is not None:
        return state.base_problem
    base = state.base or ""
    if odoo.version_major(base) != want:
        return f"{s.db}: base is at {base or 'nothing'}, not {want}.0{which}"
    return None


def _rollback_taken(state: State, s: ph.Spec, recorded: bool) -> str | None:
    """The rollback name must be free for the cutover. A same-major update's copy there is
    dropped by the snapshot that starts the upgrade (the frozen database is the newer restore
    point); anything else is refused before any phase runs."""
    rb = state.rollback
    if rb is None:
        return None
    v = s.from_version
    superseded = rb.of(marker.Kind.ROLLBACK, subdomain=s.tenant.subdomain, **{"from": v, "to": v})
    if superseded and not recorded:
        return None
    return f"rollback name {s.rollback} is taken: left untouched"


def _chain_steps(state: State, s: ph.Spec, recorded: bool) -> list[plan.Step]:
    usable = recorded and _work_usable(state, s)
    assert state.live is not None
    if not usable:
        # Failed, killed midway, rolled back, unmarked or absent: OpenUpgrade migrations
        # cannot be resumed, so every phase runs again on a fresh copy.
        first = plan.Step("snapshot", _says(CHAIN["snapshot"], s), target=FRESH)
        rest = [plan.Step(p, _says(CHAIN[p], s)) for p in ph.PHASES[1:]]
        return [first, *rest]
    assert state.work is not None
    done = list(state.work.data.get("phases", []))
    steps: list[plan.Step] = []
    if state.live.allows_connections:  # recorded but not (or no longer) frozen
        says = f"freeze {s.db} again (its work copy {s.work} is kept)"
        steps.append(plan.Step("snapshot", says, target=KEEP))
    steps += [plan.Step(p, _says(CHAIN[p], s)) for p in ph.PHASES[1:] if p not in done]
    return steps


def decide_rollback(state: State, s: ph.Spec) -> plan.Plan:
    """`upgrade rollback`: swap the rollback copy back, unfreeze, or finish the renames."""
    why = _common_blocks(state, s, same_major=None)
    if why is not None:
        return plan.blocked(why, database=s.db)
    data = _data(state)
    up = data.get("upgrading")
    if isinstance(up, dict) and (up.get("from"), up.get("to")) != (s.from_version, s.to_version):
        return plan.blocked(
            f"an upgrade {up.get('from')} → {up.get('to')} of {s.db} is under way: roll that "
            "one back",
            database=s.db,
        )
    rb = state.rollback
    match = {"subdomain": s.tenant.subdomain, "from": s.from_version, "to": s.to_version}
    if rb is not None:
        if not rb.of(marker.Kind.ROLLBACK, **match):
            return plan.blocked(
                f"{s.rollback} is not this tenant's rollback copy of {s.from_version} → "
                f"{s.to_version}: left untouched",
                database=s.rollback,
            )
        says = (f"in one transaction {s.db} → {s.work} (rolled-back), {s.rollback} → {s.db}"
                " with its old marker, connections allowed; then the filestores")  # fmt: skip
        return plan.of(plan.Step("rollback", says, target=s.rollback))
    if isinstance(up, dict):
        says = f"unfreeze {s.db} (upgrading cleared) and mark {s.work} rolled-back"
        return plan.of(plan.Step("rollback", says, target=s.db))
    if rollback_renames(state, s):
        return plan.of(plan.Step("rollback", "finish the filestore renames a killed rollback"
                                 " left", target=RENAMES))  # fmt: skip
    return plan.of()


# --------------------------------------------------------------------------- same-major


def same_major_ours(up: object, version: int) -> bool:
    """Whether a live marker's `upgrading` is a same-major run's at `version`."""
    return (
        isinstance(up, dict)
        and up.get("strategy") == SAME_MAJOR
        and (up.get("from"), up.get("to")) == (version, version)
    )


def _same_names_block(state: State, s: ph.Spec) -> str | None:
    """The rollback name is free or holds this tenant's previous same-major rollback copy."""
    v = s.to_version
    rb = state.rollback
    if rb is not None:
        if not rb.of(marker.Kind.ROLLBACK, subdomain=s.tenant.subdomain, **{"from": v, "to": v}):
            return f"rollback name {s.rollback} is taken: left untouched"
        return None
    if state.fs_rollback and not rollback_renames(state, s):
        # Without its database: the live filestore of a rollback killed before its renames.
        return (
            f"filestore {s.fs(s.rollback)} has no database: finish the rollback that left it "
            "(`upgrade rollback` again) first"
        )
    return None


def _verified(state: State, s: ph.Spec) -> bool:
    """A work copy a same-major run verified at this revision, its filestore beside it."""
    work = state.work
    if state.revision is None or not _work_usable(state, s) or work is None:
        return False
    if work.state != VERIFIED or work.data.get("revision") != state.revision:
        return False
    return state.fs_work or not state.fs_live


def decide_same_major(state: State, s: ph.Spec) -> plan.Plan:
    """The steps of `upgrade same-major`: none when the tenant is at this version and revision
    with no module pending; a killed run's verified copy is swapped in, any other re-made."""
    why = _common_blocks(state, s, same_major=True)
    if why is not None:
        return plan.blocked(why, database=s.db)
    v = s.to_version
    data = _data(state)
    up = data.get("upgrading")
    details: dict[str, Any] = {"strategy": SAME_MAJOR, "odoo_version": v,
                               "revision": state.revision}  # fmt: skip
    if up is not None and not same_major_ours(up, v):
        return plan.blocked(f"a major upgrade of {s.db} is under way: finish or roll it back")
    steps: list[plan.Step] = []
    if up is None:
        if rollback_renames(state, s) or swap_renames(state, s) == "pending":
            steps.append(plan.Step("finish-filestore", SAME["finish-filestore"]))
        why = _start_blocks(state, s, s.to_version)
        if why is not None:
            return plan.blocked(why, database=s.db)
        same = data.get("odoo_version") == v and data.get("addons_revision") == state.revision
        if same and state.revision is not None and not state.pending_modules:
            return plan.of(*steps, updated_at=data.get("updated_at"), **details)
    why = _foreign_work(state, s) or _same_names_block(state, s)
    if why is not None:
        return plan.blocked(why, database=s.db)
    names = ["same-major", *([] if up is not None and _verified(state, s) else ["clone", "odoo"])]
    steps += [plan.Step(n, _says(SAME[n], s)) for n in (*names, "swap", "filestore")]
    if state.revision is None:
        details["revision"] = "unknown: no --addons-revision, and a preview starts no Odoo"
    return plan.of(*steps, **details)
