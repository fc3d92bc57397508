"""The HTTP face as a browser and a workstation reach it: routes mounted, CORS for a viewer elsewhere."""

from __future__ import annotations

import dataclasses

import httpx

from pacs.archive import Archive
from tests.support.web import RunningWeb, running_web

VIEWER = "https://ohif.lab.example"


def test_health_answers_on_the_served_app(web: RunningWeb) -> None:
    response = httpx.get(f"{web.base_url}/health", timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_cors_lets_a_configured_viewer_origin_call_dicomweb_with_a_token(archive: Archive) -> None:
    settings = archive.settings.model_copy(update={"cors_allowed_origins": [VIEWER]})
    with running_web(dataclasses.replace(archive, settings=settings)) as web:
        preflight = httpx.options(
            f"{web.dicomweb}/studies",
            headers={
                "Origin": VIEWER,
                "Access-Control-Request-Method": "GET",
                "Access-Control-Request-Headers": "authorization",
            },
            timeout=10,
        )
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == VIEWER
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        other = httpx.options(
            f"{web.dicomweb}/studies",
            headers={"Origin": "https://elsewhere.example", "Access-Control-Request-Method": "GET"},
            timeout=10,
        )
        assert other.status_code == 400
        assert "access-control-allow-origin" not in other.headers


def test_without_configured_origins_no_cors_headers_are_sent(web: RunningWeb) -> None:
    response = httpx.get(f"{web.base_url}/health", headers={"Origin": VIEWER}, timeout=10)
    assert "access-control-allow-origin" not in response.headers
