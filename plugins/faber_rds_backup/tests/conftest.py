"""Fixtures for the rds-snapshot provider: a moto server on 127.0.0.1 that real boto3 clients talk to.

Every test starts from an empty moto (``/moto-api/reset``) with IAM enforcement off; tests that
need permissions enforced create an IAM user in moto and switch enforcement on through
``/moto-api/reset-auth``.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests
from faber_core.context import RunContext, open_context
from faber_core.plugins import Plugins
from faber_core.testing.fixtures import CANARY_PASSWORD
from moto.server import ThreadedMotoServer

from faber_rds_backup import plugin

REGION = "eu-west-1"
ENVIRONMENT = "production"
URL_ENV = "RDS_TEST_DATABASE_URL"
# The provider never connects to the database; the URL only has to parse, and carries the canary.
UNUSED_DATABASE_URL = f"postgresql://app:{CANARY_PASSWORD}@127.0.0.1:5432/app"
FAKE_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_SESSION_TOKEN": "testing"}


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    with pytest.MonkeyPatch.context() as patch:
        for name, value in FAKE_CREDENTIALS.items():
            patch.setenv(name, value)
        patch.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


@pytest.fixture(autouse=True)
def fresh_moto(moto_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    requests.post(f"{moto_endpoint}/moto-api/reset", timeout=10).raise_for_status()
    yield moto_endpoint
    set_iam_enforcement(moto_endpoint, enforced=False)


def set_iam_enforcement(endpoint: str, *, enforced: bool) -> None:
    """With enforcement on, every call must be signed by a moto IAM user whose policies allow it."""
    count = "0" if enforced else "inf"
    requests.post(f"{endpoint}/moto-api/reset-auth", data=count.encode(), timeout=10).raise_for_status()


@pytest.fixture
def iam_user(aws, moto_endpoint: str, monkeypatch: pytest.MonkeyPatch):
    """``become(actions)``: create a moto IAM user allowed exactly ``actions`` (on any resource), put its
    keys in the environment for boto3's credential chain, and switch IAM enforcement on.
    ``become(None)`` switches enforcement off again (the fake keys still work then)."""

    def become(actions: list[str] | None) -> None:
        if actions is None:
            set_iam_enforcement(moto_endpoint, enforced=False)
            return
        iam = aws("iam")
        name = f"deployer-{len(iam.list_users()['Users'])}"
        iam.create_user(UserName=name)
        statement = {"Effect": "Allow", "Action": actions, "Resource": "*"}
        iam.put_user_policy(
            UserName=name,
            PolicyName="faber",
            PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [statement]}),
        )
        key = iam.create_access_key(UserName=name)["AccessKey"]
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", key["AccessKeyId"])
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", key["SecretAccessKey"])
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        set_iam_enforcement(moto_endpoint, enforced=True)

    return become


@pytest.fixture
def aws(moto_endpoint: str):
    """``aws(service) -> client`` on the moto server, with the fake test credentials."""

    def client(service: str, **credentials: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=moto_endpoint, **credentials)

    return client


@pytest.fixture
def rds(aws) -> Any:
    return aws("rds")


def create_instance(rds: Any, identifier: str = "prod-db", **options: Any) -> dict[str, Any]:
    return rds.create_db_instance(
        DBInstanceIdentifier=identifier,
        Engine="postgres",
        DBInstanceClass="db.t3.micro",
        AllocatedStorage=20,
        MasterUsername="app",
        MasterUserPassword="not-a-real-secret-1",
        Tags=[{"Key": "team", "Value": "payments"}],
        **options,
    )["DBInstance"]


@pytest.fixture
def new_instance(rds):
    """``make(identifier="prod-db", **create_db_instance_options) -> dict``: a PostgreSQL instance in moto."""
    return lambda identifier="prod-db", **options: create_instance(rds, identifier, **options)


@pytest.fixture
def rds_instance(rds) -> dict[str, Any]:
    return create_instance(rds)


@pytest.fixture
def backup_settings(moto_endpoint: str):
    """``settings(**overrides) -> dict``: an rds-snapshot backup block aimed at the moto server."""

    def make(**overrides: Any) -> dict[str, Any]:
        return {
            "provider": "rds-snapshot",
            "db_instance_identifier": "prod-db",
            "region": REGION,
            "endpoint_url": moto_endpoint,
            "poll_interval_seconds": 0.2,
            "wait_timeout_seconds": 30,
            **overrides,
        }

    return make


@pytest.fixture
def rds_context(faber_project, backup_settings, monkeypatch, tmp_path):
    """``make(events=None, environment="production", **backup_overrides) -> RunContext``.

    Every context of one test shares one project directory, so they see the same manifests.
    """
    monkeypatch.setenv(URL_ENV, UNUSED_DATABASE_URL)

    def make(events: list | None = None, environment: str = ENVIRONMENT, **overrides: Any) -> RunContext:
        environments = {environment: {"database_url_env": URL_ENV, "backup": backup_settings(**overrides)}}
        project = faber_project(
            {"database": {"migration_tool": "prisma", "environments": environments}}, root=tmp_path / "project"
        )
        listeners = [events.append] if events is not None else []
        return open_context(project, environment, "deploy-migrations", listeners=listeners)

    return make


@pytest.fixture
def rds_plugins(plugin_manager) -> Plugins:
    plugin_manager.register(plugin, name="rds_backup")
    return Plugins(plugin_manager)


# Throttling: a proxy in front of moto that answers like RDS does when it throttles ----------------

THROTTLING_RESPONSE = (
    '<ErrorResponse xmlns="http://rds.amazonaws.com/doc/2014-10-31/">'
    "<Error><Type>Sender</Type><Code>Throttling</Code><Message>Rate exceeded</Message></Error>"
    "<RequestId>7d1c4c3e-0000-4000-8000-000000000000</RequestId></ErrorResponse>"
)


class ThrottlingProxy:
    """Forwards to moto, except that the first ``count`` calls of ``action`` get RDS's throttling error
    (or another error, :meth:`refuse`), and that a call can be held unanswered (a moment to signal a
    faber that waits on AWS)."""

    def __init__(self, upstream: str) -> None:
        self.upstream = urlsplit(upstream)
        self.action = ""
        self.remaining = 0
        self.error: Callable[[Any], str] = lambda headers: THROTTLING_RESPONSE
        self.throttled = 0
        self.forwarded: list[str] = []
        self.held_action = ""
        self.hold_after: tuple[str, int] = ("", 0)
        self.hold_answer = False
        self.holding = threading.Event()
        self.released = threading.Event()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                action = next((p.split("=", 1)[1] for p in body.decode().split("&") if p.startswith("Action=")), "")
                if action == proxy.action and proxy.remaining > 0:
                    proxy.remaining -= 1
                    proxy.throttled += 1
                    self._answer(400, {"Content-Type": "text/xml"}, proxy.error(self.headers).encode())
                    return
                held = action == proxy.held_action and proxy.forwarded.count(proxy.hold_after[0]) >= proxy.hold_after[1]
                if held and not proxy.hold_answer:
                    proxy.holding.set()
                    proxy.released.wait(60)
                proxy.forwarded.append(action)
                upstream = http.client.HTTPConnection(proxy.upstream.hostname, proxy.upstream.port, timeout=30)
                upstream.request("POST", self.path, body, dict(self.headers))
                response = upstream.getresponse()
                answer = response.read()
                if held and proxy.hold_answer:
                    proxy.holding.set()
                    proxy.released.wait(60)
                self._answer(response.status, dict(response.getheaders()), answer)

            def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection", "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                try:
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the caller was stopped while its answer was held

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def throttle(self, action: str, count: int) -> None:
        self.refuse(action, count, lambda headers: THROTTLING_RESPONSE)

    def refuse(self, action: str, count: int, error: Callable[[Any], str]) -> None:
        """Answer the next ``count`` calls of ``action`` with ``error(request headers)``, an RDS error document."""
        self.action, self.remaining, self.error = action, count, error

    def hold(self, action: str, *, after: str, count: int = 1, answer: bool = False) -> None:
        """Hold every call of ``action`` made once ``after`` was forwarded ``count`` times, until :meth:`release`.

        With ``answer``, the call reaches moto at once and its answer is held instead: what it asked
        for exists while the caller still waits, as when AWS's answer is slow or lost."""
        self.held_action, self.hold_after, self.hold_answer = action, (after, count), answer

    def release(self) -> None:
        self.held_action = ""
        self.released.set()


@pytest.fixture
def throttling_proxy(moto_endpoint: str) -> Iterator[ThrottlingProxy]:
    proxy = ThrottlingProxy(moto_endpoint)
    yield proxy
    proxy.server.shutdown()
    proxy.server.server_close()
