"""The Job contract: images/jobs/*.yaml against the Kubernetes schema and against the real CLI.

What a Composition renders must (1) be a valid Job for the cluster, (2) follow the rules every
PLANA Job follows (restartPolicy Never, podFailurePolicy from the exit-code table, termination
message, locked-down securityContext, resources, Secrets as files, /tmp an emptyDir, no TTL),
(3) start a command line the real `plana-job` accepts, with the environment the container
gets (the manifest's env plus the image's ENV), and (4) give every option the job needs a
value: set in the manifest or defaulted. A new subcommand without a manifest fails here.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click
import pytest

from jobs.cli import COMMANDS, cli
from jobs.core import naming
from tests.support.manifests import (
    MANIFESTS,
    Box,
    argv,
    boxes,
    image_env,
    image_target,
    job_spec,
    load,
)

ROOT = Path(__file__).resolve().parents[2]
VALIDATE = Path(sys.executable).parent / "kubernetes-validate"
K8S_VERSION = "1.32.0"  # podFailurePolicy is GA since 1.31
FAIL_JOB_CODES = {64, 65, 78}  # docs/design.md: bad input, conflict, configuration
# The live filestore comes over before the source pass, which seeds the work copy's from it.
UPGRADE_ORDER = ["snapshot", "filestore-copy", "source-pass", "prefix", "target-pass", "cutover"]

# Options without a default that a job may legitimately run without (each has a fallback
# documented in its --help). Anything else that is None after parsing is a missing variable.
OPTIONAL = {
    "pg_dsn",  # libpq's PG* environment instead (checked separately below)
    "timeout",  # the runner's 600 s
    "request_timeout",  # 10 s per HTTP attempt
    "generation",  # optional part of an idempotency key (set where the XR has one)
    "modules", "addons_revision", "addons_path", "odoo_config", "template_db",  # template-build
    "db", "source_namespace", "target_namespace", "source_container", "target_container",
    "source_root", "target_root",  # filestore-copy: derived from the subdomain and versions
    "set_name", "to_subdomain",  # restore/backup-verify: newest set, same tenant
    "erp_fields",  # erp-callback: the field names as they are
    "strategy",  # upgrade: only when no phase is named
    "source_odoo_bin", "target_odoo_bin", "upgrade_path",  # upgrade run / image ENV
    "source_odoo_config", "target_odoo_config",  # upgrade run: default --odoo-config
    "owner_email", "owner_name",  # not used by every PLANAClient job
}  # fmt: skip


ALL = [b for path in MANIFESTS for b in boxes(path)]

def container_env(box: Box) -> dict[str, str]:
    env = image_env(box)
    for item in box.spec.get("env", []):
        # A value from a Secret or the downward API is "set"; its content is not known here.
        env[item["name"]] = item.get("value", "<valueFrom>")
    return env


@contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    for key in list(os.environ):
        if key.startswith(("PLANA_", "PG", "ODOO")):
            del os.environ[key]
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def parse_cli(args: list[str], env: dict[str, str]) -> list[click.Context]:
    """Parse `plana-job …` exactly as the CLI would (options, env vars, conversions).

    Returns the context of every command on the path (group, subcommand, phase); raises
    click.UsageError / BadParameter where the real CLI would exit 64.
    """
    assert args[:1] == ["plana-job"], args
    contexts: list[click.Context] = []
    command: click.Command = cli
    rest, name, parent = args[1:], "plana-job", None
    with environ(env):
        while True:
            ctx = command.make_context(name, list(rest), parent=parent)
            contexts.append(ctx)
            if not isinstance(command, click.Group):
                return contexts
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
            if not rest:
                return contexts
            found, sub, rest = command.resolve_command(ctx, rest)
            assert found is not None and sub is not None
            name, command, parent = found, sub, ctx


def subcommand(box: Box) -> str:
    return argv(box)[1]


def missing_values(contexts: list[click.Context]) -> list[str]:
    """Options the job reads that got no value from args, env or default."""
    missing = []
    for ctx in contexts:
        for param in ctx.command.params:
            if not isinstance(param, click.Option) or not param.expose_value:
                continue  # --help / --version
            if param.name in OPTIONAL:
                continue
            if ctx.params.get(param.name) is None:
                envvar = param.envvar if isinstance(param.envvar, str) else param.opts[0]
                missing.append(f"{ctx.command.name}: {envvar}")
    return missing


def needs_pg(contexts: list[click.Context]) -> bool:
    return any("pg_dsn" in ctx.params for ctx in contexts)


def required_environ_reads() -> set[str]:
    """PLANA_* variables jobs/ reads from os.environ without a default."""
    names: set[str] = set()
    for path in (ROOT / "jobs").rglob("*.py"):
        text = path.read_text()
        names |= set(re.findall(r"os\.environ\[\s*[\"'](PLANA_\w+)[\"']\s*\]", text))
        names |= set(re.findall(r"os\.getenv\(\s*[\"'](PLANA_\w+)[\"']\s*\)", text))
    return names


# -- the set of manifests ----------------------------------------------------------------------


def test_every_subcommand_has_a_manifest() -> None:
    covered = {subcommand(b) for b in ALL}
    missing = set(COMMANDS) - covered
    assert not missing, f"no images/jobs/*.yaml runs: {sorted(missing)}"


def test_tenant_upgrade_runs_the_phases_in_order() -> None:
    """One Job in the target namespace, every phase on that namespace's volume.

    A pod cannot mount another namespace's claim, and the phases' own rules say where the files
    must be: source-pass seeds `filestore/{db}__up{to}` from `filestore/{db}` in its data dir,
    target-pass and cutover need the work copy's filestore in theirs. So the live filestore is
    copied from the source namespace's holder pod into this namespace first, and every upgrade
    phase sees this namespace's odoo-data (tests/contract/test_manifest_replay.py runs it).
    """
    (path,) = [p for p in MANIFESTS if p.name == "tenant-upgrade.yaml"]
    (doc,) = load(path)
    pod = job_spec(doc)["template"]["spec"]
    inits = [Box(path, "initContainers", c, pod, {}) for c in pod["initContainers"]]
    steps = [a[2] if a[1] == "upgrade" else a[1] for a in map(argv, inits)]
    assert steps == UPGRADE_ORDER
    by_step = dict(zip(steps, inits, strict=True))
    env = container_env(by_step["snapshot"])
    source, target = env["PLANA_FROM_VERSION"], env["PLANA_TO_VERSION"]
    assert by_step["source-pass"].spec["image"].endswith(f"-odoo{source}")
    assert by_step["target-pass"].spec["image"].endswith(f"-odoo{target}")
    for box in inits:
        assert container_env(box).get("PLANA_SUBDOMAIN") == env["PLANA_SUBDOMAIN"], box.name
    copy = container_env(by_step["filestore-copy"])
    # The live filestore (the default --db), not the work copy's: after the cutover the source's
    # work filestore would be copied in again and a re-run cutover would publish it.
    assert copy.get("PLANA_FILESTORE_DB", naming.db_name(env["PLANA_SUBDOMAIN"])) == (
        naming.db_name(env["PLANA_SUBDOMAIN"])
    )
    namespace = doc["metadata"]["namespace"]
    assert copy["PLANA_TARGET_NAMESPACE"] == namespace != copy["PLANA_SOURCE_NAMESPACE"]
    claims = {v["name"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert len(claims) == 1, "one Odoo data volume: this namespace's"
    phases = [b for b in (*inits, *(Box(path, "containers", c, pod, {}) for c in pod["containers"]))
              if argv(b)[1] == "upgrade"]  # fmt: skip
    for box in phases:
        mounts = {m["mountPath"]: m["name"] for m in box.spec["volumeMounts"]}
        data_dir = container_env(box).get("PLANA_DATA_DIR", naming.DEFAULT_DATA_DIR)
        assert mounts.get(data_dir) in claims, f"{box.name}: {data_dir} is not the data volume"


# -- per manifest ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_kubernetes_validate_strict(path: Path) -> None:
    done = subprocess.run(
        [str(VALIDATE), "--strict", "-k", K8S_VERSION, "--quiet", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_job_rules(path: Path) -> None:
    for doc in load(path):
        job = job_spec(doc)
        pod = job["template"]["spec"]
        assert "ttlSecondsAfterFinished" not in job, "a TTL'd Job is re-created and re-run"
        assert isinstance(job.get("backoffLimit"), int)
        assert pod["restartPolicy"] == "Never"
        rules = job["podFailurePolicy"]["rules"]
        fail = [r for r in rules if r["action"] == "FailJob"]
        assert len(fail) == 1 and fail[0]["onExitCodes"]["operator"] == "In"
        assert set(fail[0]["onExitCodes"]["values"]) == FAIL_JOB_CODES
        ignore = [r for r in rules if r["action"] == "Ignore"]
        conds = [c for r in ignore for c in r.get("onPodConditions", [])]
        assert {"type": "DisruptionTarget", "status": "True"} in conds
        # 70 and 75 are retried (Count: no rule, or an explicit Count).
        for rule in rules:
            codes = set(rule.get("onExitCodes", {}).get("values", []))
            assert not (codes & {70, 75}) or rule["action"] == "Count", rule
        psc = pod.get("securityContext", {})
        assert psc.get("runAsNonRoot") is True
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0
        volumes = {v["name"]: v for v in pod["volumes"]}
        for box in boxes(path):
            spec = box.spec
            assert spec["terminationMessagePolicy"] == "FallbackToLogsOnError", box.name
            sc = spec["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, box.name
            assert sc["readOnlyRootFilesystem"] is True, box.name
            assert sc["capabilities"]["drop"] == ["ALL"], box.name
            assert "add" not in sc["capabilities"] and not sc.get("privileged"), box.name
            res = spec["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and "memory" in res["limits"]
            mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], f"{box.name}: /tmp is not an emptyDir"


@pytest.mark.parametrize("box", ALL, ids=lambda b: b.name)
def test_secrets_are_files_from_secrets(box: Box) -> None:
    volumes = {v["name"]: v for v in box.pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in box.spec["volumeMounts"]}
    for item in box.spec.get("env", []):
        name = item["name"]
        assert not re.search(r"(PASSWORD|TOKEN|SECRET|API_KEY)$", name), (
            f"{box.name}: {name} carries a secret in the environment; mount it and use *_FILE"
        )
        if name.endswith("_FILE") or name in ("PGSERVICEFILE", "PGPASSFILE"):
            value = item["value"]
            owners = [v for p, v in mounts.items() if value.startswith(p.rstrip("/") + "/")]
            assert owners and "secret" in owners[0], f"{box.name}: {name}={value} not a Secret"


@pytest.mark.parametrize("box", ALL, ids=lambda b: b.name)
def test_command_parses_with_the_real_cli(box: Box) -> None:
    args = argv(box)
    assert args[1] in COMMANDS, f"{box.name}: unknown subcommand {args[1]!r}"
    target = image_target(box.spec["image"])
    assert target == args[1], f"{box.name}: image {target} runs {args[1]}"
    try:
        parse_cli(args, container_env(box))
    except click.ClickException as exc:
        pytest.fail(f"{box.name}: {' '.join(args)}: {exc.format_message()}")


@pytest.mark.parametrize("box", ALL, ids=lambda b: b.name)
def test_every_variable_a_job_reads_is_set_or_defaulted(box: Box) -> None:
    env = container_env(box)
    contexts = parse_cli(argv(box), env)
    assert not missing_values(contexts), f"{box.name}: {missing_values(contexts)}"
    if needs_pg(contexts):
        # No PLANA_PG_DSN: libpq must be told where the server is (a pod has no local socket).
        assert {"PLANA_PG_DSN", "PGHOST", "PGSERVICE"} & set(env), box.name
    for name in required_environ_reads():
        assert name in env, f"{box.name}: jobs/ reads os.environ[{name!r}]"


@pytest.mark.parametrize("box", ALL, ids=lambda b: b.name)
def test_odoo_images_match_the_versions(box: Box) -> None:
    image, env = box.spec["image"], container_env(box)
    match = re.search(r"-odoo(\d+)$", image)
    if image_target(image) not in ("template-build", "upgrade", "environment-db"):
        assert match is None, box.name
        return
    assert match, f"{box.name}: an Odoo-running image names its version"
    phase = argv(box)[2:3]
    if phase == ["source-pass"] or phase == ["snapshot"]:
        assert match.group(1) == env["PLANA_FROM_VERSION"], box.name
    elif "PLANA_TO_VERSION" in env:
        assert match.group(1) == env["PLANA_TO_VERSION"], box.name
    else:
        assert match.group(1) == env["PLANA_ODOO_VERSION"], box.name


# -- the checks themselves catch what they are for ----------------------------------------------


def test_the_checks_catch_a_bad_manifest() -> None:
    box = next(b for b in ALL if subcommand(b) == "matrix-room")
    env = container_env(box)
    with pytest.raises(click.UsageError):
        parse_cli([*argv(box), "--no-such-option"], env)
    with pytest.raises(click.BadParameter):
        parse_cli(argv(box), {**env, "PLANA_TIMEOUT": "soon"})
    without = {k: v for k, v in env.items() if k != "PLANA_MATRIX_HOMESERVER"}
    # A required option (params: required=True) that the manifest leaves unset is refused by
    # the parse itself, naming the variable; an option without a default that is not required
    # is caught by missing_values (unless it is OPTIONAL).
    with pytest.raises(click.MissingParameter) as missing:
        parse_cli(argv(box), without)
    assert missing.value.param is not None
    assert missing.value.param.envvar == "PLANA_MATRIX_HOMESERVER"
    hook = next(b for b in ALL if subcommand(b) == "account-webhook")
    env = {k: v for k, v in container_env(hook).items() if k != "PLANA_REDIS_URL"}
    assert missing_values(parse_cli(argv(hook), env)) == ["account-webhook: PLANA_REDIS_URL"]


# Time a container may still need after its PLANA_TIMEOUT: stopping a child (jobs.core.proc's
# grace), writing the result, the interpreter's start. The Job's deadline is only the backstop.
STOP_MARGIN_S = 60


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_the_deadline_is_above_the_jobs_own_timeouts(path: Path) -> None:
    """activeDeadlineSeconds > every init container's timeout in turn + the longest container's.

    Init containers run one after the other and the containers beside each other: when the
    Job's deadline came first, Kubernetes would kill a job that was about to give up cleanly
    (75, a result object) and the pod would end with no result at all.
    """
    for doc in load(path):
        job = job_spec(doc)
        pod = job["template"]["spec"]

        def budget(spec: dict[str, Any]) -> float:
            env = {e["name"]: e.get("value") for e in spec.get("env", [])}
            return float(env.get("PLANA_TIMEOUT") or 600) + STOP_MARGIN_S

        sequential = sum(budget(c) for c in pod.get("initContainers", []))
        longest = max(budget(c) for c in pod["containers"])
        deadline = job["activeDeadlineSeconds"]
        assert deadline > sequential + longest, (
            f"{path.name}: activeDeadlineSeconds {deadline} <= {sequential + longest:.0f} s, the"
            f" containers' PLANA_TIMEOUTs in order plus {STOP_MARGIN_S} s each to stop"
        )
