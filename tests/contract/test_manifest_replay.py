"""Every example manifest (images/jobs/*.yaml) replayed as it is written, on local services.

A replay is what the kubelet would do with the manifest: for each Job (or a CronJob's
jobTemplate), its initContainers one after the other, each to exit 0 before the next starts,
then its containers; each container a real `plana-job` process with the argv of its `command`
(or the image's ENTRYPOINT from images/Dockerfile) and `args`, and the environment the pod gets:
the image's ENV plus the manifest's `env` (tests/support/manifests.py derives both, for the Job
contract and here). Every example must complete, and replaying it a second time must change
nothing: every container answers `unchanged`.

Substituted, because it cannot exist on this machine — and nothing else:

- **Volumes.** Per namespace, a PersistentVolumeClaim is a local directory
  (`{namespace}/pvc/{claim}`: the `odoo-data` of `plana-odoo` and of `plana-odoo-18` are two
  directories, as they are two volumes); a Secret a directory holding test values
  (`{namespace}/secret/{name}`, files of the Secret's `defaultMode`); an emptyDir a fresh
  directory per pod. Every value (image ENV, manifest env, args) naming a mountPath, or a path
  below one, is rewritten to that directory; `/tmp` also becomes TMPDIR and the working
  directory (the images' WORKDIR), and the kubelet's `/dev/termination-log` a file per container.
  A `readOnly` mount must be left as it was (checked around each container).
- **PostgreSQL.** The `plana-postgresql-service` Secret's `pg_service.conf` is a libpq service
  file `[plana]` for the test server, which is how every manifest connects (PGSERVICEFILE,
  PGSERVICE). It says `sslmode=disable` (the test server has no TLS); parameters of a service
  file take precedence over PG* variables in libpq, so the manifest's PGSSLMODE=require stays.
- **The image's filesystem.** An odoo image's `odoo` is the stand-in tests/support/standins/odoo
  with ODOO_STANDIN_VERSION = the image tag's `-odooNN`; its ODOO_RC and OpenUpgrade tree
  (PLANA_UPGRADE_PATH, a valid `*/*/pre-*.py` tree) are local files. The filestore-copy image's
  `kubectl` is tests/support/shims/kubectl.
- **Peers.** The manifests' origins are the suite's real local servers: the Redis URL → the test
  Redis; `https://matrix.planapulse.com` → a Synapse (tests/support/synapse.py), its server name for
  PLANA_MATRIX_SERVER_NAME and for the server part of PLANA_MATRIX_INVITE (whose localpart gets
  the run's suffix, registered there); `https://account.planapulse.com` →
  tests/support/servers/webhook.py; `https://erp.planapulse.com` → tests/support/servers/erp.py
  (with the manifest's ERP database and login).
- **Holder pods.** `odoo-filestore-holder` in `plana-odoo` and in `plana-odoo-18` mount their
  namespace's `odoo-data` at /var/lib/odoo (KUBECTL_SHIM_PODS / KUBECTL_SHIM_MOUNTS).
- **Unique names per run.** The tenant `acme` (as a word, in every value) → the run's subdomain;
  added to every container: PLANA_TEMPLATE_DB (the run's template), PLANA_EVENTS_STREAM and
  PLANA_WEBHOOK_LEDGER_PREFIX (the run's stream); restore.yaml's PLANA_BACKUP_SET → the set the
  replayed deprovision left (a set's name is its time of writing).

Preconditions come from replaying the examples in order (template-build before tenant-db, …,
deprovision before restore: restoring the removed tenant from its final set), or, for the
upgrade, from the jobs run directly: a 17 template and tenant on `plana-odoo`'s volume.
Processes run as the test's user (runAsUser is the cluster's business).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import redis
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from jobs.core import naming
from tests.support.harness import BACKUP_KEY, BIN, STANDINS, Runner
from tests.support.manifests import MANIFESTS, Box, argv, image_env, image_target, job_spec, load
from tests.support.servers.erp import Erp, ErpServer
from tests.support.servers.webhook import WebhookReceiver
from tests.support.synapse import Synapse

ROOT = Path(__file__).resolve().parents[2]
SHIMS = ROOT / "tests" / "support" / "shims"
TENANT = "acme"  # the manifests' tenant
OWNER_ROLE = "plana"
HOLDER_POD, HOLDER_MOUNT = "odoo-filestore-holder", "/var/lib/odoo"
WORKER_NAMESPACES = ("plana-odoo", "plana-odoo-18")  # 17, 18: each with its odoo-data
IMAGE_PATHS = ("/opt/openupgrade", "/etc/odoo")  # files of the odoo images the jobs read
TERMINATION_LOG = "/dev/termination-log"  # the kubelet's file: PLANA_TERMINATION_LOG's default
MANIFEST_REDIS = "redis://redis.plana-system.svc:6379/0"
MATRIX_ORIGIN = "https://matrix.planapulse.com"
WEBHOOK_ORIGIN = "https://account.planapulse.com"
ERP_ORIGIN = "https://erp.planapulse.com"

# The replays, in the order that makes each one's preconditions.
PROVISIONING = [
    "template-build.yaml", "tenant-db.yaml", "matrix-room.yaml", "account-webhook.yaml",
    "erp-callback.yaml", "emit-event.yaml", "environment-db.yaml", "backup.yaml",
    "backup-verify.yaml", "deprovision.yaml", "restore.yaml", "inspect.yaml",
]  # fmt: skip
# The TenantUpgrade first: it must bring the files over itself, not find them pre-copied.
UPGRADE = ["tenant-upgrade.yaml", "filestore-copy.yaml"]
# A backup CronJob writes a new set on every run, by design (one set per night): its second
# replay creates another set. Every other container's second replay is `unchanged`.
AGAIN = {("backup.yaml", "backup"): "created"}


@dataclass
class Run:
    manifest: str
    container: str
    rc: int
    stdout: str
    stderr: str
    termination: str  # what Kubernetes would show as the container's termination message

    @property
    def result(self) -> dict[str, Any]:
        lines = self.stdout.strip().splitlines()
        try:
            obj: dict[str, Any] = json.loads(lines[-1]) if lines else {}
        except json.JSONDecodeError:
            obj = {}
        return obj

    @property
    def outcome(self) -> str:
        return str(self.result.get("outcome", "?"))

    def __str__(self) -> str:
        tail = self.result.get("error") or self.stderr.strip()[-600:]
        return f"{self.manifest}:{self.container} exit {self.rc} {self.outcome}: {tail}"


def _text(data: bytes | str | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else (data or "")


def tree_state(path: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under `path` with its size, mtime and mode: equal only if nothing was written."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            full = Path(dirpath) / name
            st = full.lstat()
            out[str(full.relative_to(path))] = (st.st_size, st.st_mtime_ns, st.st_mode)
    return out


def service_file(pg_dsn: str) -> str:
    """A libpq service file [plana] for the test server (no password: trust on loopback)."""
    params = conninfo_to_dict(pg_dsn)
    lines = ["[plana]"]
    for key in ("host", "port", "user", "password", "dbname"):
        if params.get(key):
            lines.append(f"{key}={params[key]}")
    lines.append("sslmode=disable")
    return "\n".join(lines) + "\n"


def mount_paths() -> set[str]:
    """Every mountPath of every example: a value naming one must be mounted where it is used."""
    return {
        m["mountPath"]
        for path in MANIFESTS
        for doc in load(path)
        for kind in ("initContainers", "containers")
        for spec in job_spec(doc)["template"]["spec"].get(kind, [])
        for m in spec.get("volumeMounts", [])
    }


MOUNT_PATHS = mount_paths()


def odoo_version(image: str) -> int | None:
    match = re.search(r"-odoo(\d+)$", image)
    return int(match.group(1)) if match else None


class Cluster:
    """Namespaces, volumes, Secrets, peers and holder pods of a replay, as local things."""

    def __init__(self, root: Path, pg_dsn: str, sub: str) -> None:
        self.root = root
        self.sub = sub
        stream = f"PLANA:events:{sub}"
        self.stream = stream
        self.template = f"template_pro_18_{sub}"
        self.secrets: dict[str, dict[str, str]] = {
            "plana-postgresql-service": {"pg_service.conf": service_file(pg_dsn)},
            "plana-backup-key": {"key": BACKUP_KEY + "\n"},
        }
        self.origins: dict[str, str] = {}  # a manifest's peer → the local server
        self.matrix: tuple[str, str] | None = None  # the manifests' server name → Synapse's
        self.added = {
            "PLANA_TEMPLATE_DB": self.template,
            "PLANA_EVENTS_STREAM": stream,
            "PLANA_WEBHOOK_LEDGER_PREFIX": f"{stream}:webhooks",
        }
        holders = {f"{ns}/{HOLDER_POD}": {HOLDER_MOUNT: str(self.claim(ns, "odoo-data"))}
                   for ns in WORKER_NAMESPACES}  # fmt: skip
        self.added["KUBECTL_SHIM_PODS"] = ",".join(f"{key}=" for key in holders)
        self.added["KUBECTL_SHIM_MOUNTS"] = json.dumps(holders)
        self.pods = 0

    # -- what a namespace holds -----------------------------------------------------------

    def claim(self, namespace: str, name: str) -> Path:
        path = self.root / namespace / "pvc" / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def secret(self, namespace: str, name: str, mode: int) -> Path:
        assert name in self.secrets, f"the replay has no test value for Secret {name}"
        path = self.root / namespace / "secret" / name
        path.mkdir(parents=True, exist_ok=True)
        for key, value in self.secrets[name].items():
            (path / key).write_text(value)
            (path / key).chmod(mode)
        return path

    def image_root(self, version: int) -> Path:
        """The files of the odoo{version} image the jobs read: odoo, ODOO_RC, OpenUpgrade."""
        root = self.root / "images" / f"odoo{version}"
        if root.exists():
            return root
        (root / "bin").mkdir(parents=True)
        odoo = root / "bin" / "odoo"
        odoo.write_text(
            f"#!/bin/sh\nODOO_STANDIN_VERSION={version} exec {STANDINS / 'odoo'} \"$@\"\n"
        )
        odoo.chmod(0o755)
        # As the image installs OpenUpgrade's wheels: /opt/openupgrade/odoo/addons holds both
        # addons, and the image's config has that directory on its addons_path. The config is
        # a file the job reads (its paths are not substituted): it names the local directory.
        addons = root / "opt/openupgrade/odoo/addons"
        for name in ("openupgrade_framework", "openupgrade_scripts"):
            (addons / name).mkdir(parents=True)
            (addons / name / "__manifest__.py").write_text(f"{{'name': '{name}'}}\n")
        scripts = addons / "openupgrade_scripts/scripts/base" / f"{version}.0.1.3"
        scripts.mkdir(parents=True)
        (scripts / "pre-migration.py").write_text("# OpenUpgrade script\n")
        (root / "etc/odoo").mkdir(parents=True)
        (root / "etc/odoo/plana.conf").write_text(f"[options]\naddons_path = {addons}\n")
        return root

    # -- substitutions --------------------------------------------------------------------

    def substitute(
        self, name: str, value: str, mounts: dict[str, Path], image: Path | None
    ) -> str:
        value = re.sub(rf"\b{TENANT}\b", self.sub, value)
        for origin, local in self.origins.items():
            if value == origin or value.startswith(origin + "/"):
                value = local + value[len(origin) :]
        if self.matrix is not None:
            theirs, ours = self.matrix
            if name == "PLANA_MATRIX_SERVER_NAME" and value == theirs:
                value = ours
            elif value.startswith("@") and value.endswith(f":{theirs}"):  # a user of theirs
                value = value.removesuffix(f":{theirs}") + f"-{self.sub}:{ours}"
        places = {k: str(v) for k, v in mounts.items()}
        if image is not None:
            places.update({p: str(image) + p for p in IMAGE_PATHS})
        for path in sorted(places, key=len, reverse=True):
            if value == path or value.startswith(path + "/"):
                return places[path] + value[len(path) :]
        for path in MOUNT_PATHS:  # in a pod: the image's read-only root, not a volume
            assert not (value == path or value.startswith(path + "/")), (
                f"{name}={value}: names {path}, which this container does not mount"
            )
        return value

    # -- replay ---------------------------------------------------------------------------

    def replay(self, path: Path, **override: str) -> list[Run]:
        """Every Job of the manifest, its containers in order; stops at the first failure."""
        runs: list[Run] = []
        for doc in load(path):
            job = job_spec(doc)
            pod = job["template"]["spec"]
            namespace = doc["metadata"]["namespace"]
            self.pods += 1
            pod_dir = self.root / "pods" / f"{self.pods:03d}-{doc['metadata']['name']}"
            volumes = {v["name"]: self.volume(namespace, v, pod_dir) for v in pod["volumes"]}
            for kind in ("initContainers", "containers"):
                for spec in pod.get(kind, []):
                    box = Box(path, kind, spec, pod, job)
                    run = self.run(box, volumes, override)
                    runs.append(run)
                    if run.rc != 0:
                        return runs  # the kubelet starts nothing after a failed init container
        return runs

    def volume(self, namespace: str, volume: dict[str, Any], pod_dir: Path) -> Path:
        if "persistentVolumeClaim" in volume:
            return self.claim(namespace, str(volume["persistentVolumeClaim"]["claimName"]))
        if "secret" in volume:
            secret: dict[str, Any] = volume["secret"]
            mode = int(secret.get("defaultMode", 0o644))
            return self.secret(namespace, str(secret["secretName"]), mode)
        assert "emptyDir" in volume, f"volume {volume['name']}: no local stand-in for {volume}"
        path: Path = pod_dir / str(volume["name"])
        path.mkdir(parents=True)
        return path

    def environment(
        self, box: Box, mounts: dict[str, Path], override: dict[str, str]
    ) -> dict[str, str]:
        version = odoo_version(box.spec["image"])
        image = self.image_root(version) if version is not None else None
        raw = image_env(box)
        for item in box.spec.get("env", []):
            assert "value" in item, f"{box.name}: {item['name']} from valueFrom is not replayed"
            raw[item["name"]] = item["value"]
        for name, value in override.items():
            assert name in raw, f"{box.name}: overrides {name}, which the manifest does not set"
            raw[name] = value
        path = [str(BIN), os.environ.get("PATH", "/usr/bin:/bin")]
        if image is not None:
            path.insert(0, str(image / "bin"))
        if image_target(box.spec["image"]) == "filestore-copy":
            path.insert(0, str(SHIMS))
        env = {"PATH": os.pathsep.join(path), "LANG": "C.UTF-8"}
        env.update({k: self.substitute(k, v, mounts, image) for k, v in raw.items()})
        env.update(self.added)
        env["TMPDIR"] = str(mounts["/tmp"])
        env["PLANA_TERMINATION_LOG"] = str(self.termination_log(box, mounts))
        return env

    @staticmethod
    def termination_log(box: Box, mounts: dict[str, Path]) -> Path:
        """The container's TERMINATION_LOG: a file beside the pod's volumes."""
        return mounts["/tmp"].parent / f"{box.spec['name']}.termination-log"

    def run(self, box: Box, volumes: dict[str, Path], override: dict[str, str]) -> Run:
        mounts = {m["mountPath"]: volumes[m["name"]] for m in box.spec["volumeMounts"]}
        frozen = {m["mountPath"]: tree_state(volumes[m["name"]])
                  for m in box.spec["volumeMounts"] if m.get("readOnly")}  # fmt: skip
        env = self.environment(box, mounts, override)
        args = argv(box)
        assert args[0] == "plana-job", box.name
        try:
            done = subprocess.run(
                [str(BIN / "plana-job"), *args[1:]],
                env=env,
                cwd=mounts["/tmp"],
                capture_output=True,
                text=True,
                timeout=120,  # a safety net for a hung job: a working one takes seconds
                check=False,
            )
            rc, out, err = done.returncode, done.stdout, done.stderr
        except subprocess.TimeoutExpired as exc:  # killed: report what it said meanwhile
            rc, out, err = -9, _text(exc.stdout), _text(exc.stderr) + "\n(timed out)"
        term = self.termination_log(box, mounts)
        message = term.read_text() if term.exists() else ""
        run = Run(box.file.name, box.spec["name"], rc, out, err, message)
        for mount, state in frozen.items():
            assert tree_state(mounts[mount]) == state, f"{run}: wrote its readOnly mount {mount}"
        return run


def replay_twice(cluster: Cluster, name: str, **override: str) -> tuple[list[Run], list[Run]]:
    """The example completes, then its second replay is `unchanged` container by container."""
    path = ROOT / "images" / "jobs" / name
    first = cluster.replay(path, **override)
    assert first and all(r.rc == 0 for r in first), "\n".join(map(str, first))
    for run in first:  # the result object is what the termination message shows
        assert json.loads(run.termination or "{}").get("outcome") == run.outcome, run
    again = cluster.replay(path, **override)
    expected = [AGAIN.get((name, r.container), "unchanged") for r in again]
    assert [r.rc for r in again] == [0] * len(again) and len(again) == len(first), (
        "\n".join(map(str, again))
    )
    assert [r.outcome for r in again] == expected, "\n".join(map(str, again))
    return first, again


def drop_like(pg_dsn: str, *patterns: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for pattern in patterns:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname LIKE %s", (pattern,)
            ).fetchall()
            for (db,) in rows:
                ident = sql.Identifier(db)
                conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def ensure_role(pg_dsn: str) -> None:
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        try:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(OWNER_ROLE)))
        except (psycopg.errors.DuplicateObject, psycopg.errors.UniqueViolation):
            pass


@pytest.fixture
def cluster(pg_dsn: str, redis_url: str, uid: str, tmp_path: Path) -> Iterator[Cluster]:
    ensure_role(pg_dsn)
    made = Cluster(tmp_path / "cluster", pg_dsn, uid)
    made.origins[MANIFEST_REDIS] = redis_url
    yield made
    drop_like(pg_dsn, f"template\\_pro\\_%\\_{uid}%", naming.db_name(uid) + "%", f"{uid}--%")
    client = redis.Redis.from_url(redis_url)
    try:
        keys = [made.stream, *client.scan_iter(match=f"{made.stream}:*")]
        client.delete(*keys)
    finally:
        client.close()


def manifest_env(name: str) -> dict[str, str]:
    (doc,) = load(ROOT / "images" / "jobs" / name)
    (spec,) = job_spec(doc)["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in spec["env"] if "value" in e}


# -- the examples ------------------------------------------------------------------------------


def test_every_example_is_replayed() -> None:
    assert sorted([*PROVISIONING, *UPGRADE]) == sorted(p.name for p in MANIFESTS)


def test_provisioning_examples_complete_and_replay_unchanged(
    cluster: Cluster, tmp_path: Path, pg_dsn: str
) -> None:
    """A tenant's life: template, tenant, its room, webhook, ERP record, event, environment,
    backups, their verification, deprovision, and a restore of the removed tenant."""
    sub = cluster.sub
    erp_env = manifest_env("erp-callback.yaml")
    synapse = Synapse.from_env(tmp_path / "synapse")
    try:
        synapse.start()
        bot = synapse.register(f"plana-bot-{sub}")
        invite = manifest_env("matrix-room.yaml")["PLANA_MATRIX_INVITE"]
        synapse.register(f"{invite[1:].split(':')[0]}-{sub}")
        webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        erp = Erp(db=erp_env["PLANA_ERP_DB"], login=erp_env["PLANA_ERP_LOGIN"],
                  api_key=secrets.token_hex(20))  # fmt: skip
        with WebhookReceiver(webhook_secret) as receiver, ErpServer(erp) as erp_server:
            cluster.secrets.update({
                "plana-matrix-bot": {"token": bot.access_token + "\n"},
                "plana-account-webhook": {"secret": webhook_secret + "\n"},
                "plana-erp-api-key": {"api-key": erp.api_key + "\n"},
            })  # fmt: skip
            cluster.origins.update({
                MATRIX_ORIGIN: synapse.url,
                WEBHOOK_ORIGIN: receiver.server.url,
                ERP_ORIGIN: erp_server.url,
            })  # fmt: skip
            theirs = manifest_env("matrix-room.yaml")["PLANA_MATRIX_SERVER_NAME"]
            cluster.matrix = (theirs, synapse.server_name)
            final_set = ""
            for name in PROVISIONING:
                override = {"PLANA_BACKUP_SET": final_set} if name == "restore.yaml" else {}
                first, _ = replay_twice(cluster, name, **override)
                if name == "deprovision.yaml":
                    final_set = str(first[-1].result["final_backup"])
            assert len(receiver.delivered) == 1  # the second replay delivered nothing
            assert len(erp.records) == 1
    finally:
        synapse.stop()
    # The restore brought the removed tenant back from its final set.
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT shobj_description(oid, 'pg_database') FROM pg_database WHERE datname = %s",
            (naming.db_name(sub),),
        ).fetchone()
    assert row is not None and final_set and final_set in str(row[0])


def test_upgrade_examples_complete_and_replay_unchanged(
    cluster: Cluster, pg_dsn: str, redis_url: str, tmp_path: Path
) -> None:
    """A 17 tenant on plana-odoo's volume; the TenantUpgrade Job brings it to 18 on
    plana-odoo-18's volume with every attachment, and never writes the 17 volume."""
    sub, db = cluster.sub, naming.db_name(cluster.sub)
    v17, v18 = cluster.claim("plana-odoo", "odoo-data"), cluster.claim("plana-odoo-18", "odoo-data")
    odoo17 = cluster.image_root(17) / "bin" / "odoo"
    template17 = f"template_pro_17_{sub}"
    jobs = Runner(pg_dsn, redis_url, tmp_path)
    built = jobs(["template-build", "--template-code", "pro", "--odoo-version", "17",
                  "--template-db", template17, "--odoo-bin", str(odoo17), "--data-dir", str(v17)])
    assert built.rc == 0, built.output
    made = jobs(["tenant-db", "--subdomain", sub, "--project-id", "23", "--tier", "pro",
                 "--odoo-version", "17", "--owner-email", "ada@example.com",
                 "--owner-name", "Ada Lovelace", "--template-db", template17,
                 "--data-dir", str(v17)])  # fmt: skip
    assert made.rc == 0, made.output
    live17 = naming.filestore(db, v17)
    assert any(p.is_file() for p in live17.rglob("*")), "the 17 tenant has attachments to copy"
    before = tree_state(v17)

    for name in UPGRADE:
        replay_twice(cluster, name)

    assert tree_state(v17) == before, "the source volume was written"
    with psycopg.connect(pg_dsn, dbname=db) as conn:
        base = conn.execute(
            "SELECT latest_version FROM ir_module_module WHERE name = 'base'"
        ).fetchone()
        stores = {r[0] for r in conn.execute(
            "SELECT store_fname FROM ir_attachment WHERE store_fname IS NOT NULL").fetchall()}
    assert base is not None and str(base[0]).startswith("18.0.")
    live18 = naming.filestore(db, v18)
    files18 = {str(p.relative_to(live18)) for p in live18.rglob("*") if p.is_file()}
    assert stores and stores <= files18, "the 18 tenant lacks attachments it references"
    assert naming.filestore(f"{db}__rb17", v18).is_dir()  # kept beside it for a rollback
    assert not naming.filestore(f"{db}__up18", v18).exists()
