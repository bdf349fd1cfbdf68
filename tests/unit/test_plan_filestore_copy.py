"""filestore-copy's plan for every state a run can leave (or be killed in): pure, no service."""

from __future__ import annotations

import pytest

from jobs.commands import filestore_copy as fc
from jobs.core import params
from jobs.core.errors import UsageError

DB = "acme.planapulse.app"
SOURCE = {"ab/ab01": 10, "cd/cd02": 20, "checklist/ab/ab01": 0}


def make(*args: str) -> fc.Params:
    """The job's parameters as the command line gives them (click parses, nothing runs)."""
    argv = ["--transport", "local", "--db", DB, "--source-root", "/src", "--target-root", "/dst"]
    ctx = fc.filestore_copy.make_context("filestore-copy", [*argv, *args])
    return params.build(fc.Params, ctx.params)


def names(state: fc.State, *args: str) -> list[str]:
    return list(fc.decide(state, make(*args)).names)


def test_a_fresh_target_is_copied_verified_and_renamed_into_place() -> None:
    steps = fc.decide(fc.State(SOURCE, None, None), make())
    assert steps.names == ("copy", "verify", "publish")
    assert "rename /dst/.acme.planapulse.app.copy.partial" in steps.steps[2].says
    assert steps.details is not None
    assert (steps.details["fetch_files"], steps.details["reused_from_staging"]) == (3, 0)


def test_a_complete_target_needs_nothing() -> None:
    assert names(fc.State(SOURCE, dict(SOURCE), None)) == []


def test_a_complete_target_with_staging_leftovers_only_clears_them() -> None:
    assert names(fc.State(SOURCE, dict(SOURCE), {"ab/ab01": 10})) == ["clear-staging"]


def test_a_run_killed_while_copying_reuses_the_whole_staged_files() -> None:
    staged = {"ab/ab01": 10, "cd/cd02": 7}  # the second cut short by the kill
    steps = fc.decide(fc.State(SOURCE, None, staged), make())
    assert steps.names == ("copy", "verify", "publish")
    assert steps.details is not None
    assert (steps.details["fetch_files"], steps.details["reused_from_staging"]) == (2, 1)
    assert fc.work(fc.State(SOURCE, None, staged)).fetch == ("cd/cd02", "checklist/ab/ab01")


def test_a_run_killed_before_publishing_publishes_without_copying() -> None:
    assert names(fc.State(SOURCE, None, dict(SOURCE))) == ["verify", "publish"]


def test_staging_leftovers_of_another_source_are_cleared_and_everything_sent() -> None:
    staged = {"ab/ab01": 10, "stray": 3}
    steps = fc.decide(fc.State(SOURCE, None, staged), make())
    assert steps.names == ("clear-staging", "copy", "verify", "publish")
    assert steps.details is not None and steps.details["fetch_files"] == 3


def test_missing_and_damaged_files_are_merged_into_an_existing_target_and_checked() -> None:
    target = {"ab/ab01": 4, "checklist/ab/ab01": 0, "zz/old": 1}  # damaged, fine, extra
    state = fc.State(SOURCE, target, None)
    steps = fc.decide(state, make())
    assert steps.names == ("copy", "verify", "publish", "check")
    assert "hard-link" in steps.steps[2].says
    w = fc.work(state)
    assert w.need == ("ab/ab01", "cd/cd02") and w.extra == 1


def test_a_merge_killed_half_way_starts_the_staging_afresh_for_the_rest() -> None:
    # ab01 already linked into the target; the staging still holds both.
    state = fc.State(SOURCE, {"ab/ab01": 10, "checklist/ab/ab01": 0}, dict(SOURCE))
    assert names(state) == ["clear-staging", "copy", "verify", "publish", "check"]
    assert fc.work(state).fetch == ("cd/cd02",)


def test_verify_none_plans_neither_verify_nor_check() -> None:
    assert names(fc.State(SOURCE, {}, None), "--verify", "none") == ["copy", "publish"]


def test_sha1_is_said_in_the_verify_step() -> None:
    steps = fc.decide(fc.State(SOURCE, None, None), make("--verify", "sha1"))
    assert steps.steps[1].says.startswith("sha1:")


def test_a_missing_source_is_blocked() -> None:
    steps = fc.decide(fc.State(None, None, {"ab/ab01": 10}), make())
    assert steps.blocked is not None and "/src/acme.planapulse.app does not exist" in steps.blocked
    assert steps.steps == ()


def test_a_symlinked_filestore_is_blocked() -> None:
    why = "target: /dst/acme.planapulse.app is a symlink or not a directory"
    steps = fc.decide(fc.State(None, None, None, refused=why), make())
    assert steps.blocked == why and steps.steps == ()


def test_the_directory_comes_from_the_subdomain_without_db() -> None:
    ctx = fc.filestore_copy.make_context(
        "filestore-copy",
        ["--transport", "local", "--subdomain", "acme", "--base-domain", "example.test",
         "--source-root", "/a", "--target-root", "/b"],
    )  # fmt: skip
    p = params.build(fc.Params, ctx.params)
    assert p.directory == "acme.example.test"
    assert p.staging == ".acme.example.test.copy.partial"


def test_kubectl_sides_take_their_namespace_from_the_version() -> None:
    ctx = fc.filestore_copy.make_context(
        "filestore-copy",
        ["--db", DB, "--from-version", "17", "--source-pod", "h17", "--to-version", "18",
         "--target-pod", "h18", "--target-container", "odoo"],
    )  # fmt: skip
    p = params.build(fc.Params, ctx.params)
    assert p.source.prefix == ("kubectl", "exec", "-i", "-n", "plana-odoo", "h17", "--")
    assert p.target.prefix == (
        "kubectl", "exec", "-i", "-n", "plana-odoo-18", "h18", "-c", "odoo", "--"
    )  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--transport", "local"], "--db / PLANA_FILESTORE_DB: is required (or --subdomain)"),
        (["--db", DB, "--source-namespace", "a", "--source-pod", "p", "--target-pod", "q"],
         "--target-namespace / PLANA_TARGET_NAMESPACE: is required (or --to-version)"),
        (["--db", DB, "--source-namespace", "a", "--target-namespace", "b", "--target-pod", "q"],
         "--source-pod / PLANA_SOURCE_POD: is required for the kubectl transport"),
        (["--db", DB, "--source-namespace", "a", "--source-pod", "p", "--target-namespace", "a",
          "--target-pod", "p"],
         "--target-pod / PLANA_TARGET_POD: source and target are the same pod and directory"),
    ],
)
def test_checks_across_options_name_the_flag_and_variable(args: list[str], message: str) -> None:
    ctx = fc.filestore_copy.make_context("filestore-copy", args)
    with pytest.raises(UsageError) as err:
        params.build(fc.Params, ctx.params)
    assert err.value.message == message
