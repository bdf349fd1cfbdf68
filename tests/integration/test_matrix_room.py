"""matrix-room against a real Synapse homeserver (tests/support/synapse.py starts it once per
session)."""

from __future__ import annotations

import secrets
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.harness import JobRun, Runner
from tests.support.servers import Handler, HangingServer, Server
from tests.support.synapse import Synapse, User, free_port


@pytest.fixture(scope="session")
def synapse(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    server = Synapse.from_env(tmp_path_factory.mktemp("synapse")).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def bot(synapse: Synapse) -> User:
    return synapse.register(f"plana-bot-{secrets.token_hex(3)}")


@pytest.fixture(scope="session")
def staff(synapse: Synapse) -> list[User]:
    suffix = secrets.token_hex(3)  # unique per session: a shared homeserver keeps its users
    return [synapse.register(f"staff-ana-{suffix}"), synapse.register(f"staff-bo-{suffix}")]


@pytest.fixture
def token_file(tmp_path: Path, bot: User) -> str:
    path = tmp_path / "matrix-token"
    path.write_text(bot.access_token + "\n")
    return str(path)


class Tenant:
    def __init__(self, uid: str, synapse: Synapse, staff: list[User], project: int = 23) -> None:
        self.sub = uid
        self.project = project
        self.owner = f"Owner {uid}"
        self.alias = f"#support-{uid}-{project:03d}:{synapse.server_name}"
        self.synapse = synapse
        self.staff = [u.user_id for u in staff]

    def args(self) -> list[str]:
        return [
            "matrix-room", "--subdomain", self.sub, "--project-id", str(self.project),
            "--tier", "pro", "--owner-name", self.owner,
        ]  # fmt: skip

    def env(self, token_file: str, **extra: str) -> dict[str, str]:
        return {
            "PLANA_MATRIX_HOMESERVER": self.synapse.url,
            "PLANA_MATRIX_SERVER_NAME": self.synapse.server_name,
            "PLANA_MATRIX_TOKEN_FILE": token_file,
            "PLANA_MATRIX_INVITE": ",".join(self.staff),
            **extra,
        }


@pytest.fixture
def tenant(uid: str, synapse: Synapse, staff: list[User]) -> Tenant:
    return Tenant(uid, synapse, staff)


def room(run_job: Runner, tenant: Tenant, token_file: str, **env: str) -> JobRun:
    return run_job(tenant.args(), timeout=90, **tenant.env(token_file, **env))


def assert_no_token(run: JobRun, token: str) -> None:
    assert token not in run.output


def test_creates_the_room(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, bot: User
) -> None:
    run = room(run_job, tenant, token_file)
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"
    room_id = run.result["room_id"]
    assert run.result["alias"] == tenant.alias
    assert synapse.resolve(tenant.alias) == room_id
    assert synapse.state_content(room_id, "m.room.name") == {"name": f"Support · {tenant.owner}"}
    topic = synapse.state_content(room_id, "m.room.topic")["topic"]
    assert f"{tenant.sub}.planapulse.app" in topic and "pro" in topic and "023" in topic
    assert synapse.state_content(room_id, "m.room.join_rules")["join_rule"] == "invite"
    assert synapse.state_content(room_id, "m.room.canonical_alias")["alias"] == tenant.alias
    members = synapse.memberships(room_id)
    assert members[bot.user_id] == "join"
    assert all(members[s] == "invite" for s in tenant.staff)
    levels = synapse.state_content(room_id, "m.room.power_levels")
    assert all(levels["users"][s] == 50 for s in tenant.staff)
    assert levels["kick"] <= 50 and levels["redact"] <= 50
    (listed,) = synapse.rooms_named(tenant.owner)
    assert listed["public"] is False
    assert_no_token(run, bot.access_token)

    again = room(run_job, tenant, token_file)
    assert again.rc == 0, again.output
    assert again.result["outcome"] == "unchanged"
    assert again.result["room_id"] == room_id
    assert again.result["changed"] == []
    assert len(synapse.rooms_named(tenant.owner)) == 1


def test_five_concurrent_runs_make_one_room(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse
) -> None:
    env = tenant.env(token_file)
    procs = [run_job.popen(tenant.args(), **env) for _ in range(5)]
    runs = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        runs.append(JobRun(proc.returncode, out, err, ""))
    assert [r.rc for r in runs] == [0] * 5, "\n".join(r.output for r in runs)
    outcomes = sorted(r.result["outcome"] for r in runs)
    assert outcomes.count("created") == 1, outcomes
    assert {r.result["room_id"] for r in runs} == {synapse.resolve(tenant.alias)}
    rooms = synapse.rooms_named(tenant.owner)
    assert len(rooms) == 1, rooms
    assert rooms[0]["canonical_alias"] == tenant.alias
    members = synapse.memberships(rooms[0]["room_id"])
    assert all(members[s] == "invite" for s in tenant.staff)


def test_a_renamed_room_is_put_back(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, bot: User
) -> None:
    first = room(run_job, tenant, token_file)
    assert first.rc == 0, first.output
    room_id = first.result["room_id"]
    quoted = room_id.replace("!", "%21")
    synapse.api(bot, "PUT", f"/_matrix/client/v3/rooms/{quoted}/state/m.room.name",
                json={"name": "Somebody else's room"})  # fmt: skip
    synapse.api(bot, "PUT", f"/_matrix/client/v3/rooms/{quoted}/state/m.room.topic",
                json={"topic": "changed by hand"})  # fmt: skip
    kicked = tenant.staff[1]
    synapse.api(bot, "POST", f"/_matrix/client/v3/rooms/{quoted}/kick",
                json={"user_id": kicked, "reason": "test"})  # fmt: skip
    assert synapse.memberships(room_id)[kicked] == "leave"

    run = room(run_job, tenant, token_file)
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "updated"
    assert sorted(run.result["changed"]) == ["invites", "name", "topic"]
    assert run.result["invited"] == [kicked]
    assert synapse.state_content(room_id, "m.room.name")["name"] == f"Support · {tenant.owner}"
    assert "planapulse.app" in synapse.state_content(room_id, "m.room.topic")["topic"]
    assert synapse.memberships(room_id)[kicked] == "invite"

    again = room(run_job, tenant, token_file)
    assert again.result["outcome"] == "unchanged", again.output


def test_new_staff_is_invited_and_made_moderator(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, uid: str
) -> None:
    tenant.staff = tenant.staff[:1]
    assert room(run_job, tenant, token_file).rc == 0
    newcomer = synapse.register(f"staff-{uid}").user_id
    tenant.staff = [*tenant.staff, newcomer]
    run = room(run_job, tenant, token_file)
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "updated"
    assert sorted(run.result["changed"]) == ["invites", "power_levels"]
    room_id = run.result["room_id"]
    assert synapse.memberships(room_id)[newcomer] == "invite"
    assert synapse.state_content(room_id, "m.room.power_levels")["users"][newcomer] == 50


def test_an_invalid_token_is_78(
    run_job: Runner, tenant: Tenant, tmp_path: Path, synapse: Synapse
) -> None:
    bad = "syt_" + "x" * 30
    path = tmp_path / "bad-token"
    path.write_text(bad)
    run = room(run_job, tenant, str(path))
    assert run.rc == 78, run.output
    assert "PLANA_MATRIX_TOKEN_FILE" in run.stderr
    assert bad not in run.output
    assert synapse.resolve(tenant.alias) is None


def test_a_missing_token_file_is_78(run_job: Runner, tenant: Tenant, tmp_path: Path) -> None:
    run = room(run_job, tenant, str(tmp_path / "absent"))
    assert run.rc == 78, run.output


def test_a_homeserver_that_is_down_is_75(
    run_job: Runner, tenant: Tenant, token_file: str, bot: User
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    run = room(run_job, tenant, token_file, PLANA_MATRIX_HOMESERVER=down, PLANA_TIMEOUT="3")
    assert run.rc == 75, run.output
    assert "retry budget exhausted" in run.stderr
    assert len([x for x in run.logs if x["event"] == "retrying"]) >= 2
    assert_no_token(run, bot.access_token)


def test_an_alias_held_by_a_foreign_room_is_65(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, uid: str
) -> None:
    other = synapse.register(f"squatter-{uid}")
    localpart = tenant.alias[1:].split(":")[0]
    synapse.api(other, "POST", "/_matrix/client/v3/createRoom",
                json={"room_alias_name": localpart, "preset": "private_chat"})  # fmt: skip
    run = room(run_job, tenant, token_file)
    assert run.rc == 65, run.output
    assert "not ours" in run.stderr


def test_rate_limit_is_honoured(
    run_job: Runner, synapse: Synapse, staff: list[User], uid: str, tmp_path: Path
) -> None:
    limited = synapse.register(f"limited-{uid}", limited=True)
    path = tmp_path / "limited-token"
    path.write_text(limited.access_token)
    # Use up the room-creation burst (1) so that the job's creation is rate limited.
    synapse.api(limited, "POST", "/_matrix/client/v3/createRoom", json={"preset": "private_chat"})

    # A deadline shorter than the homeserver's retry_after_ms gives up at once: 75.
    first = Tenant(uid, synapse, staff)
    short = room(run_job, first, str(path), PLANA_TIMEOUT="3")
    assert short.rc == 75, short.output
    assert "M_LIMIT_EXCEEDED" in short.stderr
    assert synapse.resolve(first.alias) is None

    # With the default deadline the job waits as told, then creates the room.
    run = room(run_job, first, str(path))
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "created"
    waits = [x for x in run.logs if x["event"] == "retrying"]
    assert waits and all("M_LIMIT_EXCEEDED" in w["error"] for w in waits)
    assert all(0 < w["wait_s"] <= 10.5 for w in waits)  # the homeserver's retry_after_ms
    assert synapse.resolve(first.alias) == run.result["room_id"]


class _Recorder(Handler):
    def do_GET(self) -> None:
        self.app.hits.append(self.path)
        self.reply(500)

    do_POST = do_PUT = do_GET


class _RecordingServer(Server):
    def __init__(self) -> None:
        super().__init__(_Recorder)
        self.hits: list[str] = []


@pytest.fixture
def recorder() -> Iterator[Any]:
    with _RecordingServer() as server:
        yield server


@pytest.mark.parametrize(
    ("extra", "env", "field"),
    [
        (["--invite", "@ana:plana.test,bob"], {},
         "--invite / PLANA_MATRIX_INVITE: not a Matrix user id"),
        (["--invite", "@Ana:plana.test"], {},
         "--invite / PLANA_MATRIX_INVITE: not a Matrix user id"),
        ([], {"PLANA_MATRIX_SERVER_NAME": "bad name"},
         "--server-name / PLANA_MATRIX_SERVER_NAME: must be a Matrix server name"),
        ([], {"PLANA_MATRIX_HOMESERVER": "matrix.example"},
         "--homeserver / PLANA_MATRIX_HOMESERVER: must be an http:// or https:// URL"),
        (["--owner-name", ""], {}, "--owner-name / PLANA_OWNER_NAME: is required"),
        # A secret file not given at all is bad input (64); given but absent is 78 (below).
        ([], {"PLANA_MATRIX_TOKEN_FILE": ""},
         "--token-file / PLANA_MATRIX_TOKEN_FILE: is required"),
        (["--token-file", " "], {}, "--token-file / PLANA_MATRIX_TOKEN_FILE: is required"),
    ],
)
def test_bad_input_is_64_before_any_request(
    run_job: Runner,
    tenant: Tenant,
    token_file: str,
    recorder: Any,
    extra: list[str],
    env: dict[str, str],
    field: str,
) -> None:
    env = {"PLANA_MATRIX_HOMESERVER": recorder.url, **env}
    run = run_job.run([*tenant.args(), *extra], tenant.env(token_file, **env))
    assert run.rc == 64, run.output
    assert run.stderr.strip().splitlines()[-1].startswith(f"plana-job matrix-room: error: {field}")
    assert recorder.hits == []


def test_sigterm_while_waiting_on_the_homeserver_is_75(
    run_job: Runner, tenant: Tenant, token_file: str, bot: User
) -> None:
    with HangingServer() as hang:
        env = tenant.env(token_file, PLANA_MATRIX_HOMESERVER=hang.url, PLANA_HTTP_TIMEOUT="60")
        proc = run_job.popen(tenant.args(), **env)
        while not hang.hits and proc.poll() is None:  # wait until the job is in a request
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 75, out + err
    assert "terminated by signal" in err
    assert bot.access_token not in out + err


def state_ids(synapse: Synapse, room_id: str) -> set[tuple[str, str, str]]:
    """The room's current state, by event id: any change made in it is a new event."""
    return {(e["type"], e.get("state_key", ""), e["event_id"]) for e in synapse.state(room_id)}


def test_dry_run_plans_and_changes_nothing_on_the_homeserver(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, bot: User
) -> None:
    # Nothing exists yet: the plan is the creation; the alias stays free, no room is made.
    run = room(run_job, tenant, token_file, PLANA_DRY_RUN="1")
    assert run.rc == 0, run.output
    assert run.result["outcome"] == "planned"
    assert run.result["dry_run"] is True
    assert [s["step"] for s in run.result["steps"]] == ["create", "power_levels"]
    assert synapse.resolve(tenant.alias) is None
    assert synapse.rooms_named(tenant.owner) == []
    assert_no_token(run, bot.access_token)

    # A room changed by hand: the plan puts back what differs, and changes nothing itself.
    first = room(run_job, tenant, token_file)
    assert first.rc == 0, first.output
    room_id = first.result["room_id"]
    quoted = room_id.replace("!", "%21")
    synapse.api(bot, "PUT", f"/_matrix/client/v3/rooms/{quoted}/state/m.room.name",
                json={"name": "Somebody else's room"})  # fmt: skip
    kicked = tenant.staff[1]
    synapse.api(bot, "POST", f"/_matrix/client/v3/rooms/{quoted}/kick",
                json={"user_id": kicked, "reason": "test"})  # fmt: skip
    before = state_ids(synapse, room_id)
    plan = run_job([*tenant.args(), "--dry-run"], timeout=90, **tenant.env(token_file))
    assert plan.rc == 0, plan.output
    assert plan.result["outcome"] == "planned"
    assert [(s["step"], s.get("target")) for s in plan.result["steps"]] == [
        ("name", None), ("invite", kicked)]  # fmt: skip
    assert plan.result["room_id"] == room_id
    assert state_ids(synapse, room_id) == before
    assert synapse.memberships(room_id)[kicked] == "leave"

    # Converged: the plan is empty.
    assert room(run_job, tenant, token_file).result["outcome"] == "updated"
    before = state_ids(synapse, room_id)
    done = room(run_job, tenant, token_file, PLANA_DRY_RUN="1")
    assert done.rc == 0, done.output
    assert done.result["steps"] == []
    assert state_ids(synapse, room_id) == before
    assert len(synapse.rooms_named(tenant.owner)) == 1


def test_dry_run_of_an_alias_held_by_a_foreign_room_is_65(
    run_job: Runner, tenant: Tenant, token_file: str, synapse: Synapse, uid: str
) -> None:
    other = synapse.register(f"squatter-{uid}")
    localpart = tenant.alias[1:].split(":")[0]
    body = {"room_alias_name": localpart, "preset": "private_chat"}
    theirs = synapse.api(other, "POST", "/_matrix/client/v3/createRoom", json=body)["room_id"]
    before = state_ids(synapse, theirs)
    run = room(run_job, tenant, token_file, PLANA_DRY_RUN="1")
    assert run.rc == 65, run.output
    assert "not ours" in run.stderr
    assert state_ids(synapse, theirs) == before
