"""Attacks on the isolation and trust guarantees: each case once broke them.

Real PostgreSQL, real sets written by `plana-job backup`, jobs run as processes.
"""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from jobs.core import naming
from tests.support.backup import tree, verify_args
from tests.support.deprovision import files_in
from tests.support.harness import BIN, Runner


def test_an_unlisted_plain_data_file_planted_in_a_directory_dump_is_refused(
    world: dict[str, Any], run_job: Runner, pg_dsn: str
) -> None:
    """pg_restore reads `NNNN.dat` before the signed `NNNN.dat.gz`: a planted one is a forgery."""
    made = run_job(["backup", *world["args"], "--jobs", "2"])
    assert made.rc == 0, made.output
    set_dir = Path(world["dest"]) / world["sub"] / made.result["set"]
    planted = []
    for gz in sorted((set_dir / "db.dir").glob("*.dat.gz")):
        data = gzip.decompress(gz.read_bytes())
        if b"p1@x.test" in data:
            plain = gz.with_name(gz.name.removesuffix(".gz"))
            plain.write_bytes(data.replace(b"p1@x.test", b"forged@evil.test"))
            planted.append(plain)
    assert planted

    verify = run_job([*verify_args(world), "--jobs", "2"])
    assert verify.rc == 65 and planted[0].name in verify.stderr, verify.output
    restore = run_job(["restore", *world["args"], "--replace", "--jobs", "2"])
    assert restore.rc == 65, restore.output
    with psycopg.connect(pg_dsn, dbname=world["db"], autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM res_partner WHERE email LIKE '%evil%'").fetchone()
    assert row == (0,)


@pytest.mark.parametrize(
    ("args", "env", "named"),
    [
        (["backup", "--subdomain", "fz", "--backup-key-file", "\udcff"], {}, "--backup-key-file"),
        (["tenant-db", "--pg-dsn=postgresql://\udcfe@h/x"], {}, "--pg-dsn"),
        (["restore", "--subdomain", "fz"], {"PLANA_OWNER_ROLE": "\udcfe"}, "PLANA_OWNER_ROLE"),
        (["upgrade", "--strategy", "nonsense", "--subdomain", "fz"], {}, "strategy"),
    ],
)
def test_undecodable_or_refused_group_input_is_64_with_one_line(
    run_job: Runner, tmp_path: Path, args: list[str], env: dict[str, str], named: str
) -> None:
    """Non-UTF-8 bytes (held as lone surrogates) crashed the result encoder (exit 1) or the
    driver (70); a group's own refusal escaped click as a traceback (exit 1)."""
    proc = subprocess.run(
        [str(BIN / "plana-job"), *args],
        env={**run_job.env, **env, "PLANA_DATA_DIR": str(tmp_path / "data")},
        capture_output=True,
    )
    err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
    assert proc.returncode == 64, err
    assert len(err) == 1 and err[0].startswith(f"plana-job {args[0]}: error: "), err
    assert named in err[0]
    assert not (tmp_path / "data").exists()


def test_deprovision_leaves_the_hidden_leftovers_of_the_same_subdomain_under_a_longer_domain(
    setup: dict[str, Any], run_job: Runner
) -> None:
    """`.{sub}.planapulse.app.example.clone.partial` is tenant {sub} of `planapulse.app.example`,
    never the `clone.partial`-tailed leftover of {sub} of `planapulse.app`."""
    root = setup["data_dir"] / "filestore"
    other = naming.db_name(setup["sub"], naming.DEFAULT_BASE_DOMAIN + ".example")
    theirs = [other, f".{other}.clone.partial", f".{other}.trash-0badc0de", f".{other}.old"]
    for name in theirs:
        files_in(root / name, 2)
    before = {name: tree(root / name) for name in theirs}
    done = run_job(["deprovision", *setup["args"]])
    assert done.rc == 0, done.output
    assert not any(other in name for name in done.result["filestores"]), done.result
    assert {name: tree(root / name) for name in theirs} == before
