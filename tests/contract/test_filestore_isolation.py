"""A tenant's filestore is walked by descriptor: nothing outside its own tree is read, written or
removed, and no job's staging carries one tenant's files into another.

The tenant's Odoo writes its own filestore, so any directory in it may be a symlink: to another
tenant's filestore, or to a secret mounted in the job's pod. Races are made deterministic: a
`tar` shim swaps the directory for a symlink at the instant a path-based archiver would open it,
and the walk itself is driven in-process with the swap made between its listing and its open.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import psycopg

from jobs.adapters import filestore
from jobs.core import fstree, naming
from tests.support.backup import make_tenant, seal, write_manifest
from tests.support.harness import OWNER_ROLE, STANDINS, Runner, database_names
from tests.support.tenant_db import db_of, ensure_role, tenant_args

SECRET = b"password=hunter2-not-yours"


def _files(root: Path) -> dict[str, bytes]:
    """Every regular file under root (no link followed), dot-names included: name → bytes."""
    out: dict[str, bytes] = {}
    for dirpath, _dirs, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.is_file() and not path.is_symlink():
                out[str(path.relative_to(root))] = path.read_bytes()
    return out


def _put(root: Path, content: bytes) -> str:
    sha = hashlib.sha1(content).hexdigest()
    (root / sha[:2]).mkdir(parents=True, exist_ok=True)
    (root / sha[:2] / sha).write_bytes(content)
    return f"{sha[:2]}/{sha}"


def _tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        out = {}
        for member in tar.getmembers():
            if member.isfile():
                fh = tar.extractfile(member)
                assert fh is not None
                out[member.name] = fh.read()
        return out


# ---------------------------------------------------------------------------- the walk itself


def test_walk_never_follows_a_directory_swapped_for_a_symlink_after_its_listing(
    tmp_path: Path,
) -> None:
    root, outside = tmp_path / "fs", tmp_path / "outside"
    mine = _put(root, b"the tenant's own attachment")
    victim = _put(root, b"a file in the directory that will be swapped")
    outside.mkdir()
    (outside / Path(victim).name).write_bytes(SECRET)
    (outside / "pg_service.conf").write_bytes(SECRET)
    (root / "link").symlink_to(outside)  # a symlink from the start: never listed

    fd = fstree.open_root(root)
    assert fd is not None
    out = tmp_path / "fs.tar"
    out_fd = os.open(out, os.O_WRONLY | os.O_CREAT, 0o644)
    seen: list[str] = []
    try:
        tar = fstree.TarWriter(out_fd)
        for rel, dir_fd, files in fstree.walk(fd):
            if rel == "":
                # The root is listed (its subdirectories too) before it is yielded: swap the
                # victim's directory for a symlink now, between the listing and the open.
                swapped = root / Path(victim).parent
                if swapped.name != Path(mine).parent.name:
                    os.rename(swapped, tmp_path / "aside")
                    swapped.symlink_to(outside)
            for name, _size in files:
                seen.append(f"{rel}/{name}" if rel else name)
                tar.add(dir_fd, name, seen[-1])
        tar.close()
    finally:
        os.close(out_fd)
        os.close(fd)
    assert mine in seen and victim not in seen
    assert SECRET not in out.read_bytes()
    assert _tar_members(out) == {mine: b"the tenant's own attachment"}
    # A file swapped for a symlink is not opened either; nor is a symlinked root.
    os.symlink(outside / "pg_service.conf", root / "planted")
    parent = fstree.open_root(root)
    assert parent is not None
    try:
        assert fstree.open_file(parent, "planted") is None
    finally:
        os.close(parent)
    (tmp_path / "root-link").symlink_to(root)
    try:
        fstree.open_root(tmp_path / "root-link")
        raise AssertionError("a symlinked root was opened")
    except filestore.FilestoreError:
        pass


def test_a_staging_tree_is_published_as_exactly_the_source_files(tmp_path: Path) -> None:
    src, dst, other = tmp_path / "tpl", tmp_path / "fs" / "x", tmp_path / "other"
    names = {_put(src, f"template file {i}".encode()) for i in range(5)}
    other.mkdir()
    (other / "keep.txt").write_bytes(b"another tenant's")
    stage = filestore.staging_path(dst)  # the stage a tenant-db (re)uses
    foreign = _put(stage, b"a file of another tenant, left by a killed job")
    (stage / "notes.txt").write_bytes(b"not from the template")
    (stage / "link").symlink_to(other)
    first = sorted(names)[0]
    (stage / first).parent.mkdir(parents=True, exist_ok=True)
    (stage / first).symlink_to(other / "keep.txt")  # a link where a template file goes

    filestore.copy_tree(src, dst)

    assert set(_files(dst)) == names and foreign not in _files(dst)
    assert not (dst / "link").is_symlink() and not (dst / first).is_symlink()
    assert _files(other) == {"keep.txt": b"another tenant's"}


def test_copy_tree_refuses_symlinked_roots_and_writes_nothing_through_them(
    tmp_path: Path,
) -> None:
    src, other = tmp_path / "tpl", tmp_path / "other"
    _put(src, b"template")
    _put(other, b"other tenant")
    before = _files(other)
    (tmp_path / "fs").mkdir()
    dst = tmp_path / "fs" / "x"
    dst.symlink_to(other)  # the tenant's filestore is a link to another tenant's
    for args in ((src, dst), (dst, tmp_path / "fs" / "y")):
        try:
            filestore.copy_tree(*args)
            raise AssertionError(f"copy_tree{args} followed a symlinked filestore")
        except filestore.FilestoreError:
            pass
    assert _files(other) == before
    assert not (tmp_path / "fs" / "y").exists()


def test_discard_removes_a_symlink_and_never_its_target(tmp_path: Path) -> None:
    other = tmp_path / "other"
    _put(other, b"another tenant's attachment")
    before = _files(other)
    parent = tmp_path / "filestore"
    parent.mkdir()
    fs = parent / "x"
    fs.symlink_to(other)
    (parent / ".x.trash-0badc0de").symlink_to(other)  # left by an earlier, link-following run

    assert filestore.discard(fs)
    assert sorted(os.listdir(parent)) == []  # no link left, no `.trash-` entry
    assert _files(other) == before

    stage = filestore.staging_path(fs, "restore")  # deprovision sweeps every job's stage
    stage.symlink_to(other)
    assert filestore.discard_staging(fs) == [stage]
    assert sorted(os.listdir(parent)) == [] and _files(other) == before


# ---------------------------------------------------------------------------- the jobs


def _tar_shim(tmp_path: Path, script: str) -> str:
    """A `tar` first on PATH that runs `script` (sh) and then the real tar."""
    shims = tmp_path / "shims"
    shims.mkdir()
    shim = shims / "tar"
    shim.write_text(f"#!/bin/sh\n{script}\n")
    shim.chmod(0o755)
    return str(shims)


def test_backup_never_archives_a_file_outside_the_tenants_tree(
    pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str], run_job: Runner
) -> None:
    drop_dbs.append(f"{uid}%")
    data_dir, dest = tmp_path / "data", tmp_path / "backups"
    dest.mkdir()
    db = make_tenant(pg_dsn, uid, data_dir)
    fs = naming.filestore(db, data_dir)
    victim = _put(fs, b"an attachment whose directory the tenant swaps")
    outside = tmp_path / "pod-secrets"
    outside.mkdir()
    (outside / Path(victim).name).write_bytes(SECRET)
    # Swapped at the instant a path-based archiver starts: after the job's listing.
    swap = (
        f'if [ -d "{fs / Path(victim).parent}" ] && [ ! -L "{fs / Path(victim).parent}" ]; then'
        f' mv "{fs / Path(victim).parent}" "{tmp_path / "aside"}";'
        f' ln -s "{outside}" "{fs / Path(victim).parent}"; fi\nexec /usr/bin/tar "$@"'
    )
    path = _tar_shim(tmp_path, swap) + os.pathsep + run_job.env["PATH"]
    args = ["backup", "--subdomain", uid, "--dest", str(dest), "--data-dir", str(data_dir)]
    done = run_job(args, PATH=path)
    assert done.rc == 0, done.output
    (set_dir,) = [p for p in (dest / uid).iterdir() if not p.name.startswith(".")]
    archive = (set_dir / "filestore.tar").read_bytes()
    assert SECRET not in archive
    assert SECRET not in b"".join(p.read_bytes() for p in set_dir.rglob("*") if p.is_file())

    # The whole filestore a link to another tenant's: refused, nothing of theirs archived.
    other = tmp_path / "data" / "filestore" / "someone-else"
    _put(other, b"another tenant's invoice")
    before = _files(other)
    os.rename(fs, tmp_path / "own-aside")
    fs.symlink_to(other)
    refused = run_job(args)
    assert refused.rc == 65, refused.output
    assert "symlink" in refused.stderr
    for p in (dest / uid).rglob("filestore.tar"):
        assert b"another tenant's invoice" not in p.read_bytes()
    assert _files(other) == before


def test_environment_copy_refuses_a_production_filestore_linked_elsewhere(
    pg_dsn: str, uid: str, tmp_path: Path, drop_dbs: list[str], run_job: Runner
) -> None:

    drop_dbs.append(f"{uid}%")
    data_dir = tmp_path / "data"
    db = make_tenant(pg_dsn, uid, data_dir, partners=5)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        ensure_role(conn, OWNER_ROLE)
    fs = naming.filestore(db, data_dir)
    outside = tmp_path / "pod-secrets"
    outside.mkdir()
    (outside / "pg_service.conf").write_bytes(SECRET)
    os.rename(fs, tmp_path / "own-aside")
    fs.symlink_to(outside)
    args = ["environment-db", "--subdomain", uid, "--env", "staging", "--copy-from-production",
            "--data-dir", str(data_dir), "--generation", "1",
            "--odoo-bin", str(STANDINS / "odoo")]  # fmt: skip
    done = run_job(args)
    assert done.rc == 65, done.output
    for dirpath, _dirs, names in os.walk(data_dir / "filestore"):
        for name in names:
            path = Path(dirpath) / name
            if not path.is_symlink() and path.is_file():
                assert SECRET not in path.read_bytes(), path
    assert (outside / "pg_service.conf").read_bytes() == SECRET


def test_tenant_db_refuses_a_filestore_linked_to_another_tenants(
    template: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(f"{uid}%")
    root = naming.filestore("", template["data_dir"])
    other = root / f"{uid}-other.example"
    _put(other, b"another tenant's attachment")
    before = _files(other)
    fs = naming.filestore(db_of(uid), template["data_dir"])
    fs.symlink_to(other)
    try:
        done = run_job(tenant_args(uid, template))
        assert done.rc == 65, done.output
        assert _files(other) == before  # nothing of the template written into it
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            assert db_of(uid) not in database_names(conn)
    finally:
        fs.unlink()


def test_tenant_db_after_a_killed_restore_of_another_tenant_holds_only_the_template_files(
    template: dict[str, Any], run_job: Runner, pg_dsn: str, uid: str, drop_dbs: list[str]
) -> None:
    drop_dbs.append(f"{uid}%")
    data_dir, dest = template["data_dir"], Path(run_job.tmp) / "backups"
    dest.mkdir()
    source = uid + "-s"
    make_tenant(pg_dsn, source, data_dir)
    s_fs = naming.filestore(naming.db_name(source), data_dir)
    for i in range(20):
        _put(s_fs, f"tenant S's private file {i}".encode())
    s_files = set(_files(s_fs))
    args = ["--subdomain", source, "--dest", str(dest), "--data-dir", str(data_dir)]
    assert run_job(["backup", *args]).rc == 0
    target = uid + "-x"
    # A restore of S into X that stops half-way through the archive: after S's files a member
    # it refuses (a symlink), in a set re-signed with the key, so the refusal comes mid-extraction.
    set_dir = dest / source / sorted(p.name for p in (dest / source).iterdir())[-1]
    archive = set_dir / "filestore.tar"
    with tarfile.open(archive, "a") as tar:
        link = tarfile.TarInfo("ab/not-a-file")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    data = json.loads((set_dir / "manifest.json").read_text())
    seal(set_dir, data, "filestore.tar")
    write_manifest(set_dir, data)
    stopped = run_job(["restore", *args, "--to-subdomain", target, "--as-copy"])
    assert stopped.rc == 65, stopped.output
    x_fs = naming.filestore(naming.db_name(target), data_dir)
    assert not x_fs.exists()
    # And the shared staging name of earlier releases, full of S's files, as a kill left it.
    legacy = x_fs.parent / f".{x_fs.name}.partial"
    for rel in s_files:
        (legacy / rel).parent.mkdir(parents=True, exist_ok=True)
        (legacy / rel).write_bytes((s_fs / rel).read_bytes())

    done = run_job(tenant_args(target, template))
    assert done.rc == 0, done.output
    published = set(_files(x_fs))
    template_files = {
        n for n in _files(naming.filestore(template["name"], data_dir)) if not n.startswith(".")
    }
    assert not published & (s_files - template_files)  # not one of S's files
    assert published == template_files


def _local_copy(run_job: Runner, src_root: Path, dst_root: Path, db: str, **env: str) -> Any:
    return run_job.run(["filestore-copy", "--transport", "local", "--db", db, "--source-root",
                        str(src_root), "--target-root", str(dst_root)], env)  # fmt: skip


def test_filestore_copy_local_never_reads_or_writes_through_a_symlink(
    run_job: Runner, tmp_path: Path
) -> None:
    db = "acme.planapulse.app"
    src_root, dst_root, outside = tmp_path / "src", tmp_path / "dst", tmp_path / "pod-secrets"
    fs = src_root / db
    victim = _put(fs, b"an attachment whose directory the tenant swaps")
    for i in range(5):
        _put(fs, f"attachment {i}".encode())
    outside.mkdir()
    (outside / Path(victim).name).write_bytes(SECRET)
    # A path-based `tar -c` on the source would see the directory swapped as it starts.
    swapped = fs / Path(victim).parent
    swap = (
        f'if [ "$1" = -cf ] && [ ! -L "{swapped}" ]; then mv "{swapped}" "{tmp_path / "aside"}";'
        f' ln -s "{outside}" "{swapped}"; fi\nexec /usr/bin/tar "$@"'
    )
    path = _tar_shim(tmp_path, swap) + os.pathsep + run_job.env["PATH"]
    done = _local_copy(run_job, src_root, dst_root, db, PATH=path)
    assert SECRET not in b"".join(_files(dst_root).values())  # staging included
    assert done.rc == 0, done.output

    # The source filestore a link to another tenant's: refused, nothing copied.
    other = src_root / "other.planapulse.app"
    _put(other, b"another tenant's invoice")
    linked = "linked.planapulse.app"
    (src_root / linked).symlink_to(other)
    refused = _local_copy(run_job, src_root, dst_root, linked)
    assert refused.rc == 65, refused.output
    assert not (dst_root / linked).exists()

    # The target's own directory planted as a link elsewhere: the merge never writes through it.
    (dst_root / db / Path(victim).parent).rename(tmp_path / "target-aside")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (dst_root / db / Path(victim).parent).symlink_to(elsewhere)
    merged = _local_copy(run_job, src_root, dst_root, db)
    assert merged.rc == 65, merged.output
    assert os.listdir(elsewhere) == []
