"""A real Synapse homeserver for the matrix-room tests: started once per session on loopback.

Synapse comes from PyPI into its own virtualenv (`make synapse` builds `.venv-synapse`; CI does
that before the tests). The interpreter is `PLANA_TEST_SYNAPSE_PYTHON` or
`.venv-synapse/bin/python`; when neither exists the tests FAIL (they are never skipped: a
missing homeserver must not pass for a green suite).

With `PLANA_TEST_SYNAPSE_URL` (and `PLANA_TEST_SYNAPSE_SHARED_SECRET`) the tests use a running
homeserver instead, e.g. the `synapse` service of docker-compose.test.yml.

The homeserver runs in a temporary directory with SQLite, a `registration_shared_secret` for
creating users, and rate limits relaxed for everything but room creation: users made with
`limited=True` keep the room-creation limit (to exercise M_LIMIT_EXCEEDED); every other user gets
the admin API's ratelimit override (no limits).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

ROOT = Path(__file__).resolve().parents[2]
SERVER_NAME = "plana.test"
# Room creation stays limited (burst 1, then one per 10 s) for users without the override; the
# window is longer than a job's start-up on a loaded machine, so the limit is sure to be hit.
ROOM_CREATION_RATE = {"per_second": 0.1, "burst_count": 1}
_LOOSE = {"per_second": 1000, "burst_count": 1000}


def synapse_python() -> Path:
    env = os.environ.get("PLANA_TEST_SYNAPSE_PYTHON")
    path = Path(env) if env else ROOT / ".venv-synapse" / "bin" / "python"
    if not path.exists():
        raise RuntimeError(
            f"Synapse not found at {path}: run `make synapse` (pip install matrix-synapse into "
            ".venv-synapse) or set PLANA_TEST_SYNAPSE_PYTHON"
        )
    return path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _config(workdir: Path, port: int, shared_secret: str) -> dict[str, Any]:
    return {
        "server_name": SERVER_NAME,
        "public_baseurl": f"http://127.0.0.1:{port}/",
        "pid_file": str(workdir / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(workdir / "homeserver.db")}},
        "log_config": str(workdir / "log.yaml"),
        "media_store_path": str(workdir / "media"),
        "signing_key_path": str(workdir / "signing.key"),
        "registration_shared_secret": shared_secret,
        "macaroon_secret_key": secrets.token_hex(16),
        "form_secret": secrets.token_hex(16),
        "report_stats": False,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "enable_metrics": False,
        "bcrypt_rounds": 4,
        "presence": {"enabled": False},
        "url_preview_enabled": False,
        "rc_message": _LOOSE,
        "rc_registration": _LOOSE,
        "rc_registration_token_validity": _LOOSE,
        "rc_login": {"address": _LOOSE, "account": _LOOSE, "failed_attempts": _LOOSE},
        "rc_admin_redaction": _LOOSE,
        "rc_joins": {"local": _LOOSE, "remote": _LOOSE},
        "rc_joins_per_room": _LOOSE,
        "rc_invites": {"per_room": _LOOSE, "per_user": _LOOSE, "per_issuer": _LOOSE},
        "rc_3pid_validation": _LOOSE,
        "rc_room_creation": ROOM_CREATION_RATE,
    }


_LOG_CONFIG = """\
version: 1
formatters:
  plain: {format: '%(asctime)s %(levelname)s %(name)s %(message)s'}
handlers:
  file: {class: logging.FileHandler, filename: LOGFILE, formatter: plain}
root: {level: WARNING, handlers: [file]}
disable_existing_loggers: false
"""


@dataclass
class User:
    user_id: str
    access_token: str


class Synapse:
    def __init__(self, workdir: Path, url: str | None = None, shared_secret: str = "") -> None:
        self.workdir = workdir
        self.external = url is not None
        self.port = free_port()
        self.url = (url or f"http://127.0.0.1:{self.port}").rstrip("/")
        self.server_name = os.environ.get("PLANA_TEST_SYNAPSE_SERVER_NAME", SERVER_NAME)
        self._shared_secret = shared_secret or secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.admin: User | None = None
        self.http = httpx.Client(base_url=self.url, timeout=30)

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    def from_env(cls, workdir: Path) -> Synapse:
        url = os.environ.get("PLANA_TEST_SYNAPSE_URL")
        if url:
            return cls(workdir, url, os.environ.get("PLANA_TEST_SYNAPSE_SHARED_SECRET", ""))
        return cls(workdir)

    def start(self, timeout: float = 60) -> Synapse:
        if self.external:
            self.admin = self.register("admin-" + secrets.token_hex(3), admin=True, limited=True)
            return self
        python = synapse_python()
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "media").mkdir(exist_ok=True)
        # The config is YAML; JSON is a subset of YAML, so no YAML writer is needed.
        config = self.workdir / "homeserver.yaml"
        config.write_text(json.dumps(_config(self.workdir, self.port, self._shared_secret)))
        log_file = self.workdir / "homeserver.log"
        (self.workdir / "log.yaml").write_text(_LOG_CONFIG.replace("LOGFILE", str(log_file)))
        # An ed25519 signing key: "ed25519 <key id> <unpadded base64 of a 32-byte seed>".
        seed = secrets.token_bytes(32)
        b64 = __import__("base64").b64encode(seed).decode().rstrip("=")
        (self.workdir / "signing.key").write_text(f"ed25519 a_test {b64}\n")
        self.proc = subprocess.Popen(
            [str(python), "-m", "synapse.app.homeserver", "--config-path", str(config)],
            cwd=self.workdir,
            stdout=open(self.workdir / "stdout.log", "wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise RuntimeError(f"synapse exited {self.proc.returncode}: {self.tail()}")
            try:
                if self.http.get("/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        else:
            self.stop()
            raise RuntimeError(f"synapse did not start within {timeout}s: {self.tail()}")
        self.admin = self.register("admin-" + secrets.token_hex(3), admin=True, limited=True)
        return self

    def tail(self) -> str:
        parts = []
        for name in ("stdout.log", "homeserver.log"):
            path = self.workdir / name
            if path.exists():
                parts.append(path.read_text(errors="replace")[-2000:])
        return "\n".join(parts)

    def stop(self) -> None:
        self.http.close()
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    # -- users -------------------------------------------------------------------------------

    def register(self, localpart: str, *, admin: bool = False, limited: bool = False) -> User:
        """A user through the shared-secret registration API; unlimited unless `limited`."""
        nonce = self.http.get("/_synapse/admin/v1/register").json()["nonce"]
        password = secrets.token_hex(12)
        mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
        mac.update(b"\x00".join([nonce.encode(), localpart.encode(), password.encode(),
                                 b"admin" if admin else b"notadmin"]))  # fmt: skip
        res = self.http.post(
            "/_synapse/admin/v1/register",
            json={"nonce": nonce, "username": localpart, "password": password,
                  "admin": admin, "mac": mac.hexdigest()},
        )  # fmt: skip
        res.raise_for_status()
        user = User(res.json()["user_id"], res.json()["access_token"])
        if not limited:
            assert self.admin is not None
            self.admin_api(
                "POST",
                f"/_synapse/admin/v1/users/{quote(user.user_id)}/override_ratelimit",
                json={"messages_per_second": 0, "burst_count": 0},
            )
        return user

    # -- inspection (as the admin, or as a given user) ----------------------------------------

    def admin_api(self, method: str, path: str, **kwargs: Any) -> Any:
        assert self.admin is not None
        return self.api(self.admin, method, path, **kwargs)

    def api(self, user: User, method: str, path: str, **kwargs: Any) -> Any:
        res = self.http.request(
            method, path, headers={"Authorization": f"Bearer {user.access_token}"}, **kwargs
        )
        res.raise_for_status()
        return res.json()

    def rooms_named(self, term: str) -> list[dict[str, Any]]:
        """Rooms whose name, canonical alias or id contains `term` (admin room list)."""
        data = self.admin_api("GET", "/_synapse/admin/v1/rooms", params={"search_term": term})
        rooms: list[dict[str, Any]] = data["rooms"]
        return rooms

    def resolve(self, alias: str) -> str | None:
        res = self.http.get(f"/_matrix/client/v3/directory/room/{quote(alias)}")
        if res.status_code == 404:
            return None
        res.raise_for_status()
        room_id: str = res.json()["room_id"]
        return room_id

    def state(self, room_id: str) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = self.admin_api(
            "GET", f"/_synapse/admin/v1/rooms/{quote(room_id)}/state"
        )["state"]
        return events

    def state_content(self, room_id: str, event_type: str, key: str = "") -> dict[str, Any]:
        for event in self.state(room_id):
            if event["type"] == event_type and event.get("state_key", "") == key:
                content: dict[str, Any] = event["content"]
                return content
        return {}

    def memberships(self, room_id: str) -> dict[str, str]:
        return {
            e["state_key"]: e["content"].get("membership", "")
            for e in self.state(room_id)
            if e["type"] == "m.room.member"
        }
