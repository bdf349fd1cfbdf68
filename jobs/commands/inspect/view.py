"""What `inspect` reads of one tenant: databases, filestores, backup sets, events. Read only.

Nothing here writes, takes a lock or follows a link: databases are read from the catalog (the
markers are database comments), filestores are walked by descriptor (`fstree`), backup sets are
listed and their manifests checked against the backup key when one is given, and the events
stream is read with XREVRANGE. Every marker, manifest and name is input to validate: a marker
that does not parse, a database in the tenant's namespace that carries someone else's comment,
or a set whose manifest fails its signature is reported as such, and counts as a problem no
job resolves alone.
"""

from __future__ import annotations

import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psycopg

from jobs.core import fstree, naming
from jobs.core.errors import JobError
from jobs.ops import marker

# Which database of a tenant a marker kind stands for, for the table.
ROLES: dict[str, str] = {
    marker.Kind.TENANT: "live",
    marker.Kind.ENVIRONMENT: "environment",
    marker.Kind.ENVIRONMENT_WORK: "environment work copy",
    marker.Kind.RESTORE_WORK: "restore work copy",
    marker.Kind.VERIFY_SCRATCH: "verify scratch",
    marker.Kind.UPGRADE_WORK: "upgrade work copy",
    marker.Kind.ROLLBACK: "upgrade rollback",
}
EVENTS_SCANNED = 10_000  # newest stream entries read for this tenant's events


@dataclass(frozen=True)
class Database:
    name: str
    environment: str | None
    work: str | None  # the work suffix after "__", or None
    owner: str
    public_connect: bool
    kind: str | None  # the marker's kind, None when unmarked
    state: str | None
    marker: str  # "ours", "none" (no comment) or "foreign" (a comment that is not our marker)
    facts: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None  # why not ours: someone else's comment or tenant, or unfit

    @property
    def role(self) -> str:
        if self.problem is not None:
            return "not ours"
        if self.kind in ROLES:
            return ROLES[self.kind]
        return "unmarked"


def databases(conn: psycopg.Connection[Any], tenant: naming.Tenant) -> list[Database]:
    """Every database in the tenant's namespace (`{sub}[--{env}].{domain}[__{work}]`)."""
    rows = conn.execute(
        "SELECT datname, pg_get_userbyid(datdba), shobj_description(oid, 'pg_database'),"
        " has_database_privilege('public', oid, 'CONNECT') FROM pg_database ORDER BY datname"
    ).fetchall()
    found: list[Database] = []
    for name, owner, comment, public in rows:
        owned = naming.owned_name(name, tenant.subdomain, tenant.base_domain)
        if owned is None:
            continue
        mark = marker.Marker.decode(comment)
        problem = None
        if comment is not None and mark is None:
            problem = "a comment that is not a plana-jobs marker"
        elif mark is not None:
            problem = _whose(mark, owned, tenant)
        found.append(
            Database(
                name=name,
                environment=owned.env,
                work=owned.work,
                owner=owner,
                public_connect=bool(public),
                kind=mark.kind if mark else None,
                state=mark.state if mark else None,
                marker="ours" if mark else ("none" if comment is None else "foreign"),
                facts=_facts(mark) if mark is not None else {},
                problem=problem,
            )
        )
    return found


# The marker fields shown with a database, where its kind declares them (`marker.declared`).
FACTS = ("subdomain", "tenant", "env", "source", "template", "template_fingerprint", "from",
         "to", "odoo_version", "set")  # fmt: skip


def _facts(mark: marker.Marker) -> dict[str, Any]:
    return {k: v for k in FACTS if (v := marker.declared(mark, k)) is not None}


def _whose(mark: marker.Marker, owned: naming.Owned, tenant: naming.Tenant) -> str | None:
    """Why a plana-jobs marker on a database of this namespace is not this tenant's (a copy of
    another tenant's, an unknown kind, or one that does not fit its kind's schema), or None. A
    marker is input to validate."""
    if mark.kind not in ROLES and mark.kind != marker.Kind.TEMPLATE:
        return f"a marker of unknown kind {mark.kind!r}"
    misfit = marker.misfit(mark)
    if misfit is not None:
        return misfit
    own = tenant.subdomain + (f"{naming.ENV_SEPARATOR}{owned.env}" if owned.env else "")
    named = mark.data.get("subdomain")
    if named is not None and named != own and marker.declared(mark, "tenant") != tenant.subdomain:
        return f"its marker names another tenant ({str(named)[:60]!r})"
    return None


@dataclass(frozen=True)
class Filestore:
    name: str
    leftover: str | None  # a hidden leftover's tail ("clone.partial", "trash-…"), or None
    kind: str  # "directory", "symlink", "file", …
    files: int = 0
    bytes: int = 0


def filestores(data_dir: Path, tenant: naming.Tenant) -> list[Filestore]:
    """The tenant's filestore directories and leftovers under `{data_dir}/filestore`."""
    root = fstree.open_root(data_dir / "filestore")
    if root is None:
        return []
    try:
        found: list[Filestore] = []
        # Every name, dot names (leftovers) and links (refused by the jobs) included.
        for name in sorted(os.listdir(root)):
            owned = naming.owned_name(name, tenant.subdomain, tenant.base_domain)
            hidden = None
            if owned is None:
                hidden_of = naming.owned_name(
                    name, tenant.subdomain, tenant.base_domain, hidden=True
                )
                if hidden_of is None:
                    continue
                hidden = hidden_of.hidden
            found.append(_measure(root, name, hidden))
        return found
    finally:
        os.close(root)


def _measure(parent: int, name: str, leftover: str | None) -> Filestore:
    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
    kind = _kind(st)
    if kind != "directory":
        return Filestore(name, leftover, kind)
    fd = fstree.open_dir(parent, name)
    if fd is None:  # swapped for a link between the stat and the open: reported, not followed
        return Filestore(name, leftover, "symlink")
    files = size = 0
    try:
        for _rel, _dir_fd, entries in fstree.walk(fd):
            files += len(entries)
            size += sum(s for _, s in entries)
    finally:
        os.close(fd)
    return Filestore(name, leftover, kind, files, size)


def _kind(st: os.stat_result) -> str:
    if stat.S_ISDIR(st.st_mode):
        return "directory"
    if stat.S_ISLNK(st.st_mode):
        return "symlink"
    return "file" if stat.S_ISREG(st.st_mode) else "other"


@dataclass(frozen=True)
class BackupSet:
    name: str
    status: str  # "valid", "unverified" (no key given), or the problem with it
    final: bool = False


@dataclass(frozen=True)
class Backups:
    sets: list[BackupSet]
    leftovers: list[str]  # `.partial` / `.deleting` sets of killed runs

    @property
    def newest(self) -> str | None:
        return self.sets[-1].name if self.sets else None

    @property
    def newest_valid(self) -> str | None:
        valid = [s.name for s in self.sets if s.status == "valid"]
        return valid[-1] if valid else None


def backups(dest: Path, tenant: naming.Tenant, key: bytes | None) -> Backups:
    """The tenant's sets under `{dest}/{subdomain}`, each manifest checked when `key` is given:
    signature, schema, the tenant it names and the files' sizes (not the restore that
    backup-verify does)."""
    from jobs.ops import backup_sets  # only an inspect given --dest pays for it

    tdir = backup_sets.tenant_dir(dest, tenant.subdomain)
    if not tdir.is_dir() or tdir.is_symlink():
        return Backups([], [])
    sets: list[BackupSet] = []
    for name in backup_sets.complete_sets(tdir):
        if key is None:
            sets.append(BackupSet(name, "unverified"))
            continue
        try:
            m = backup_sets.load_manifest(tdir / name, key)
            backup_sets.check_owner(m, tenant, name)
            problems = backup_sets.check_files(tdir / name, m)
            final = backup_sets.is_final(tdir / name, key)
        except JobError as exc:
            sets.append(BackupSet(name, exc.message))
            continue
        sets.append(BackupSet(name, "; ".join(problems) if problems else "valid", final))
    leftovers = sorted(
        p.name for p in tdir.iterdir()
        if p.name.endswith((backup_sets.PARTIAL, backup_sets.DELETING))
    )  # fmt: skip
    return Backups(sets, leftovers)


def events(client: Any, stream: str, subdomain: str) -> list[dict[str, str]]:
    """This tenant's entries among the newest EVENTS_SCANNED of the stream, newest first."""
    found: list[dict[str, str]] = []
    for entry_id, fields in client.xrevrange(stream, count=EVENTS_SCANNED):
        f = {_s(k): _s(v) for k, v in fields.items()}
        if f.get("subdomain") == subdomain:
            keep = ("type", "event_id", "generation", "occurred_at")
            found.append({"entry_id": _s(entry_id), **{k: f[k] for k in keep if k in f}})
    return found


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def as_dicts(items: list[Any]) -> list[dict[str, Any]]:
    return [{**asdict(i), **({"role": i.role} if isinstance(i, Database) else {})} for i in items]
