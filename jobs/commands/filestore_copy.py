"""`plana-job filestore-copy`: a tenant's filestore from one Odoo volume to another.

`tar -c` on the source piped into `tar -x --no-same-owner --no-same-permissions` on the target,
so the files get the target image's owner (UID 101 on 17 → 100 on 18). Only what the target
lacks is sent, into a staging directory beside the target (`.{db}.copy.partial`), which is
verified and then renamed into place (or, when the target already holds part of the files,
hard-linked into it file by file). The source is never written. A local side is walked by file
descriptor (see jobs.adapters.remote_filestore): nothing outside `{root}/{db}` is read or written,
and a `{db}` that is a symlink is refused (65).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import click

from jobs.adapters import filestore
from jobs.adapters import remote_filestore as fs
from jobs.core import naming, runner
from jobs.core import options as params
from jobs.core.errors import ConflictError, TransientError, UsageError
from jobs.core.result import Done

TRANSPORTS = ("local", "kubectl")
VERIFY_MODES = ("none", "names", "sha1")
DEFAULT_ROOT = str(naming.filestore("", naming.DEFAULT_DATA_DIR)).rstrip("/")
_DB = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}", re.ASCII)
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_POD = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?", re.ASCII)
SHOWN_MISMATCHES = 5


@dataclass(frozen=True)
class Plan:
    db: str
    source: fs.Side
    target: fs.Side
    verify: str
    interval: float

    @property
    def staging(self) -> str:
        return filestore.staging_path(self.db, "copy").name


def _db(kw: dict[str, Any]) -> str:
    if kw.get("db"):
        db = str(kw["db"])
        if not _DB.fullmatch(db) or db in {".", ".."}:
            raise UsageError(
                "db", f"must be a database name [A-Za-z0-9._-], ≤ 63 bytes, got {db!r}"
            )
        return db
    if kw.get("subdomain"):
        return naming.db_name(
            naming.subdomain(kw["subdomain"]), naming.base_domain(kw["base_domain"])
        )
    raise UsageError("db", "is required (or --subdomain)")


def _root(value: str | None, field: str) -> str:
    if not value or not value.startswith("/"):
        raise UsageError(field, f"must be an absolute path, got {value!r}")
    return value.rstrip("/") or "/"


def _label(value: str | None, field: str, pattern: re.Pattern[str] = _DNS_LABEL) -> str:
    if not value or not pattern.fullmatch(value):
        raise UsageError(field, f"must be a Kubernetes name, got {value!r}")
    return value


def _namespace(value: str | None, version: str | None, field: str, version_field: str) -> str:
    if not value and version:
        return naming.namespace(naming.odoo_version(version, field=version_field))
    return _label(value, field)


def plan(kw: dict[str, Any]) -> Plan:
    """Validate every input (exit 64 naming the field) before anything is touched."""
    transport = kw["transport"]
    if transport not in TRANSPORTS:
        raise UsageError("transport", f"must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    verify = kw["verify"]
    if verify not in VERIFY_MODES:
        raise UsageError("verify", f"must be one of {', '.join(VERIFY_MODES)}, got {verify!r}")
    db = _db(kw)
    source_root = _root(kw["source_root"], "source-root")
    target_root = _root(kw["target_root"], "target-root")
    if transport == "local":
        if source_root == target_root:
            raise UsageError("target-root", "must differ from source-root for the local transport")
        source, target = fs.Side("source", source_root), fs.Side("target", target_root)
    else:
        sides = []
        for label, side in (("source", "from"), ("target", "to")):
            namespace = _namespace(
                kw[f"{label}_namespace"],
                kw[f"{side}_version"],
                f"{label}-namespace",
                f"{side}-version",
            )
            pod = _label(kw[f"{label}_pod"], f"{label}-pod", _POD)
            container = kw[f"{label}_container"]
            if container:
                _label(container, f"{label}-container")
            root = source_root if label == "source" else target_root
            sides.append(
                fs.Side.kubectl(
                    label,
                    root,
                    namespace=namespace,
                    pod=pod,
                    container=container,
                    kubectl=kw["kubectl"],
                )
            )
        source, target = sides
        if (source.prefix, source.root) == (target.prefix, target.root):
            raise UsageError("target-pod", "source and target are the same pod and directory")
    return Plan(
        db=db, source=source, target=target, verify=verify, interval=kw["progress_interval"]
    )


@click.command("filestore-copy")
@params.option(
    "--transport",
    env="PLANA_FILESTORE_TRANSPORT",
    default="kubectl",
    show_default=True,
    help="kubectl (holder pods) or local (two directories).",
)
@params.option(
    "--db",
    env="PLANA_FILESTORE_DB",
    default=None,
    help="Filestore directory (database) name; default from --subdomain.",
)
@params.subdomain
@params.option(
    "--source-root",
    env="PLANA_SOURCE_ROOT",
    default=DEFAULT_ROOT,
    show_default=True,
    help="Filestore root on the source side.",
)
@params.option(
    "--target-root",
    env="PLANA_TARGET_ROOT",
    default=DEFAULT_ROOT,
    show_default=True,
    help="Filestore root on the target side.",
)
@params.option(
    "--source-namespace",
    env="PLANA_SOURCE_NAMESPACE",
    default=None,
    help="kubectl: source namespace [default: from --from-version].",
)
@params.option(
    "--source-pod",
    env="PLANA_SOURCE_POD",
    default=None,
    help="kubectl: holder pod mounting the source volume.",
)
@params.option(
    "--source-container",
    env="PLANA_SOURCE_CONTAINER",
    default=None,
    help="kubectl: container in the source pod.",
)
@params.option(
    "--target-namespace",
    env="PLANA_TARGET_NAMESPACE",
    default=None,
    help="kubectl: target namespace [default: from --to-version].",
)
@params.option(
    "--target-pod",
    env="PLANA_TARGET_POD",
    default=None,
    help="kubectl: holder pod mounting the target volume.",
)
@params.option(
    "--target-container",
    env="PLANA_TARGET_CONTAINER",
    default=None,
    help="kubectl: container in the target pod.",
)
@params.option(
    "--from-version",
    env="PLANA_FROM_VERSION",
    default=None,
    help="Source Odoo major version (names the default source namespace).",
)
@params.option(
    "--to-version",
    env="PLANA_TO_VERSION",
    default=None,
    help="Target Odoo major version (names the default target namespace).",
)
@params.option(
    "--kubectl",
    env="PLANA_KUBECTL",
    default="kubectl",
    show_default=True,
    help="The kubectl executable.",
)
@params.option(
    "--verify",
    env="PLANA_FILESTORE_VERIFY",
    default="names",
    show_default=True,
    help="none | names (count, bytes, names) | sha1 (also content = name).",
)
@params.option(
    "--progress-interval",
    env="PLANA_PROGRESS_INTERVAL",
    type=params.Seconds(0.1, 3600),
    default=5.0,
    show_default=True,
    help="Seconds between progress log lines.",
)
@params.common
def filestore_copy(**kw: Any) -> None:
    """Copy {root}/{db} from the source side to the target side, staged and verified."""
    runner.run("filestore-copy", lambda job: _run(job, kw), timeout=kw["timeout"])


def _run(job: runner.Job, kw: dict[str, Any]) -> Done:
    p = plan(kw)
    job.bind(tenant=kw.get("subdomain") or p.db)
    return copy(job, p)


def copy(job: runner.Job, p: Plan) -> Done:
    """Observe both sides, send the difference, verify it, publish it, check the result."""
    dl, log = job.deadline, job.log
    job.step("observe")
    # Both sides at once: one command each (for kubectl, one round trip each).
    seen_source, present = fs.observe_all(
        [(p.source, [p.db]), (p.target, [p.db, p.staging])], deadline=dl
    )
    if p.db not in seen_source:
        raise ConflictError(
            f"source filestore {p.source.path(p.db)} does not exist (or is not readable)",
            db=p.db,
        )
    source = seen_source[p.db]
    target, staged = present.get(p.db, {}), present.get(p.staging, {})
    existed = p.db in present

    job.step("decide")
    # Same name means same content (content-addressed); a different size means a damaged copy.
    need = sorted(n for n, size in source.items() if target.get(n) != size)
    extra = len(set(target) - set(source))
    if extra:
        log.warning("target has files the source lacks; left in place", files=extra)
    details: dict[str, Any] = {
        "db": p.db,
        "files": len(source),
        "bytes": sum(source.values()),
        "verify": p.verify,
    }
    if p.staging in present and (not need or set(staged) - set(need)):
        # Leftovers of another attempt that do not fit this one: start the staging afresh.
        fs.clear(p.target, p.staging, deadline=dl)
        staged = {}
    if not need:
        log.info("target already complete", **details)
        return Done("unchanged", {**details, "copied_files": 0, "copied_bytes": 0})
    fetch = [n for n in need if staged.get(n) != source[n]]
    log.info(
        "plan",
        missing=len(need),
        reused_from_staging=len(need) - len(fetch),
        fetch_files=len(fetch),
        fetch_bytes=sum(source[n] for n in fetch),
    )

    if fetch:
        job.step("copy")
        fs.make_dir(p.target, p.staging, deadline=dl)

        def report(progress: fs.Progress, elapsed: float) -> None:
            rate = progress.bytes / elapsed if elapsed > 0 else 0.0
            log.info(
                "progress",
                files=progress.files,
                of_files=len(fetch),
                bytes=progress.bytes,
                mb_per_s=round(rate / 1e6, 1),
            )

        fs.tar_pipe(
            p.source,
            p.db,
            p.target,
            p.staging,
            fetch,
            source,
            deadline=dl,
            interval=p.interval,
            report=report,
        )

    job.step("verify")
    if p.verify != "none":
        staged = fs.observe(p.target, [p.staging], deadline=dl).get(p.staging, {})
        _check_sizes(source, staged, need, where="staging")
    if p.verify == "sha1":
        _check_sha1(p, [n for n in need if filestore.is_content_name(n)], dl)

    job.step("publish")
    if not existed:
        # The common case: the whole directory appears at once.
        fs.rename(p.target, p.staging, p.db, deadline=dl)
    else:
        # Merge: each file appears whole (a link to the verified staged inode), then the staging
        # goes. A crash in between leaves complete files on both sides; a re-run finishes.
        fs.merge(p.target, p.staging, p.db, deadline=dl)
        fs.clear(p.target, p.staging, deadline=dl)

    if existed and p.verify != "none":
        # After a merge, the target as a whole is checked; a renamed staging was checked already.
        job.step("check")
        final = fs.observe(p.target, [p.db], deadline=dl).get(p.db, {})
        _check_sizes(source, final, sorted(source), where="target")
    details.update(copied_files=len(need), copied_bytes=sum(source[n] for n in need))
    log.info("filestore copied", **details)
    return Done("updated" if existed else "created", details)


def _check_sizes(source: fs.Listing, found: fs.Listing, names: list[str], where: str) -> None:
    """File count and bytes of `names` on the target side equal the source's."""
    wrong = [n for n in names if found.get(n) != source[n]]
    if wrong:
        want_bytes = sum(source[n] for n in names)
        got_bytes = sum(found.get(n, 0) for n in names)
        raise TransientError(
            f"{where}: {len(wrong)} of {len(names)} files missing or of another size "
            f"({got_bytes} of {want_bytes} bytes), e.g. {', '.join(wrong[:SHOWN_MISMATCHES])}",
            mismatched=len(wrong),
        )


def _check_sha1(p: Plan, names: list[str], dl: Any) -> None:
    digests = fs.sha1s(p.target, p.staging, names, deadline=dl)
    bad = [n for n in names if digests.get(n) != n.rsplit("/", 1)[-1]]
    if bad:
        # The source itself holds content that does not match its address: copying again
        # cannot help, so this is a data error (65), and nothing is published.
        raise filestore.FilestoreError(
            f"sha1 of {len(bad)} file(s) differs from their content address, e.g. "
            f"{', '.join(bad[:SHOWN_MISMATCHES])}; nothing published",
            corrupt=len(bad),
        )
