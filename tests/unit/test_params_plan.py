"""The parameters builder and the plan: pure Python, no service."""

from __future__ import annotations

import click
import pytest

from jobs.core import params, plan, runner
from jobs.core.errors import ConflictError, JobError, UsageError


@params.spec
class _Params(params.Common):
    subdomain: str = params.subdomain()
    count: int = params.option("--count", "PLANA_TEST_COUNT", "How many.",
                               type=click.IntRange(1), default=1)  # fmt: skip

    def __post_init__(self) -> None:
        if self.count > 3 and self.subdomain == "acme":
            raise UsageError("count", "at most 3 for acme")


def test_options_put_the_common_ones_last() -> None:
    names = [n for n, _ in params.options(_Params)]
    assert names == ["subdomain", "count", "base_domain", "timeout", "dry_run"]


def test_a_check_across_fields_names_the_flag_and_its_variable() -> None:
    with pytest.raises(UsageError) as err:
        params.build(_Params, {"subdomain": "acme", "count": 4, "base_domain": "x.test",
                               "timeout": None, "dry_run": False})  # fmt: skip
    assert err.value.message == "--count / PLANA_TEST_COUNT: at most 3 for acme"


def test_the_params_object_is_frozen() -> None:
    p = params.build(_Params, {"subdomain": "acme", "count": 2, "base_domain": "x.test",
                               "timeout": None, "dry_run": False})  # fmt: skip
    with pytest.raises(AttributeError):
        p.count = 3  # type: ignore[misc]  # the point: frozen


def test_a_rule_keeps_the_rules_message() -> None:
    with pytest.raises(click.BadParameter) as err:
        params.SUBDOMAIN.convert("Acme", None, None)
    assert "lowercase DNS label" in err.value.message


def test_required_options_say_so_in_help() -> None:
    cmd = params.command("t", _Params, lambda job, p: None, lambda job, p: plan.of(), "Test.")
    text = cmd.get_help(click.Context(cmd))
    assert "PLANA_SUBDOMAIN; required" in " ".join(text.split())


def test_apply_runs_the_steps_in_order_and_refuses_an_unknown_one() -> None:
    done: list[str] = []
    job = runner.Job("t")
    steps = plan.of(plan.Step("a", "first"), None, plan.Step("b", "second"))
    plan.apply(job, steps, {"a": lambda s: done.append(s.name), "b": lambda s: done.append(s.name)})
    assert done == ["a", "b"]
    with pytest.raises(JobError, match="no action"):
        plan.apply(job, plan.of(plan.Step("c", "third")), {})


def test_a_blocked_plan_is_a_conflict() -> None:
    with pytest.raises(ConflictError, match="someone else's"):
        plan.apply(runner.Job("t"), plan.blocked("someone else's database"), {})


def test_a_dry_run_never_enters_a_step() -> None:
    job = runner.Job("t", dry_run=True)
    with pytest.raises(JobError, match="dry run reached step"):
        job.step("clone")
    done = plan.dry_run(job, plan.of(plan.Step("clone", "CREATE DATABASE x")))
    assert done.outcome == "planned"
    assert done.details["steps"] == [{"step": "clone", "says": "CREATE DATABASE x"}]
