"""`make demo`: provision one tenant end to end on local services, then do it all again.

    template-build → tenant-db → matrix-room → account-webhook → erp-callback → emit-event

Every step is the real `plana-job` run as a process, exactly as a Job's container runs it; the
table shows each job's result object. The second pass must show every outcome `unchanged`
(the jobs are idempotent); the exit status says whether it did.

Local services: PostgreSQL and Redis (PLANA_DEMO_PG_DSN / PLANA_DEMO_REDIS_URL, falling back to
PLANA_TEST_* and then to 127.0.0.1 defaults), a real Synapse started on loopback
(tests/support/synapse.py: `.venv-synapse` or PLANA_TEST_SYNAPSE_PYTHON), and the test suite's real
local receivers for the account portal's webhook and the ERP (tests/support/servers/). Odoo: the
real `odoo` of the odoo:18 image when a Docker engine answers (or PLANA_DEMO_ODOO=docker), otherwise
the test stand-in tests/support/standins/odoo, WITH A NOTICE: it is not Odoo. Everything the demo
makes (databases, filestore, stream) is named `demo-<random>` and removed at the end unless --keep.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import redis
from psycopg import sql

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the test suite's servers, when run as `python demo`

from tests.support.servers.erp import Erp, ErpServer  # noqa: E402
from tests.support.servers.webhook import WebhookReceiver  # noqa: E402
from tests.support.synapse import Synapse  # noqa: E402

BIN = Path(sys.executable).parent
STANDIN = ROOT / "tests" / "support" / "standins" / "odoo"
ODOO_IMAGE = os.environ.get("PLANA_DEMO_ODOO_IMAGE", "odoo:18")
OWNER_ROLE = "plana"
# The role the jobs connect as, as a Job's: LOGIN CREATEDB, a member of OWNER_ROLE, not a
# superuser (Odoo refuses the database user `postgres`, and so does the stand-in).
JOB_ROLE = "plana_jobs"
STEPS = ["template-build", "tenant-db", "matrix-room", "account-webhook", "erp-callback",
         "emit-event"]  # fmt: skip
NOTICE = """\
NOTICE: no Docker engine here, so Odoo is the TEST STAND-IN tests/support/standins/odoo -- NOT Odoo.
        It keeps Odoo's command line, exit codes and effects on PostgreSQL and the filestore,
        nothing more. With Docker, `make demo` runs the real odoo of the odoo:18 image."""


def _env(name: str, fallback: str, default: str) -> str:
    return os.environ.get(name) or os.environ.get(fallback) or default


@dataclass
class Row:
    step: str
    outcome: str
    exit_code: int
    seconds: float
    detail: str


def docker_available() -> bool:
    docker = shutil.which("docker")
    if not docker:
        return False
    try:
        done = subprocess.run([docker, "info"], capture_output=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def docker_odoo(workdir: Path, data_dir: Path) -> Path:
    """An `odoo` executable that runs the image's real odoo against the local services.

    Host network (PostgreSQL on loopback), the demo's data dir and /tmp (the job's 0600 config)
    mounted at the same paths, our UID, and the PG* variables passed by name (values stay in the
    environment, never on a command line).
    """
    wrapper = workdir / "odoo"
    wrapper.write_text(
        "#!/bin/sh\n"
        'envs=""\n'
        'for v in $(env | sed -n "s/^\\(PG[A-Z]*\\)=.*/\\1/p"); do envs="$envs -e $v"; done\n'
        f'exec docker run --rm -i --network host --user "$(id -u):$(id -g)" $envs '
        f'-v "{data_dir}:{data_dir}" -v /tmp:/tmp {ODOO_IMAGE} odoo "$@"\n'
    )
    wrapper.chmod(0o755)
    return wrapper


def run_job(step: str, args: list[str], env: dict[str, str]) -> Row:
    print(f"-> {step} ...", flush=True)
    started = time.monotonic()
    proc = subprocess.Popen(
        [str(BIN / "plana-job"), step, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except BaseException:
        # Stopped (or the timeout): the job gets SIGTERM, as from Kubernetes, so it stops its
        # own children (odoo, pg_dump) and cleans up; SIGKILL only if it does not end in time.
        proc.terminate()
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
        raise
    done = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    seconds = time.monotonic() - started
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1]) if lines else {}
    except json.JSONDecodeError:
        result = {}
    outcome = str(result.get("outcome", "failed"))
    if done.returncode != 0:
        tail = result.get("error") or done.stderr.strip().splitlines()[-1:] or ["?"]
        detail = str(tail if isinstance(tail, str) else tail[0])[:90]
    else:
        detail = describe(step, result)
    print(f"   {step}: {outcome} (exit {done.returncode}) in {seconds:.2f}s", flush=True)
    return Row(step, outcome, done.returncode, seconds, detail)


def describe(step: str, result: dict[str, Any]) -> str:
    """The one fact worth showing per job (from its result object)."""
    keys = {
        "template-build": ("template", "fingerprint"),
        "tenant-db": ("database",),
        "matrix-room": ("alias", "room_id"),
        "account-webhook": ("webhook_id", "status"),
        "erp-callback": ("record_id", "id"),
        "emit-event": ("entry_id", "event_id"),
    }[step]
    for key in keys:
        if key in result:
            value = str(result[key])
            return f"{key}={value[:60]}"
    return ""


def unchanged(row: Row) -> bool:
    """A second-run row that changed nothing."""
    return row.exit_code == 0 and row.outcome == "unchanged"


def table(title: str, rows: list[Row]) -> str:
    head = ("#", "job", "outcome", "exit", "seconds", "detail")
    body = [(str(i), r.step, r.outcome, str(r.exit_code), f"{r.seconds:.2f}", r.detail)
            for i, r in enumerate(rows, 1)]  # fmt: skip
    widths = [max(len(row[c]) for row in [head, *body]) for c in range(len(head))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([title, line(head), rule, *(line(b) for b in body)])


@contextmanager
def services(workdir: Path) -> Iterator[tuple[Synapse, WebhookReceiver, ErpServer, str]]:
    webhook_secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    with ExitStack() as stack:
        synapse = Synapse(workdir / "synapse")
        stack.callback(synapse.stop)  # before start(): a signal during start-up stops it too
        synapse.start()
        receiver = stack.enter_context(WebhookReceiver(webhook_secret))
        erp = stack.enter_context(
            ErpServer(Erp(db="plana_erp", login="jobs@plana.test", api_key=secrets.token_hex(20)))
        )
        yield synapse, receiver, erp, webhook_secret


class Stopped(Exception):
    """SIGTERM (or SIGINT) arrived: stop, clean up what the demo started, exit 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _stop(signum: int, _frame: object) -> None:
    raise Stopped(signum)


def _hold_signals() -> None:
    """While cleaning up, a second Ctrl-C or SIGTERM must not cut the cleanup short."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)


def _where(url: str) -> str:
    """host:port of a DSN or URL, never its password."""
    return url.rsplit("@", 1)[-1].split("://", 1)[-1]


def precheck(pg_dsn: str, redis_url: str) -> str | None:
    """One line saying which local service does not answer, or None when both do."""
    try:
        psycopg.connect(pg_dsn, connect_timeout=3).close()
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())[:160]
        return (f"demo: PostgreSQL at {_where(pg_dsn)} does not answer ({reason}); start it, or"
                " point PLANA_DEMO_PG_DSN at one")  # fmt: skip
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=3)
    try:
        client.ping()
    except redis.RedisError as exc:
        reason = " ".join(str(exc).split())[:160]
        return (f"demo: Redis at {_where(redis_url)} does not answer ({reason}); start it, or"
                " point PLANA_DEMO_REDIS_URL at one")  # fmt: skip
    finally:
        client.close()
    return None


def ensure_role(pg_dsn: str) -> str:
    """The owner role (tenant-db refuses, 78, when it is missing; a local cluster may not have
    it) and the jobs' role; the DSN for the jobs: `pg_dsn` as JOB_ROLE, with a password made
    for this run (so password authentication works too)."""
    roles = ((OWNER_ROLE, "NOLOGIN", "the tenant databases' owner"),
             (JOB_ROLE, "LOGIN CREATEDB", "the jobs' own"))  # fmt: skip
    password = secrets.token_hex(16)
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        for role, options, what in roles:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                try:
                    conn.execute(sql.SQL("CREATE ROLE {} " + options).format(sql.Identifier(role)))
                    print(f"created PostgreSQL role {role!r} ({what})")
                except psycopg.errors.DuplicateObject:
                    pass
        job = sql.Identifier(JOB_ROLE)
        # DDL takes no parameters: the password (hex) goes in as a quoted literal.
        conn.execute(sql.SQL("ALTER ROLE {} PASSWORD {}").format(job, sql.Literal(password)))
        conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(OWNER_ROLE), job))
    return psycopg.conninfo.make_conninfo(pg_dsn, user=JOB_ROLE, password=password)


def cleanup(pg_dsn: str, redis_url: str, databases: list[str], stream: str) -> None:
    """Drop what the demo made; a service gone meanwhile is said in one line, not a traceback."""
    try:
        _drop(pg_dsn, databases)
    except psycopg.Error as exc:
        print(f"demo: could not drop {', '.join(databases)}: {' '.join(str(exc).split())[:160]}")
    try:
        _forget(redis_url, stream)
    except redis.RedisError as exc:
        print(f"demo: could not delete the stream {stream}: {' '.join(str(exc).split())[:160]}")


def _drop(pg_dsn: str, databases: list[str]) -> None:
    with psycopg.connect(pg_dsn, autocommit=True, connect_timeout=5) as conn:
        for name in databases:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE datname = %s OR datname LIKE %s",
                (name, name + "\\_\\_%"),
            ).fetchall()
            for (db,) in rows:
                ident = sql.Identifier(db)
                conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))


def _forget(redis_url: str, stream: str) -> None:
    client = redis.Redis.from_url(redis_url, socket_connect_timeout=5, socket_timeout=5)
    try:
        keys: list[str | bytes] = [stream, *client.scan_iter(match=f"{stream}:*")]
        client.delete(*keys)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _stop)
    try:
        return demo(argv)
    except Stopped as stop:
        print(f"demo: stopped by {stop}; everything it started was stopped and removed")
        return 128 + stop.signum


def demo(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="make demo", description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep what the demo made")
    parser.add_argument("--subdomain", default="demo-" + secrets.token_hex(3))
    opts = parser.parse_args(argv)

    pg_dsn = _env("PLANA_DEMO_PG_DSN", "PLANA_TEST_PG_DSN",
                  "postgresql://postgres@127.0.0.1:5432/postgres")  # fmt: skip
    redis_url = _env("PLANA_DEMO_REDIS_URL", "PLANA_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
    sub = opts.subdomain
    template_db = f"template_pro_18_{sub.replace('-', '_')}"
    stream = f"PLANA:events:{sub}"
    problem = precheck(pg_dsn, redis_url)
    if problem:
        print(problem, file=sys.stderr)
        return 1
    mode = os.environ.get("PLANA_DEMO_ODOO") or ("docker" if docker_available() else "standin")

    workdir = Path(tempfile.mkdtemp(prefix=f"plana-{sub}-"))
    try:
        return provision(opts, sub, pg_dsn, redis_url, mode, workdir)
    finally:
        _hold_signals()  # from here on nothing interrupts the cleanup
        if opts.keep:
            print(f"kept: databases {template_db}, {sub}.planapulse.app; files in {workdir}")
        else:
            cleanup(pg_dsn, redis_url, [template_db, f"{sub}.planapulse.app"], stream)
            shutil.rmtree(workdir, ignore_errors=True)


def provision(
    opts: argparse.Namespace, sub: str, pg_dsn: str, redis_url: str, mode: str, workdir: Path
) -> int:
    template_db = f"template_pro_18_{sub.replace('-', '_')}"
    stream = f"PLANA:events:{sub}"
    data_dir = workdir / "data"
    data_dir.mkdir()
    if mode == "docker":
        odoo_bin, version_env = str(docker_odoo(workdir, data_dir)), {}
        print(f"Odoo: the real odoo of the {ODOO_IMAGE} image (Docker)")
    else:
        odoo_bin, version_env = str(STANDIN), {"ODOO_STANDIN_VERSION": "18"}
        print(NOTICE)
    print(f"tenant: {sub}   PostgreSQL: {pg_dsn.split('@')[-1]}   Redis: {redis_url}")
    job_dsn = ensure_role(pg_dsn)

    failed = True
    stack = ExitStack()
    try:
        synapse, receiver, erp, webhook_secret = stack.enter_context(services(workdir))
    except RuntimeError as exc:  # no Synapse installed: say how to get one
        print(f"demo: cannot start the local services: {exc}", file=sys.stderr)
        return 1
    with stack:
        bot = synapse.register("plana-bot-" + secrets.token_hex(3))
        staff = synapse.register("staff-" + secrets.token_hex(3))
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        files = {"matrix": bot.access_token, "webhook": webhook_secret,
                 "erp": erp.erp.api_key}  # fmt: skip
        for name, value in files.items():
            (secrets_dir / name).write_text(value + "\n")
            (secrets_dir / name).chmod(0o600)
        print(f"Synapse {synapse.url}   webhook receiver {receiver.url}   ERP {erp.url}\n")

        base = {k: v for k, v in os.environ.items() if not k.startswith(("PLANA_", "PG"))}
        env = {
            **base,
            **version_env,
            "PATH": f"{BIN}{os.pathsep}{base.get('PATH', '')}",
            "PLANA_LOG_FORMAT": "json",
            "PLANA_TERMINATION_LOG": str(workdir / "termination-log"),
            "PLANA_TIMEOUT": "300",
            # The PLANAClient spec, as the Composition sets it.
            "PLANA_SUBDOMAIN": sub,
            "PLANA_PROJECT_ID": "23",
            "PLANA_TIER": "pro",
            "PLANA_ODOO_VERSION": "18",
            "PLANA_OWNER_EMAIL": f"owner@{sub}.example.com",
            "PLANA_OWNER_NAME": "Ada Lovelace",
            "PLANA_GENERATION": "1",
            # Where things are.
            "PLANA_PG_DSN": job_dsn,
            "PLANA_DATA_DIR": str(data_dir),
            "PLANA_ODOO_BIN": odoo_bin,
            "PLANA_TEMPLATE_CODE": "pro",
            "PLANA_TEMPLATE_DB": template_db,
            "PLANA_MATRIX_HOMESERVER": synapse.url,
            "PLANA_MATRIX_SERVER_NAME": synapse.server_name,
            "PLANA_MATRIX_TOKEN_FILE": str(secrets_dir / "matrix"),
            "PLANA_MATRIX_INVITE": staff.user_id,
            "PLANA_ACCOUNT_WEBHOOK_URL": receiver.url,
            "PLANA_ACCOUNT_WEBHOOK_SECRET_FILE": str(secrets_dir / "webhook"),
            "PLANA_ERP_URL": erp.url,
            "PLANA_ERP_DB": erp.erp.db,
            "PLANA_ERP_LOGIN": erp.erp.login,
            "PLANA_ERP_API_KEY_FILE": str(secrets_dir / "erp"),
            "PLANA_ERP_API": "jsonrpc",
            "PLANA_REDIS_URL": redis_url,
            "PLANA_EVENTS_STREAM": stream,
            "PLANA_WEBHOOK_LEDGER_PREFIX": f"{stream}:webhooks",
        }
        # The stand-in's module catalog is small: the template gets what it has.
        extra = {"template-build": ["--modules", "base,web,mail,contacts"]}
        passes, delivered = [], []
        for title in ("first run (provision)", "second run (everything again)"):
            rows = [run_job(step, extra.get(step, []), env) for step in STEPS]
            passes.append(rows)
            delivered.append(len(receiver.delivered))
            print(table(f"== {title}", rows) + "\n", flush=True)
        first, second = passes
        ok_first = all(r.exit_code == 0 and r.outcome in ("created", "updated") for r in first)
        ok_second = all(unchanged(r) for r in second)
        print(f"webhook messages delivered (distinct webhook-id): {delivered[-1]};"
              f" ERP records: {len(erp.erp.records)}")  # fmt: skip
        if ok_first and ok_second:
            print("demo OK: provisioned once, and the second run changed nothing.")
            failed = False
        else:
            print("demo FAILED: expected created/updated, then all unchanged.")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
