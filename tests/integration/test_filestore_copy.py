"""`plana-job filestore-copy` with real GNU tar, between local directories and through a
`kubectl` shim (tests/support/shims/kubectl) that checks the arguments and runs the command
locally."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.harness import ROOT, JobRun, Runner
from tests.support.untouched import Snapshot

SHIMS = ROOT / "tests" / "support" / "shims"
DB = "acme.planapulse.app"


def put(root: Path, content: bytes) -> str:
    """Store `content` the way Odoo does: ab/ab12… named by its sha1, plus its GC marker."""
    sha = hashlib.sha1(content).hexdigest()
    name = f"{sha[:2]}/{sha}"
    (root / sha[:2]).mkdir(parents=True, exist_ok=True)
    (root / name).write_bytes(content)
    (root / "checklist" / sha[:2]).mkdir(parents=True, exist_ok=True)
    (root / "checklist" / name).touch()
    return name


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def source(tmp_path: Path) -> Path:
    fs = tmp_path / "src" / DB
    for i in range(40):
        put(fs, os.urandom(1000 + 37 * i))
    return fs


def local(run_job: Runner, src: Path, dst_root: Path, *more: str, **env: str) -> JobRun:
    return run_job.run(["filestore-copy", "--transport", "local", "--db", DB,
                        "--source-root", str(src.parent), "--target-root", str(dst_root), *more],
                       env)  # fmt: skip


def test_local_copy_created_unchanged_incremental(
    run_job: Runner, source: Path, tmp_path: Path
) -> None:
    os.chown(source, 101, 101)
    for p in source.rglob("*"):
        os.chown(p, 101, 101)  # the v17 image's odoo user
    dst_root = tmp_path / "dst"
    first = local(run_job, source, dst_root, "--progress-interval", "0.1")
    assert first.rc == 0, first.output
    assert first.result["outcome"] == "created"
    assert first.result["files"] == 80 and first.result["copied_files"] == 80
    target = dst_root / DB
    assert tree(target) == tree(source)
    # --no-same-owner: the files belong to the extracting user, not to the source's UID 101.
    assert {p.stat().st_uid for p in target.rglob("*")} == {os.geteuid()}
    assert not (dst_root / f".{DB}.copy.partial").exists()
    assert any(e.get("event") == "progress" for e in first.logs)

    again = local(run_job, source, dst_root)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert again.result["copied_files"] == 0

    # Incremental: one new attachment, one damaged copy on the target; the rest is skipped.
    added = put(source, b"a new attachment")
    damaged = sorted(n for n in tree(source) if not n.startswith("checklist"))[0]
    (target / damaged).write_bytes(b"short")
    third = local(run_job, source, dst_root, "--verify", "sha1")
    assert third.rc == 0 and third.result["outcome"] == "updated", third.output
    assert third.result["copied_files"] == 3  # the new file, its marker, the damaged one
    assert tree(target) == tree(source) and added in tree(target)
    assert not (dst_root / f".{DB}.copy.partial").exists()
    # The source is never written.
    assert not (source.parent / f".{DB}.copy.partial").exists()


def test_interrupted_copy_is_resumed(run_job: Runner, source: Path, tmp_path: Path) -> None:
    """What a killed run leaves in the staging directory is reused or replaced, then published."""
    dst_root = tmp_path / "dst"
    staging = dst_root / f".{DB}.copy.partial"
    names = sorted(n for n in tree(source) if not n.startswith("checklist"))
    for name in names[:10]:  # complete files, as tar wrote them before the kill
        (staging / name).parent.mkdir(parents=True, exist_ok=True)
        (staging / name).write_bytes((source / name).read_bytes())
    (staging / names[10]).parent.mkdir(parents=True, exist_ok=True)
    (staging / names[10]).write_bytes((source / names[10]).read_bytes()[:100])  # cut midway
    done = local(run_job, source, dst_root, "--verify", "sha1")
    assert done.rc == 0 and done.result["outcome"] == "created", done.output
    plan = next(e for e in done.logs if e.get("event") == "plan")
    assert plan["reused_from_staging"] == 10 and plan["fetch_files"] == 70
    assert tree(dst_root / DB) == tree(source) and not staging.exists()

    # Leftovers that do not belong to this source (a stray file) are discarded, not published.
    staging.mkdir()
    (staging / "stray").write_bytes(b"not from the source")
    again = local(run_job, source, dst_root)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output
    assert not staging.exists() and "stray" not in tree(dst_root / DB)


def test_corrupted_file_is_caught_by_sha1(run_job: Runner, source: Path, tmp_path: Path) -> None:
    name = sorted(n for n in tree(source) if not n.startswith("checklist"))[3]
    data = bytearray((source / name).read_bytes())
    data[0] ^= 0xFF  # same size, content no longer matches its name
    (source / name).write_bytes(bytes(data))
    dst_root = tmp_path / "dst"
    bad = local(run_job, source, dst_root, "--verify", "sha1")
    assert bad.rc == 65, bad.output
    assert name in bad.result["error"] and "nothing published" in bad.result["error"]
    assert not (dst_root / DB).exists()  # the target is untouched
    # `names` checks count, sizes and names only: the same source copies (documented).
    names = local(run_job, source, dst_root, "--verify", "names")
    assert names.rc == 0 and names.result["outcome"] == "created", names.output


@pytest.fixture
def open_tmp() -> Iterator[Path]:
    """A directory the pods' users (101, 100) can traverse (pytest's tmp_path is 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="plana-fs-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def pod_source(open_tmp: Path) -> Path:
    fs = open_tmp / "src" / DB
    for i in range(40):
        put(fs, os.urandom(1000 + 37 * i))
    for p in [fs.parent, *fs.parent.rglob("*")]:
        os.chown(p, 101, 101)  # the source volume belongs to the v17 user
    return fs


@pytest.fixture
def pod_target(open_tmp: Path) -> Path:
    root = open_tmp / "dst"
    root.mkdir()
    os.chown(root, 100, 100)  # the target volume belongs to the v18 user
    return root


@pytest.fixture
def kube(run_job: Runner, tmp_path: Path) -> dict[str, str]:
    log = tmp_path / "kubectl.log"
    return {
        "PATH": f"{SHIMS}{os.pathsep}{run_job.env['PATH']}",
        "KUBECTL_SHIM_PODS": "plana-odoo/holder-17=101,plana-odoo-18/holder-18=100",
        "KUBECTL_SHIM_LOG": str(log),
    }


def kubectl_copy(run_job: Runner, src_root: Path, dst_root: Path, kube: dict[str, str],
                 *more: str) -> JobRun:  # fmt: skip
    return run_job.run(["filestore-copy", "--transport", "kubectl", "--db", DB,
                        "--from-version", "17", "--source-pod", "holder-17", "--source-container",
                        "odoo", "--to-version", "18", "--target-pod", "holder-18",
                        "--source-root", str(src_root), "--target-root", str(dst_root), *more],
                       kube)  # fmt: skip


def test_kubectl_transport_between_holder_pods(
    run_job: Runner, pod_source: Path, pod_target: Path, kube: dict[str, str]
) -> None:
    source, dst_root = pod_source, pod_target
    done = kubectl_copy(run_job, source.parent, dst_root, kube, "--verify", "sha1")
    assert done.rc == 0 and done.result["outcome"] == "created", done.output
    assert tree(dst_root / DB) == tree(source)
    # Extracted by the target image's user, whatever the archive says.
    assert {p.stat().st_uid for p in (dst_root / DB).rglob("*")} == {100}
    calls = [json.loads(line) for line in Path(kube["KUBECTL_SHIM_LOG"]).read_text().splitlines()]
    tars = [c for c in calls if "tar" in c]
    src_tar = next(c for c in tars if "-cf" in c)
    dst_tar = next(c for c in tars if "-xf" in c)
    assert src_tar[:8] == ["exec", "-i", "-n", "plana-odoo", "holder-17", "-c", "odoo", "--"]
    assert dst_tar[:6] == ["exec", "-i", "-n", "plana-odoo-18", "holder-18", "--"]
    assert "--no-same-owner" in dst_tar and "--no-same-permissions" in dst_tar
    again = kubectl_copy(run_job, source.parent, dst_root, kube)
    assert again.rc == 0 and again.result["outcome"] == "unchanged", again.output

    # An unknown pod is kubectl's error (exit 1), reported as transient: retried by the Job.
    kube["KUBECTL_SHIM_PODS"] = "plana-odoo-18/holder-18=100"
    lost = kubectl_copy(run_job, source.parent, dst_root, kube)
    assert lost.rc == 75 and "not found" in lost.result["error"], lost.output


def test_failing_source_tar_leaves_target_untouched(
    run_job: Runner, pod_source: Path, pod_target: Path, kube: dict[str, str]
) -> None:
    """`tar -c` exits non-zero (a file its user cannot read) while `tar -x` exits 0."""
    source, dst_root = pod_source, pod_target
    unreadable = sorted(n for n in tree(source) if not n.startswith("checklist"))[-1]
    os.chmod(source / unreadable, 0o000)
    failed = kubectl_copy(run_job, source.parent, dst_root, kube, "--verify", "none")
    assert failed.rc == 75, failed.output
    assert "source: tar -c failed" in failed.result["error"]
    assert "Permission denied" in failed.result["error"]
    assert not (dst_root / DB).exists()  # nothing published, even with --verify none
    os.chmod(source / unreadable, 0o644)
    fixed = kubectl_copy(run_job, source.parent, dst_root, kube)
    assert fixed.rc == 0 and fixed.result["outcome"] == "created", fixed.output
    assert tree(dst_root / DB) == tree(source)


@pytest.mark.parametrize(
    ("args", "field"),
    [
        (["--transport", "ftp"], "--transport / PLANA_FILESTORE_TRANSPORT"),
        (["--verify", "md5"], "--verify / PLANA_FILESTORE_VERIFY"),
        (["--transport", "kubectl", "--db", DB, "--source-pod", "p"],
         "--source-namespace / PLANA_SOURCE_NAMESPACE"),
        (["--transport", "kubectl", "--db", DB, "--from-version", "17", "--source-pod", "p",
          "--to-version", "18"], "--target-pod / PLANA_TARGET_POD"),
        (["--transport", "local", "--db", "../etc"], "--db / PLANA_FILESTORE_DB"),
        (["--transport", "local"], "--db / PLANA_FILESTORE_DB"),  # nor --subdomain
        (["--transport", "local", "--db", DB, "--source-root", "rel"],
         "--source-root / PLANA_SOURCE_ROOT"),
        (["--transport", "local", "--db", DB, "--source-root", "/x", "--target-root", "/x"],
         "--target-root / PLANA_TARGET_ROOT"),
    ],
)
def test_bad_input_is_refused_before_anything(
    run_job: Runner, tmp_path: Path, args: list[str], field: str
) -> None:
    done = run_job(["filestore-copy", *args], PLANA_KUBECTL=str(tmp_path / "no-kubectl"))
    assert done.rc == 64, done.output
    assert done.result["error"].startswith(f"{field}: "), done.output


# --------------------------------------------------------------------------- --dry-run


def test_dry_run_plans_the_copy_and_writes_nothing(
    run_job: Runner, source: Path, tmp_path: Path
) -> None:
    dst_root = tmp_path / "dst"
    dst_root.mkdir()
    roots = [source.parent, dst_root]
    before = Snapshot.take(roots=roots)
    fresh = local(run_job, source, dst_root, "--dry-run")
    assert fresh.rc == 0, fresh.output
    assert fresh.result["outcome"] == "planned" and fresh.result["dry_run"] is True
    assert [s["step"] for s in fresh.result["steps"]] == ["copy", "verify", "publish"]
    assert fresh.result["fetch_files"] == 80
    assert Snapshot.take(roots=roots).diff(before) == []

    # Copied: nothing left to plan.
    assert local(run_job, source, dst_root).rc == 0
    before = Snapshot.take(roots=roots)
    done = local(run_job, source, dst_root, PLANA_DRY_RUN="1")
    assert done.rc == 0, done.output
    assert done.result["outcome"] == "planned" and done.result["dry_run"] is True
    assert done.result["steps"] == []
    assert Snapshot.take(roots=roots).diff(before) == []

    # A source that is not there: blocked (65), dry run or not, and still nothing written.
    missing = run_job(["filestore-copy", "--transport", "local", "--db", "other.planapulse.app",
                       "--source-root", str(source.parent), "--target-root", str(dst_root),
                       "--dry-run"])  # fmt: skip
    assert missing.rc == 65, missing.output
    assert "does not exist" in missing.result["error"]
    assert Snapshot.take(roots=roots).diff(before) == []


def test_dry_run_through_kubectl_only_lists(
    run_job: Runner, pod_source: Path, pod_target: Path, kube: dict[str, str]
) -> None:
    roots = [pod_source.parent, pod_target]
    before = Snapshot.take(roots=roots)
    plan = kubectl_copy(run_job, pod_source.parent, pod_target, kube, "--dry-run")
    assert plan.rc == 0, plan.output
    assert plan.result["outcome"] == "planned" and plan.result["dry_run"] is True
    assert [s["step"] for s in plan.result["steps"]] == ["copy", "verify", "publish"]
    assert Snapshot.take(roots=roots).diff(before) == []
    # The holder pods were asked for listings (one `sh -c` find per side), nothing else.
    calls = [json.loads(line) for line in Path(kube["KUBECTL_SHIM_LOG"]).read_text().splitlines()]
    commands = [c[c.index("--") + 1] for c in calls]
    assert commands == ["sh", "sh"], calls
    assert all("find" in c[c.index("--") + 3] for c in calls)
