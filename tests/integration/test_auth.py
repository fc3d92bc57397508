"""Authentication and roles as clients meet them: bearer tokens on every HTTP route, the failed-login
limit, ``pacs users``, the first admin of ``pacs serve``, and the AE allowlist's roles over DIMSE."""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import Depends, FastAPI
from fastapi.routing import APIRoute, RouteContext, iter_route_contexts
from fastapi.staticfiles import StaticFiles
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    DigitalXRayImageStorageForPresentation,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from api.app import create_app
from api.auth import LOGIN, require, required_permission
from pacs.archive import Archive, open_archive
from pacs.cli import main
from pacs.config import load_settings
from pacs.context import CallerContext
from pacs.security import FAILED_LOGIN_LIMIT, Permission, Role, allows
from tests.conftest import RunningNode, start_dicom_node
from tests.support.factories import diconde_dx, write
from tests.support.serve import PacsServer, archive_flags, run_pacs, wait_until
from tests.support.web import RunningWeb

OPEN_ROUTES = {"/", "/health", "/metrics", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
NOT_AUTHORIZED = 0x0124


# -- every HTTP route ---------------------------------------------------------------------------
def protected_routes(archive: Archive) -> list[tuple[RouteContext, Permission | str]]:
    routes = []
    for route in iter_route_contexts(create_app(archive).routes):
        if isinstance(route.original_route, APIRoute):
            permission = required_permission(route)
            if permission is not None:
                routes.append((route, permission))
    return routes


def example_path(route: RouteContext) -> str:
    """The route's path with a value for each parameter: UIDs nobody stored, frame 1."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return "1" if "frame" in name else "AE_NOBODY" if "ae" in name else "1.2.826.0.1.3680043.10.999"

    return re.sub(r"\{(\w+)\}", value, str(route.path_format))


def test_every_route_but_the_operational_ones_declares_a_permission(archive: Archive) -> None:
    unprotected = []
    for route in iter_route_contexts(create_app(archive).routes):
        path = route.path_format or route.path
        if path in OPEN_ROUTES:
            continue
        if isinstance(route.original_route, APIRoute):
            if required_permission(route) is None:
                unprotected.append(f"{sorted(route.methods or ())} {path}")
        elif not isinstance(getattr(route.original_route, "app", None), StaticFiles):  # viewer files
            unprotected.append(f"{type(route.original_route).__name__} {path}")
    assert unprotected == []
    assert len(protected_routes(archive)) > 0


def test_each_route_answers_401_without_a_token_and_403_to_roles_lacking_its_permission(
    web: RunningWeb,
) -> None:
    routes = protected_routes(web.archive)
    clients = {role: web.client(role.value) for role in Role}
    anonymous = web.client(None)
    checked: list[str] = []
    try:
        for route, permission in routes:
            path = example_path(route)
            for method in sorted(route.methods or ()):
                where = f"{method} {path} (needs {permission})"
                response = anonymous.request(method, path)
                assert response.status_code == 401, where
                assert response.headers["www-authenticate"].startswith("Bearer"), where
                for role, client in clients.items():
                    response = client.request(method, path)
                    if permission == LOGIN or allows(role, permission):  # type: ignore[arg-type]
                        assert response.status_code not in (401, 403), f"{where} as {role}: {response.text}"
                    else:
                        assert response.status_code == 403, f"{where} as {role}: {response.text}"
                        assert f"role {role}" in response.json()["detail"], where
                checked.append(where)
    finally:
        for client in (*clients.values(), anonymous):
            client.close()
    assert len(checked) >= len(routes)


def test_a_device_cannot_query_and_an_auditor_cannot_store(web: RunningWeb) -> None:
    with (
        web.client("device") as device,
        web.client("auditor") as auditor,
        web.client("inspector") as inspector,
    ):
        assert device.get("/dicom-web/studies").status_code == 403
        assert inspector.get("/dicom-web/studies").status_code == 200
        stow = auditor.post(
            "/dicom-web/studies",
            content=b"",
            headers={"Content-Type": 'multipart/related; type="application/dicom"; boundary=x'},
        )
        assert stow.status_code == 403
        assert stow.json()["detail"] == "role auditor does not grant the store permission"


# -- tokens ---------------------------------------------------------------------------------------
def test_unknown_and_revoked_tokens_get_401_with_a_bearer_challenge(web: RunningWeb) -> None:
    token = web.archive.users.add("ws-7", "inspector")
    url = f"{web.dicomweb}/studies"
    assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200

    missing = httpx.get(url, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["www-authenticate"] == 'Bearer realm="pacs"'
    assert "Authorization: Bearer" in missing.json()["detail"]

    wrong_scheme = httpx.get(url, headers={"Authorization": f"Basic {token}"}, timeout=10)
    assert wrong_scheme.status_code == 401

    web.archive.users.revoke("ws-7")
    revoked = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert revoked.status_code == 401
    assert revoked.headers["www-authenticate"] == 'Bearer realm="pacs", error="invalid_token"'
    assert revoked.json()["detail"] == "the API token is unknown or revoked"


def test_expired_tokens_get_401_saying_so_and_renew_issues_a_new_one(
    web: RunningWeb, caplog: pytest.LogCaptureFixture
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    token = web.archive.users.add("ws-8", "inspector", expires_at=past)
    caplog.set_level(logging.INFO, logger="api.auth")
    for _ in range(FAILED_LOGIN_LIMIT + 1):  # expiry is not a failed login: never answered 429
        expired = httpx.get(
            f"{web.base_url}/api/me", headers={"Authorization": f"Bearer {token}"}, timeout=10
        )
        assert expired.status_code == 401
    assert expired.headers["www-authenticate"] == 'Bearer realm="pacs", error="invalid_token"'
    detail = expired.json()["detail"]
    assert detail.startswith(f"the API token expired at {past:%Y-%m-%d %H:%M:%S} UTC")
    assert "pacs users renew ws-8" in detail
    assert any("ws-8 from 127.0.0.1: API token expired" in r.getMessage() for r in caplog.records)

    later = dt.datetime.now(dt.UTC) + dt.timedelta(days=30)
    renewed = web.archive.users.renew("ws-8", expires_at=later)
    old = httpx.get(f"{web.dicomweb}/studies", headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert old.status_code == 401 and old.json()["detail"] == "the API token is unknown or revoked"
    me = httpx.get(f"{web.base_url}/api/me", headers={"Authorization": f"Bearer {renewed}"}, timeout=10)
    assert me.status_code == 200
    assert abs(dt.datetime.fromisoformat(me.json()["token_expires_at"]) - later) < dt.timedelta(seconds=1)


def test_me_names_the_user_role_and_permissions_of_any_valid_token(web: RunningWeb) -> None:
    expected = {
        "device": ["store"],
        "inspector": ["query", "retrieve", "decide"],
        "auditor": ["query", "retrieve", "audit"],
        "admin": ["store", "query", "retrieve", "decide", "audit", "admin"],
    }
    for role, permissions in expected.items():
        with web.client(role) as client:
            me = client.get("/api/me")
        assert me.status_code == 200, me.text
        body = me.json()
        assert body["name"].startswith(f"test-{role}-")
        assert (body["role"], body["permissions"], body["token_expires_at"]) == (role, permissions, None)
    assert httpx.get(f"{web.base_url}/api/me", timeout=10).status_code == 401


def test_failed_logins_are_logged_without_the_token_then_answered_429(
    web: RunningWeb, caplog: pytest.LogCaptureFixture
) -> None:
    good = web.token("inspector")
    assert good is not None
    url = f"{web.dicomweb}/studies"
    wrong = "not-a-token-" + "x" * 30
    caplog.set_level(logging.INFO, logger="api.auth")
    for _ in range(FAILED_LOGIN_LIMIT):
        assert httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10).status_code == 401
    blocked = httpx.get(url, headers={"Authorization": f"Bearer {wrong}"}, timeout=10)
    assert blocked.status_code == 429
    assert 1 <= int(blocked.headers["retry-after"]) <= 60
    assert "too many failed logins from 127.0.0.1" in blocked.json()["detail"]
    # While blocked, even the right token is refused: answers must not tell a guess that hit.
    assert httpx.get(url, headers={"Authorization": f"Bearer {good}"}, timeout=10).status_code == 429

    failures = [r for r in caplog.records if r.getMessage().startswith("failed login from 127.0.0.1")]
    assert len(failures) == FAILED_LOGIN_LIMIT
    assert all(wrong not in r.getMessage() and good not in r.getMessage() for r in caplog.records)


def test_missing_tokens_are_not_counted_as_failed_logins(web: RunningWeb) -> None:
    url = f"{web.dicomweb}/studies"
    for _ in range(FAILED_LOGIN_LIMIT + 2):
        assert httpx.get(url, timeout=10).status_code == 401
    assert httpx.get(url, headers=web.headers("inspector"), timeout=10).status_code == 200


def test_a_failed_login_the_index_cannot_record_is_still_401_and_limited_in_the_process(
    web: RunningWeb, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The index goes away between checking a token and recording the failure: never a 500."""
    from pacs.errors import ResourceUnavailable

    def unavailable(*args: object, **kwargs: object) -> float:
        raise ResourceUnavailable("index unavailable: connection refused")

    monkeypatch.setattr(web.archive.login_failures, "record", unavailable)
    url = f"{web.dicomweb}/studies"
    wrong = {"Authorization": "Bearer not-a-token-" + "x" * 30}
    caplog.set_level(logging.ERROR, logger="pacs.security")
    for _ in range(FAILED_LOGIN_LIMIT):
        assert httpx.get(url, headers=wrong, timeout=10).status_code == 401
    assert httpx.get(url, headers=wrong, timeout=10).status_code == 429  # counted in the process
    assert any("cannot record a failed login from 127.0.0.1" in r.getMessage() for r in caplog.records)


# -- the failed-login limit over several processes, and the proxies it believes ---------------------
def served_index(database: str, tmp_path: Path, request: pytest.FixtureRequest) -> dict[str, object]:
    """Settings of a new archive for ``pacs serve``: SQLite in the data folder, or a PostgreSQL
    database of its own."""
    values: dict[str, object] = {"data_dir": tmp_path / "archive"}
    if database == "postgresql":
        values["database_url"] = request.getfixturevalue("postgres_url")
    return values


def worker_of(server: PacsServer, path: str) -> str:
    """The worker process whose log names the request for ``path`` (each test request has a path
    of its own)."""
    line = re.compile(rf"\[(worker-\d+)\] .*{re.escape(path)}\b")
    found: list[str] = []
    wait_until(lambda: found.extend(line.findall(server.log())) or found, 10, f"the log line of {path}")
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_the_failed_login_limit_holds_across_the_workers_of_pacs_serve(
    database: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Failures spread over both workers of ``pacs serve --workers 2`` add up to one limit.

    Each worker gets fewer than the limit, so a count per process (as before the index kept it)
    would never answer 429. A kept-alive connection stays with the worker that accepted it: the
    test opens connections until it holds one on each worker, learning which from the log line of
    a request that is refused without being a failed login (a device asking to query)."""
    values = served_index(database, tmp_path, request)
    archive = open_archive(load_settings(values))
    try:
        device = {"Authorization": f"Bearer {archive.users.add('probe', Role.DEVICE)}"}
        good = {"Authorization": f"Bearer {archive.users.add('ws-30', Role.INSPECTOR)}"}
    finally:
        archive.close()
    wrong = {"Authorization": "Bearer not-a-token-" + "x" * 30}
    paths = (f"/dicom-web/studies/1.2.826.0.1.3680043.10.999.{n}/series" for n in range(1000))
    with PacsServer(archive_flags(values), workers=2, log_path=tmp_path / "serve.log") as server:
        on: dict[str, httpx.Client] = {}
        try:
            for _ in range(50):
                client = httpx.Client(base_url=server.http_url, timeout=10)
                path = next(paths)
                assert client.get(path, headers=device).status_code == 403
                worker = worker_of(server, path)
                if worker in on:
                    client.close()
                    continue
                on[worker] = client
                if len(on) == 2:
                    break
            assert sorted(on) == ["worker-1", "worker-2"], "no connection reached the second worker"

            failures = {worker: 0 for worker in on}
            for _ in range(FAILED_LOGIN_LIMIT):
                worker = min(failures, key=failures.__getitem__)
                path = next(paths)
                assert on[worker].get(path, headers=wrong).status_code == 401
                failures[worker_of(server, path)] += 1
            assert sum(failures.values()) == FAILED_LOGIN_LIMIT
            assert all(0 < n < FAILED_LOGIN_LIMIT for n in failures.values()), failures

            # Each worker has seen fewer than the limit, yet both refuse the address now, the
            # right token included; a worker learns at its next failure at the latest (one guess
            # more per process, the documented bound).
            for client in on.values():
                answer = client.get(next(paths), headers=wrong)
                if answer.status_code == 401:
                    answer = client.get(next(paths), headers=wrong)
                assert answer.status_code == 429, answer.text
                assert "too many failed logins from 127.0.0.1" in answer.json()["detail"]
                assert 1 <= int(answer.headers["retry-after"]) <= 60
                assert client.get(next(paths), headers=good).status_code == 429
        finally:
            for client in on.values():
                client.close()
        logged = [line for line in server.log().splitlines() if "failed login from 127.0.0.1" in line]
        assert FAILED_LOGIN_LIMIT <= len(logged) <= FAILED_LOGIN_LIMIT + 1


@pytest.mark.parametrize(("trusted_proxies", "seen_as"), [(None, "127.0.0.1"), ("127.0.0.1", "203.0.113.9")])
def test_x_forwarded_for_counts_only_from_a_trusted_proxy(
    trusted_proxies: str | None, seen_as: str, tmp_path: Path
) -> None:
    """By default a local process cannot pick the address its failed logins are limited and
    audited under; behind a proxy listed in ``trusted_proxies``, the client it names is the one."""
    data = tmp_path / "archive"
    env = {"PACS_TRUSTED_PROXIES": trusted_proxies} if trusted_proxies else None
    with PacsServer(["--data-dir", data], workers=1, env=env, log_path=tmp_path / "serve.log") as server:
        good = {"Authorization": f"Bearer {server.stdout_lines[1]}"}  # the first admin's token
        url = f"{server.http_url}/dicom-web/studies"
        spoofed = {"Authorization": "Bearer not-a-token-" + "x" * 30, "X-Forwarded-For": "203.0.113.9"}
        for _ in range(FAILED_LOGIN_LIMIT):
            assert httpx.get(url, headers=spoofed, timeout=10).status_code == 401
        blocked = httpx.get(url, headers={**good, "X-Forwarded-For": "203.0.113.9"}, timeout=10)
        assert blocked.status_code == 429
        assert f"too many failed logins from {seen_as};" in blocked.json()["detail"]
        direct = httpx.get(url, headers=good, timeout=10)  # from 127.0.0.1, without the header
        assert direct.status_code == (429 if seen_as == "127.0.0.1" else 200)
    failures = [line for line in server.log().splitlines() if "failed login from" in line]
    assert len(failures) == FAILED_LOGIN_LIMIT
    assert all(f"failed login from {seen_as}:" in line for line in failures)
    archive = open_archive(load_settings({"data_dir": data}), upgrade_schema=False)
    try:
        audited = archive.audit.entries(action="login-failed")
    finally:
        archive.close()
    assert len(audited) == FAILED_LOGIN_LIMIT
    assert all((entry.address or "").startswith(f"{seen_as}:") for entry in audited)


def test_require_hands_the_route_the_authenticated_caller(archive: Archive) -> None:
    app = FastAPI()
    app.state.archive = archive

    @app.get("/who")
    def who(caller: CallerContext = Depends(require(Permission.QUERY))) -> dict[str, Any]:  # noqa: B008
        return {"via": caller.via, "user": caller.user, "address": caller.address}

    token = archive.users.add("ws-9", Role.AUDITOR)
    with TestClient(app) as client:
        answer = client.get("/who", headers={"Authorization": f"Bearer {token}"})
    assert answer.json() == {"via": "http", "user": "ws-9", "address": "testclient:50000"}


def test_user_repository_keeps_only_the_token_hash_and_refuses_reused_names(archive: Archive) -> None:
    from sqlalchemy import select

    from pacs.index.schema import users
    from pacs.index.users import InvalidUser, UserExists

    token = archive.users.add("ut-rig-3", "device")
    with archive.engine.connect() as conn:
        stored = [tuple(row) for row in conn.execute(select(users))]
    assert stored and all(token not in str(value) for row in stored for value in row)
    user = archive.users.authenticate(token)
    assert user is not None and user.name == "ut-rig-3" and user.role is Role.DEVICE
    assert user.created_at.tzinfo is not None
    assert abs(user.created_at - dt.datetime.now(dt.UTC)) < dt.timedelta(minutes=1)
    with pytest.raises(UserExists):
        archive.users.add("ut-rig-3", "inspector")
    archive.users.revoke("ut-rig-3")
    with pytest.raises(UserExists):  # a revoked name stays taken
        archive.users.add("ut-rig-3", "inspector")
    with pytest.raises(InvalidUser, match="unknown role 'boss'"):
        archive.users.add("someone", "boss")
    with pytest.raises(InvalidUser, match="user name 'two words'"):
        archive.users.add("two words", "admin")
    assert archive.users.add_first_admin() is None  # there are users already


# -- the command line -------------------------------------------------------------------------------
def test_pacs_users_add_list_revoke(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "archive")]
    added = run_pacs("users", "add", "ws-12", "--role", "inspector", *data)  # as an operator runs it
    assert added.returncode == 0, added.stderr
    token = added.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", token)
    assert token not in added.stderr

    def pacs(*args: str) -> tuple[int, str, str]:
        code = main([*args, *data])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = pacs("users", "list")
    assert code == 0
    (line,) = out.splitlines()
    assert line.split()[:2] == ["ws-12", "inspector"] and line.endswith("active")

    archive = open_archive(load_settings({"data_dir": tmp_path / "archive"}))
    try:
        user = archive.users.authenticate(token)
        assert user is not None and user.name == "ws-12" and user.role is Role.INSPECTOR

        code, _, err = pacs("users", "add", "ws-12", "--role", "admin")
        assert code == 1 and "a user named 'ws-12' exists already" in err
        with pytest.raises(SystemExit) as usage:
            pacs("users", "add", "ws-13", "--role", "boss")
        assert usage.value.code == 2
        assert "invalid choice: 'boss'" in capsys.readouterr().err

        code, out, _ = pacs("users", "revoke", "ws-12")
        assert code == 0 and "revoked ws-12" in out
        assert archive.users.authenticate(token) is None
    finally:
        archive.close()
    code, out, _ = pacs("users", "list")
    assert "revoked" in out.splitlines()[0]
    code, _, err = pacs("users", "revoke", "nobody")
    assert code == 1 and "no user named 'nobody'" in err
    code, _, err = pacs("users", "renew", "ws-12")
    assert code == 1 and "user 'ws-12' is revoked: its token cannot be renewed" in err


def test_pacs_users_expiry_and_renew(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ["--data-dir", str(tmp_path / "archive")]

    def pacs(*args: str) -> tuple[int, str, str]:
        code = main([*args, *data])
        out, err = capsys.readouterr()
        return code, out, err

    code, out, _ = pacs("users", "add", "ws-20", "--role", "auditor", "--expires-in", "7")
    assert code == 0 and "valid until" in out
    first = out.strip().splitlines()[-1]
    code, out, _ = pacs("users", "list")
    (line,) = out.splitlines()
    assert "active, expires" in line
    with pytest.raises(SystemExit):
        pacs("users", "add", "ws-21", "--role", "auditor", "--expires-in", "-1")
    assert "between 0 and 36500 days" in capsys.readouterr().err

    code, out, _ = pacs("users", "renew", "ws-20")
    assert code == 0 and "the old one no longer works" in out and "valid until" not in out
    second = out.strip().splitlines()[-1]
    assert second != first and re.fullmatch(r"[A-Za-z0-9_-]{43}", second)
    archive = open_archive(load_settings({"data_dir": tmp_path / "archive"}))
    try:
        assert archive.users.authenticate(first) is None
        user = archive.users.authenticate(second)
        assert user is not None and user.expires_at is None and not user.expired()
    finally:
        archive.close()
    code, _, err = pacs("users", "renew", "nobody")
    assert code == 1 and "no user named 'nobody'" in err


def test_first_start_creates_an_admin_and_prints_its_token_once(tmp_path: Path) -> None:
    data = tmp_path / "archive"
    with PacsServer(["--data-dir", data], workers=1, log_path=tmp_path / "serve.log") as server:
        lines = [line for line in server.stdout_lines if line and line != server.ready_line]
        assert len(lines) == 2, server.stdout_lines
        assert "created the user 'admin' with role admin" in lines[0]
        token = lines[1]
        url = f"{server.http_url}/dicom-web/studies"
        assert httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10).status_code == 200
        assert httpx.get(url, timeout=10).status_code == 401
    assert token not in server.log()

    with PacsServer(["--data-dir", data], workers=1, log_path=tmp_path / "again.log") as again:
        pass
    assert [line for line in again.stdout_lines if line] == [again.ready_line]
    listed = run_pacs("users", "list", "--data-dir", data)
    assert listed.stdout.split()[:2] == ["admin", "admin"]


# -- DIMSE: the allowlist's roles ---------------------------------------------------------------------
@contextmanager
def node_with_peers(archive: Archive, *peers: str) -> Iterator[RunningNode]:
    node = start_dicom_node(archive, archive.settings.model_copy(update={"allowed_peers": list(peers)}))
    try:
        yield node
    finally:
        node.node.stop(grace=5)  # type: ignore[attr-defined]


@contextmanager
def association(
    node: RunningNode, calling: str, reported: threading.Event | None = None
) -> Iterator[Association]:
    """An association from ``calling``; ``reported`` is set when a storage commitment report
    arrives on it (the archive sends it there while the association is open)."""

    def on_report(event: Any) -> int:
        assert reported is not None
        reported.set()
        return 0x0000

    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = 20
    for context in (
        Verification,
        DigitalXRayImageStorageForPresentation,
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
        StorageCommitmentPushModel,
    ):
        ae.add_requested_context(context)
    assoc = ae.associate(
        node.host,
        node.port,
        ae_title=node.ae_title,
        ext_neg=[build_role(DigitalXRayImageStorageForPresentation, scu_role=True, scp_role=True)],
        evt_handlers=[(evt.EVT_N_EVENT_REPORT, on_report)] if reported is not None else None,
    )
    assert assoc.is_established
    try:
        yield assoc
    finally:
        assoc.release()


def study_query(study_uid: str = "") -> Dataset:
    ds = Dataset()
    ds.QueryRetrieveLevel = "STUDY"
    ds.StudyInstanceUID = study_uid
    return ds


def final_status(responses: Any) -> tuple[int, str]:
    statuses = [status for status, _ in responses if status is not None and "Status" in status]
    last = statuses[-1]
    return int(last.Status), str(last.get("ErrorComment", ""))


def commitment_request(uid: str) -> Dataset:
    info = Dataset()
    info.TransactionUID = "1.2.826.0.1.3680043.10.999.1"
    item = Dataset()
    item.ReferencedSOPClassUID = DigitalXRayImageStorageForPresentation
    item.ReferencedSOPInstanceUID = uid
    info.ReferencedSOPSequence = [item]
    return info


def test_dimse_roles_from_the_allowlist(archive: Archive, tmp_path: Path) -> None:
    stored = diconde_dx(part_id="ROLE-1")
    archive.ingest.ingest_file(write(stored, tmp_path / "stored.dcm"), CallerContext(via="import"))
    study = str(stored.StudyInstanceUID)
    new = diconde_dx(part_id="ROLE-2")
    with node_with_peers(
        archive, "DR_PANEL=device", "WS1@127.0.0.1=inspector", "WS1=device", "OLD_SCU"
    ) as node:
        reported = threading.Event()
        with association(node, "DR_PANEL", reported) as device:
            assert device.send_c_echo().Status == 0x0000
            assert device.send_c_store(new).Status == 0x0000
            status, comment = final_status(
                device.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind)
            )
            assert (status, comment) == (
                NOT_AUTHORIZED,
                "DR_PANEL has role device, which does not grant query",
            )
            move = device.send_c_move(
                study_query(study), "OLD_SCU", StudyRootQueryRetrieveInformationModelMove
            )
            assert final_status(move)[0] == NOT_AUTHORIZED
            get = device.send_c_get(study_query(study), StudyRootQueryRetrieveInformationModelGet)
            assert final_status(get) == (
                NOT_AUTHORIZED,
                "DR_PANEL has role device, which does not grant retrieve",
            )
            commit, _ = device.send_n_action(
                commitment_request(str(new.SOPInstanceUID)),
                1,
                StorageCommitmentPushModel,
                "1.2.840.10008.1.20.1.1",
            )
            assert commit.Status == 0x0000
            # Released before the report arrives, this client would answer it from the wrong state.
            assert reported.wait(20), "no storage commitment report on the open association"

        with association(node, "WS1") as inspector:  # from 127.0.0.1: the host entry's role
            refused = inspector.send_c_store(diconde_dx(part_id="ROLE-3"))
            assert refused.Status == NOT_AUTHORIZED
            assert refused.ErrorComment == "WS1 has role inspector, which does not grant store"
            find = list(inspector.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind))
            assert final_status(find)[0] == 0x0000 and len(find) == 3  # two studies, then Success
            retrieved = list(
                inspector.send_c_get(study_query(study), StudyRootQueryRetrieveInformationModelGet)
            )
            assert final_status(retrieved)[0] != NOT_AUTHORIZED
            commit, _ = inspector.send_n_action(
                commitment_request(str(new.SOPInstanceUID)),
                1,
                StorageCommitmentPushModel,
                "1.2.840.10008.1.20.1.1",
            )
            assert commit.Status == NOT_AUTHORIZED

        with association(node, "OLD_SCU") as everything:  # no role suffix: every service, as before
            assert everything.send_c_store(diconde_dx(part_id="ROLE-4")).Status == 0x0000
            find = list(everything.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind))
            assert final_status(find)[0] == 0x0000
            move = everything.send_c_move(
                study_query(study), "NOWHERE", StudyRootQueryRetrieveInformationModelMove
            )
            assert final_status(move)[0] == 0xA801  # past the role check, to the destination check

    # Refusals are in the audit trail with the calling AE title.
    assert archive.audit.flush(10)
    refused = [(e.ae_title, e.action, e.via) for e in archive.audit.entries() if e.outcome == "refused"]
    assert ("DR_PANEL", "query", "c-find") in refused
    assert ("WS1", "store", "c-store") in refused

    # The refused C-STORE left nothing: neither an index row nor an object.
    assert archive.index.counts()["versions"] == 3
    report = archive.fsck().run(quick=True, grace=dt.timedelta(0))
    assert report.ok, report.problems


def test_without_an_allowlist_every_ae_may_do_everything(archive: Archive) -> None:
    with node_with_peers(archive) as node, association(node, "ANY_SCU") as assoc:
        assert assoc.send_c_store(diconde_dx(part_id="OPEN-1")).Status == 0x0000
        find = list(assoc.send_c_find(study_query(), StudyRootQueryRetrieveInformationModelFind))
        assert final_status(find)[0] == 0x0000 and len(find) == 2
