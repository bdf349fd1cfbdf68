"""erp-callback against the ERP stand-in (tests/support/servers/erp.py), over JSON-RPC and
JSON-2."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import JobRun, Runner
from tests.support.servers.erp import Erp, ErpServer, InternalError, ValidationError

APIS = ["jsonrpc", "json2"]


@pytest.fixture
def erp() -> Iterator[ErpServer]:
    with ErpServer(
        Erp(db="plana_erp", login="jobs@plana.test", api_key=secrets.token_hex(20))
    ) as s:
        yield s


@pytest.fixture
def key_file(tmp_path: Path, erp: ErpServer) -> str:
    path = tmp_path / "erp-key"
    path.write_text(erp.erp.api_key + "\n")
    return str(path)


def spec(sub: str = "acme", tier: str = "pro", version: str = "18") -> list[str]:
    return ["--subdomain", sub, "--project-id", "23", "--tier", tier, "--odoo-version", version]


def callback(
    run_job: Runner, erp: ErpServer, key_file: str, api: str, *args: str, **env: str
) -> JobRun:
    base = {
        "PLANA_ERP_URL": erp.url,
        "PLANA_ERP_DB": erp.erp.db,
        "PLANA_ERP_LOGIN": erp.erp.login,
        "PLANA_ERP_API_KEY_FILE": key_file,
        "PLANA_ERP_API": api,
    }
    return run_job.run(["erp-callback", *(args or spec())], {**base, **env})


def methods(erp: ErpServer) -> list[str]:
    return [c.method for c in erp.erp.calls if c.method != "authenticate"]


@pytest.mark.parametrize("api", APIS)
def test_creates_then_unchanged(run_job: Runner, erp: ErpServer, key_file: str, api: str) -> None:
    run = callback(run_job, erp, key_file, api)
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"
    (rid,) = erp.erp.records
    assert run.result["record_id"] == rid
    record = erp.erp.records[rid]
    assert {k: record[k] for k in ("subdomain", "project_id", "tier", "odoo_version",
                                   "hostname", "state")} == {
        "subdomain": "acme", "project_id": 23, "tier": "pro", "odoo_version": "18",
        "hostname": "acme.planapulse.app", "state": "active",
    }  # fmt: skip
    assert methods(erp) == ["search_read", "create"]
    assert {c.api for c in erp.erp.calls} == {api}
    assert erp.erp.api_key not in run.output

    erp.erp.calls.clear()
    again = callback(run_job, erp, key_file, api)
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "unchanged"
    assert methods(erp) == ["search_read"]
    assert len(erp.erp.records) == 1


@pytest.mark.parametrize("api", APIS)
def test_writes_only_what_changed(run_job: Runner, erp: ErpServer, key_file: str, api: str) -> None:
    assert callback(run_job, erp, key_file, api).rc == 0
    erp.erp.calls.clear()
    run = callback(run_job, erp, key_file, api, *spec(tier="enterprise", version="19"))
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "updated"
    assert run.result["changed"] == ["odoo_version", "tier"]
    (write,) = [c for c in erp.erp.calls if c.method == "write"]
    assert write.payload["vals"] == {"tier": "enterprise", "odoo_version": "19"}
    (record,) = erp.erp.records.values()
    assert (record["tier"], record["odoo_version"], record["project_id"]) == (
        "enterprise",
        "19",
        23,
    )


def test_concurrent_runs_make_one_record(run_job: Runner, erp: ErpServer, key_file: str) -> None:
    env = {"PLANA_ERP_URL": erp.url, "PLANA_ERP_DB": erp.erp.db, "PLANA_ERP_LOGIN": erp.erp.login,
           "PLANA_ERP_API_KEY_FILE": key_file, "PLANA_ERP_API": "jsonrpc"}  # fmt: skip
    procs = [run_job.popen(["erp-callback", *spec()], **env) for _ in range(4)]
    runs = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        runs.append(JobRun(proc.returncode, out, err, ""))
    assert [r.rc for r in runs] == [0] * 4, "\n".join(r.output for r in runs)
    assert sorted(r.result["outcome"] for r in runs).count("created") == 1
    assert len(erp.erp.records) == 1


def test_a_lost_create_race_continues_as_update(
    run_job: Runner, erp: ErpServer, key_file: str
) -> None:
    # The record appears between our search and our create (another run created it, with an
    # older tier): the create is refused by the unique subdomain, and the job updates it.
    erp.erp.raise_on["create"] = ValidationError("A subscription for this subdomain exists.")
    original = erp.erp.search_read

    def search_then_appear(*args: Any, **kwargs: Any) -> Any:
        found = original(*args, **kwargs)
        if not erp.erp.records:
            erp.erp.records[7] = {"subdomain": "acme", "project_id": 23, "tier": "starter",
                                  "odoo_version": "18", "hostname": "acme.planapulse.app",
                                  "state": "active", "active": True}  # fmt: skip
        return found

    # One instance's method replaced for this test: mypy refuses assigning to a method.
    erp.erp.search_read = search_then_appear  # type: ignore[method-assign]
    run = callback(run_job, erp, key_file, "json2")
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "updated"
    assert run.result["record_id"] == 7
    assert erp.erp.records[7]["tier"] == "pro"
    assert methods(erp) == ["search_read", "create", "search_read", "write"]


@pytest.mark.parametrize("api", APIS)
def test_a_rejected_key_is_78(run_job: Runner, erp: ErpServer, tmp_path: Path, api: str) -> None:
    wrong = tmp_path / "wrong"
    wrong_key = secrets.token_hex(20)
    wrong.write_text(wrong_key)
    run = callback(run_job, erp, str(wrong), api)
    assert run.rc == 78, run.output
    assert "PLANA_ERP_API_KEY_FILE" in run.stderr
    assert wrong_key not in run.output
    assert erp.erp.records == {}


@pytest.mark.parametrize("api", APIS)
def test_access_error_is_78(run_job: Runner, erp: ErpServer, key_file: str, api: str) -> None:
    erp.erp.readonly_user = True
    run = callback(run_job, erp, key_file, api)
    assert run.rc == 78, run.output
    assert "AccessError" in run.stderr


@pytest.mark.parametrize("api", APIS)
def test_validation_error_is_65(run_job: Runner, erp: ErpServer, key_file: str, api: str) -> None:
    erp.erp.raise_on["create"] = ValidationError("The tier does not match the plan.")
    run = callback(run_job, erp, key_file, api)
    assert run.rc == 65, run.output
    assert "ValidationError" in run.stderr and "does not match the plan" in run.stderr
    assert erp.erp.api_key not in run.output


@pytest.mark.parametrize("api", APIS)
def test_server_errors_are_retried(
    run_job: Runner, erp: ErpServer, key_file: str, api: str
) -> None:
    erp.erp.fail_next = [503, 502]
    erp.erp.raise_next = [InternalError("could not serialize access due to concurrent update")]
    run = callback(run_job, erp, key_file, api)
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"
    retried = [x["error"] for x in run.logs if x["event"] == "retrying"]
    assert len(retried) == 3
    assert "SerializationFailure" in retried[2]


def test_a_server_error_that_lasts_is_75(run_job: Runner, erp: ErpServer, key_file: str) -> None:
    erp.erp.fail_next = [502] * 100
    run = callback(run_job, erp, key_file, "json2", PLANA_TIMEOUT="2")
    assert run.rc == 75, run.output
    assert "retry budget exhausted" in run.stderr


@pytest.mark.parametrize("api", APIS)
def test_an_unknown_field_is_78(run_job: Runner, erp: ErpServer, key_file: str, api: str) -> None:
    run = callback(run_job, erp, key_file, api, PLANA_ERP_FIELDS="state=x_plana_state")
    assert run.rc == 78, run.output
    assert "x_plana_state" in run.stderr


def test_field_names_are_configurable(run_job: Runner, erp: ErpServer, key_file: str) -> None:
    run = callback(run_job, erp, key_file, "jsonrpc", PLANA_ERP_FIELDS="hostname=name")
    assert run.rc == 0, run.output
    (record,) = erp.erp.records.values()
    assert record["name"] == "acme.planapulse.app"


def test_duplicates_in_the_erp_are_65(run_job: Runner, erp: ErpServer, key_file: str) -> None:
    for rid in (1, 2):
        erp.erp.records[rid] = {"subdomain": "acme", "tier": "pro", "active": True}
    run = callback(run_job, erp, key_file, "jsonrpc")
    assert run.rc == 65, run.output
    assert methods(erp) == ["search_read"]


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"PLANA_ERP_API": "xmlrpc"}, "--erp-api / PLANA_ERP_API: 'xmlrpc' is not one of"),
        ({"PLANA_ERP_URL": ""}, "--erp-url / PLANA_ERP_URL: is required"),
        ({"PLANA_ERP_URL": "erp.plana.test"},
         "--erp-url / PLANA_ERP_URL: must be an http:// or https:// URL"),
        ({"PLANA_ERP_DB": ""}, "--erp-db / PLANA_ERP_DB: is required with --erp-api jsonrpc"),
        ({"PLANA_ERP_LOGIN": ""},
         "--erp-login / PLANA_ERP_LOGIN: is required with --erp-api jsonrpc"),
        ({"PLANA_ERP_DB": "no such/db"}, "--erp-db / PLANA_ERP_DB: must be a database name"),
        ({"PLANA_ERP_MODEL": "Robert'); DROP"},
         "--erp-model / PLANA_ERP_MODEL: must be an Odoo model name"),
        ({"PLANA_ERP_FIELDS": "colour=x_colour"},
         "--erp-fields / PLANA_ERP_FIELDS: expected name=erp_field"),
        ({"PLANA_ERP_STATE": "Active Now"},
         "--state / PLANA_ERP_STATE: must be a lowercase selection value"),
        # A secret file not given at all is bad input (64); given but absent is 78 (below).
        ({"PLANA_ERP_API_KEY_FILE": ""},
         "--erp-api-key-file / PLANA_ERP_API_KEY_FILE: is required"),
    ],
)
def test_bad_input_is_64_before_any_request(
    run_job: Runner, erp: ErpServer, key_file: str, env: dict[str, str], field: str
) -> None:
    run = callback(run_job, erp, key_file, "jsonrpc", **env)
    assert run.rc == 64, run.output
    assert run.stderr.strip().splitlines()[-1].startswith(f"plana-job erp-callback: error: {field}")
    assert erp.erp.calls == []


def test_a_missing_key_file_is_78(run_job: Runner, erp: ErpServer, tmp_path: Path) -> None:
    run = callback(run_job, erp, str(tmp_path / "absent"), "json2")
    assert run.rc == 78, run.output
    assert erp.erp.calls == []


MUTATING = {"create", "write"}


@pytest.mark.parametrize("api", APIS)
def test_dry_run_plans_and_writes_nothing(
    run_job: Runner, erp: ErpServer, key_file: str, api: str
) -> None:
    run = callback(run_job, erp, key_file, api, *spec(), "--dry-run")
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "planned"
    assert run.result["dry_run"] is True
    assert [s["step"] for s in run.result["steps"]] == ["create"]
    assert methods(erp) == ["search_read"]
    assert erp.erp.records == {}

    # A record that differs: the plan is the write of what differs, and nothing is written.
    assert callback(run_job, erp, key_file, api).rc == 0
    (rid,) = erp.erp.records
    stored = dict(erp.erp.records[rid])
    erp.erp.calls.clear()
    changed = callback(run_job, erp, key_file, api, *spec(tier="enterprise"), PLANA_DRY_RUN="1")
    assert changed.rc == 0, changed.output
    assert changed.result["outcome"] == "planned"
    assert [s["step"] for s in changed.result["steps"]] == ["write"]
    assert changed.result["changed"] == ["tier"]
    assert changed.result["record_id"] == rid
    assert not MUTATING & set(methods(erp))
    assert erp.erp.records == {rid: stored}

    # The record as wanted: an empty plan.
    converged = callback(run_job, erp, key_file, api, *spec(), "--dry-run")
    assert converged.rc == 0, converged.output
    assert converged.result["steps"] == []
    assert not MUTATING & set(methods(erp))
    assert erp.erp.records == {rid: stored}


def test_dry_run_of_duplicates_is_65_and_writes_nothing(
    run_job: Runner, erp: ErpServer, key_file: str
) -> None:
    for rid in (1, 2):
        erp.erp.records[rid] = {"subdomain": "acme", "tier": "pro", "active": True}
    run = callback(run_job, erp, key_file, "json2", *spec(), "--dry-run")
    assert run.rc == 65, run.output
    assert "several records" in run.stderr
    assert methods(erp) == ["search_read"]
    assert erp.erp.records == {rid: {"subdomain": "acme", "tier": "pro", "active": True}
                               for rid in (1, 2)}  # fmt: skip
