"""`plana-job filestore-copy`: a tenant's filestore from one Odoo volume to another.

`tar -c` on the source piped into `tar -x --no-same-owner --no-same-permissions` on the target,
so the files get the target image's owner (UID 101 on 17 → 100 on 18). Only what the target
lacks is sent, into a staging directory beside the target (`.{db}.copy.partial`), which is
verified and then renamed into place (or, when the target already holds part of the files,
hard-linked into it file by file). The source is never written. A local side is walked by file
descriptor (see jobs.adapters.remote_filestore): nothing outside `{root}/{db}` is read or written,
and a `{db}` that is a symlink is refused (65).

observe: the source's files, the target's and the staging directory's (one listing per side,
through `kubectl exec` or by descriptor; nothing written). plan: `clear-staging` (leftovers of
another attempt that do not fit this one), `copy` (what neither the target nor the staging
holds), `verify`, `publish`, `check` (after a merge into an existing target); nothing when the
target already holds every source file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import click

from jobs.adapters import filestore
from jobs.adapters import remote_filestore as fs
from jobs.core import naming, params, plan, retry, runner
from jobs.core.errors import TransientError, UsageError
from jobs.core.result import Done

TRANSPORTS = ("local", "kubectl")
VERIFY_MODES = ("none", "names", "sha1")
DEFAULT_ROOT = str(naming.filestore("", naming.DEFAULT_DATA_DIR)).rstrip("/")
_DB = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,62}", re.ASCII)
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?", re.ASCII)
_POD = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?", re.ASCII)
SHOWN_MISMATCHES = 5
# What the `plan` log line reports of the difference (an interrupted run's reuse among them).
PLAN_FACTS = ("missing", "reused_from_staging", "fetch_files", "fetch_bytes")


# --------------------------------------------------------------------------- parameters


def _db_name(value: str) -> str:
    if not _DB.fullmatch(value) or value in {".", ".."}:
        raise UsageError("db", f"must be a database name [A-Za-z0-9._-], ≤ 63 bytes, got {value!r}")
    return value


def _root(value: str) -> str:
    if not value.startswith("/"):
        raise UsageError("root", f"must be an absolute path, got {value!r}")
    return value.rstrip("/") or "/"


def _name_rule(pattern: re.Pattern[str]) -> params.Rule[str]:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise UsageError("name", f"must be a Kubernetes name, got {value!r}")
        return value

    return params.Rule("name", check)


K8S_NAME = _name_rule(_DNS_LABEL)
POD_NAME = _name_rule(_POD)
ROOT = params.Rule("path", _root)
VERSION = params.Rule("version", lambda v: naming.odoo_version(v, field="version"))


def _root_option(side: str) -> Any:
    return params.option(
        f"--{side}-root",
        f"PLANA_{side.upper()}_ROOT",
        f"Filestore root on the {side} side.",
        type=ROOT,
        default=DEFAULT_ROOT,
        show_default=True,
    )


def _kubectl_options(side: str, version_flag: str) -> tuple[Any, Any, Any]:
    env = f"PLANA_{side.upper()}"
    return (
        params.option(
            f"--{side}-namespace",
            f"{env}_NAMESPACE",
            f"kubectl: {side} namespace [default: from {version_flag}].",
            type=K8S_NAME,
        ),
        params.option(
            f"--{side}-pod",
            f"{env}_POD",
            f"kubectl: holder pod mounting the {side} volume.",
            type=POD_NAME,
        ),
        params.option(
            f"--{side}-container",
            f"{env}_CONTAINER",
            f"kubectl: container in the {side} pod.",
            type=K8S_NAME,
        ),
    )


_SOURCE_K8S = _kubectl_options("source", "--from-version")
_TARGET_K8S = _kubectl_options("target", "--to-version")


@params.spec
class Params(params.Common):
    transport: str = params.option(
        "--transport",
        "PLANA_FILESTORE_TRANSPORT",
        "kubectl (holder pods) or local (two directories).",
        type=click.Choice(TRANSPORTS),
        default="kubectl",
        show_default=True,
    )
    db: str | None = params.option(
        "--db",
        "PLANA_FILESTORE_DB",
        "Filestore directory (database) name; default from --subdomain.",
        type=params.Rule("name", _db_name),
    )
    subdomain: str | None = params.option(
        "--subdomain",
        "PLANA_SUBDOMAIN",
        "Tenant subdomain (DNS label).",
        type=params.SUBDOMAIN,
    )
    source_root: str = _root_option("source")
    target_root: str = _root_option("target")
    source_namespace: str | None = _SOURCE_K8S[0]
    source_pod: str | None = _SOURCE_K8S[1]
    source_container: str | None = _SOURCE_K8S[2]
    target_namespace: str | None = _TARGET_K8S[0]
    target_pod: str | None = _TARGET_K8S[1]
    target_container: str | None = _TARGET_K8S[2]
    from_version: int | None = params.option(
        "--from-version",
        "PLANA_FROM_VERSION",
        "Source Odoo major version (names the default source namespace).",
        type=VERSION,
    )
    to_version: int | None = params.option(
        "--to-version",
        "PLANA_TO_VERSION",
        "Target Odoo major version (names the default target namespace).",
        type=VERSION,
    )
    kubectl: str = params.option(
        "--kubectl", "PLANA_KUBECTL", "The kubectl executable.", default="kubectl",
        show_default=True,
    )  # fmt: skip
    verify: str = params.option(
        "--verify",
        "PLANA_FILESTORE_VERIFY",
        "none | names (count, bytes, names) | sha1 (also content = name).",
        type=click.Choice(VERIFY_MODES),
        default="names",
        show_default=True,
    )
    progress_interval: float = params.option(
        "--progress-interval",
        "PLANA_PROGRESS_INTERVAL",
        "Seconds between progress log lines.",
        type=params.Seconds(0.1, 3600),
        default=5.0,
        show_default=True,
    )

    def __post_init__(self) -> None:
        if self.db is None and self.subdomain is None:
            raise UsageError("db", "is required (or --subdomain)")
        if self.transport == "local":
            if self.source_root == self.target_root:
                raise UsageError(
                    "target_root", "must differ from --source-root for the local transport"
                )
            return
        # kubectl: each side's namespace (given or named by its version) and pod, in this order.
        for side, version in (("source", "from_version"), ("target", "to_version")):
            if getattr(self, f"{side}_namespace") is None and getattr(self, version) is None:
                flag = "--from-version" if side == "source" else "--to-version"
                raise UsageError(f"{side}_namespace", f"is required (or {flag})")
            if getattr(self, f"{side}_pod") is None:
                raise UsageError(f"{side}_pod", "is required for the kubectl transport")
        if (self.source.prefix, self.source.root) == (self.target.prefix, self.target.root):
            raise UsageError("target_pod", "source and target are the same pod and directory")

    @property
    def directory(self) -> str:
        """`{db}`: the filestore's directory name under each root."""
        if self.db is not None:
            return self.db
        assert self.subdomain is not None  # checked in __post_init__
        return naming.db_name(self.subdomain, self.base_domain)

    @property
    def staging(self) -> str:
        return filestore.staging_path(self.directory, "copy").name

    @property
    def source(self) -> fs.Side:
        return self._side("source", self.source_root, self.source_namespace, self.from_version,
                          self.source_pod, self.source_container)  # fmt: skip

    @property
    def target(self) -> fs.Side:
        return self._side("target", self.target_root, self.target_namespace, self.to_version,
                          self.target_pod, self.target_container)  # fmt: skip

    def _side(
        self,
        label: str,
        root: str,
        namespace: str | None,
        version: int | None,
        pod: str | None,
        container: str | None,
    ) -> fs.Side:
        if self.transport == "local":
            return fs.Side(label, root)
        assert pod is not None  # checked in __post_init__
        return fs.Side.kubectl(
            label,
            root,
            namespace=namespace or naming.namespace(version or naming.DEFAULT_ODOO_VERSION),
            pod=pod,
            container=container,
            kubectl=self.kubectl,
        )


# --------------------------------------------------------------------------- observe


@dataclass(frozen=True)
class State:
    """What both sides hold: file name → size, None where the directory does not exist."""

    source: fs.Listing | None  # `{db}` on the source
    target: fs.Listing | None  # `{db}` on the target
    staged: fs.Listing | None  # `.{db}.copy.partial` on the target: what an earlier run left
    refused: str | None = None  # a `{db}` that is a symlink (either side): never followed


def observe(p: Params, deadline: retry.Deadline) -> State:
    """Both sides at once: one listing command each (for kubectl, one round trip each)."""
    db = p.directory
    try:
        source, target = fs.observe_all(
            [(p.source, [db]), (p.target, [db, p.staging])], deadline=deadline
        )
    except filestore.FilestoreError as exc:
        return State(None, None, None, refused=exc.message)
    return State(source.get(db), target.get(db), target.get(p.staging))


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class Work:
    """The difference between the sides: what the plan's steps act on."""

    need: tuple[str, ...]  # source files the target lacks or holds with another size
    fetch: tuple[str, ...]  # of those, the ones the staging does not hold whole
    clear: bool  # the staging holds leftovers that do not fit: it starts afresh
    extra: int  # target files the source lacks (left in place)


def work(state: State) -> Work:
    source, target = state.source or {}, state.target or {}
    # Same name means same content (content-addressed); a different size means a damaged copy.
    need = tuple(sorted(n for n, size in source.items() if target.get(n) != size))
    staged = state.staged or {}
    clear = state.staged is not None and (not need or bool(set(staged) - set(need)))
    kept = {} if clear else staged
    fetch = tuple(n for n in need if kept.get(n) != source[n])
    return Work(need, fetch, clear, len(set(target) - set(source)))


def decide(state: State, p: Params) -> plan.Plan:
    db = p.directory
    if state.refused is not None:
        return plan.blocked(state.refused, db=db)
    if state.source is None:
        why = f"source filestore {p.source.path(db)} does not exist (or is not readable)"
        return plan.blocked(why, db=db)
    source, w = state.source, work(state)
    staging = p.target.path(p.staging)
    details: dict[str, Any] = {
        "db": db,
        "files": len(source),
        "bytes": sum(source.values()),
        "verify": p.verify,
        "missing": len(w.need),
        "reused_from_staging": len(w.need) - len(w.fetch),
        "fetch_files": len(w.fetch),
        "fetch_bytes": sum(source[n] for n in w.fetch),
    }
    steps = [plan.Step("clear-staging", f"remove the leftovers in {staging}")] if w.clear else []
    if not w.need:
        return plan.of(*steps, **details)
    target, existed = p.target.path(db), state.target is not None
    if w.fetch:
        says = f"tar {len(w.fetch)} files ({details['fetch_bytes']} bytes) into {staging}"
        steps.append(plan.Step("copy", says))
    if p.verify != "none":
        steps.append(plan.Step("verify", f"{p.verify}: the {len(w.need)} staged files"))
    if existed:
        steps.append(plan.Step("publish", f"hard-link the staged files into {target}"))
    else:
        steps.append(plan.Step("publish", f"rename {staging} to {target}"))
    if existed and p.verify != "none":
        steps.append(plan.Step("check", f"every source file in {target}, by size"))
    return plan.of(*steps, **details)


def preview(job: runner.Job, p: Params) -> plan.Plan:
    job.bind(tenant=p.subdomain or p.directory)
    return decide(observe(p, job.deadline), p)


# --------------------------------------------------------------------------- apply


def run(job: runner.Job, p: Params) -> Done:
    """Observe both sides, send the difference, verify it, publish it, check the result."""
    job.bind(tenant=p.subdomain or p.directory)
    job.step("observe")
    state = observe(p, job.deadline)
    steps = decide(state, p)
    steps.require_unblocked(db=p.directory)
    assert state.source is not None  # a missing source is a blocked plan
    w, facts = work(state), dict(steps.details or {})
    if w.extra:
        job.log.warning("target has files the source lacks; left in place", files=w.extra)
    details = {k: facts[k] for k in ("db", "files", "bytes", "verify")}
    if w.need:
        job.log.info("plan", **{k: facts[k] for k in PLAN_FACTS})
    plan.apply(job, steps, _actions(job, p, state, w))
    if not w.need:
        job.log.info("target already complete", **details)
        return Done("unchanged", {**details, "copied_files": 0, "copied_bytes": 0})
    details.update(copied_files=len(w.need), copied_bytes=sum(state.source[n] for n in w.need))
    job.log.info("filestore copied", **details)
    return Done("updated" if state.target is not None else "created", details)


def _actions(
    job: runner.Job, p: Params, state: State, w: Work
) -> dict[str, Callable[[plan.Step], object]]:
    assert state.source is not None
    source, dl, db = state.source, job.deadline, p.directory

    def clear(_: plan.Step) -> None:
        fs.clear(p.target, p.staging, deadline=dl)

    def copy(_: plan.Step) -> None:
        fs.make_dir(p.target, p.staging, deadline=dl)
        fs.tar_pipe(p.source, db, p.target, p.staging, list(w.fetch), source, deadline=dl,
                    interval=p.progress_interval, report=_reporter(job, len(w.fetch)))  # fmt: skip

    def verify(_: plan.Step) -> None:
        staged = fs.observe(p.target, [p.staging], deadline=dl).get(p.staging, {})
        _check_sizes(source, staged, list(w.need), where="staging")
        if p.verify == "sha1":
            _check_sha1(p, [n for n in w.need if filestore.is_content_name(n)], dl)

    def publish(_: plan.Step) -> None:
        if state.target is None:
            # The common case: the whole directory appears at once.
            fs.rename(p.target, p.staging, db, deadline=dl)
            return
        # Merge: each file appears whole (a link to the verified staged inode), then the staging
        # goes. A crash in between leaves complete files on both sides; a re-run finishes.
        fs.merge(p.target, p.staging, db, deadline=dl)
        fs.clear(p.target, p.staging, deadline=dl)

    def check(_: plan.Step) -> None:
        # After a merge the target as a whole is checked; a renamed staging was checked already.
        final = fs.observe(p.target, [db], deadline=dl).get(db, {})
        _check_sizes(source, final, sorted(source), where="target")

    return {"clear-staging": clear, "copy": copy, "verify": verify, "publish": publish,
            "check": check}  # fmt: skip


def _reporter(job: runner.Job, of_files: int) -> Callable[[fs.Progress, float], None]:
    def report(progress: fs.Progress, elapsed: float) -> None:
        rate = progress.bytes / elapsed if elapsed > 0 else 0.0
        job.log.info("progress", files=progress.files, of_files=of_files,
                     bytes=progress.bytes, mb_per_s=round(rate / 1e6, 1))  # fmt: skip

    return report


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


def _check_sha1(p: Params, names: list[str], dl: retry.Deadline) -> None:
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


filestore_copy = params.command(
    "filestore-copy",
    Params,
    run,
    preview,
    "Copy {root}/{db} from the source side to the target side, staged and verified.",
)
