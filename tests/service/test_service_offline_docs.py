"""``/docs`` and ``/redoc`` work without internet access: every script, stylesheet and icon they
load is served by the API itself (from the fastapi-offline package), none from a CDN."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

# src=/href=/spec-url= attributes of the page, and URLs inside its inline scripts.
_ATTR_URL = re.compile(r"""(?:src|href|spec-url)\s*=\s*["']([^"']+)["']""")
_SCRIPT_URL = re.compile(r"""(?:url|openapi_url)\s*:\s*["']([^"']+)["']""")


@pytest.fixture(scope="module")
def docs_server(
    sqlite_url: str, live_server: Callable[..., AbstractContextManager[str]]
) -> Iterator[str]:
    with live_server(create_app(Settings(database_url=sqlite_url, reaper_interval_s=0))) as base:
        yield base


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_loads_only_local_assets(docs_server: str, page: str) -> None:
    with httpx.Client(base_url=docs_server, timeout=30) as http:
        response = http.get(page)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")
        html = response.text
        urls = _ATTR_URL.findall(html) + _SCRIPT_URL.findall(html)
        assert urls, html
        external = [u for u in urls if not u.startswith("/")]
        assert external == [], f"{page} loads from outside the API: {external}"
        assert "cdn" not in html.lower() and "googleapis" not in html
        for url in urls:
            asset = http.get(url)
            assert asset.status_code == 200, url
            assert len(asset.content) > 100, url


def test_docs_scripts_are_the_real_bundles(docs_server: str) -> None:
    with httpx.Client(base_url=docs_server, timeout=30) as http:
        swagger = http.get("/docs").text
        (script,) = [u for u in _ATTR_URL.findall(swagger) if u.endswith(".js")]
        body = http.get(script)
        assert "javascript" in body.headers["content-type"]
        assert "SwaggerUIBundle" in body.text
        redoc = http.get("/redoc").text
        (script,) = [u for u in _ATTR_URL.findall(redoc) if u.endswith(".js")]
        assert "Redoc" in http.get(script).text
