"""The gateway serves the committed dashboard build at `/` without shadowing any API route.

A real gateway under uvicorn; its gRPC target is a closed port, so an API answer is recognisable (the
API's JSON error shape) and no request the web layer should have answered can reach a service.
"""

from __future__ import annotations

import gzip
import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from gateway.config import GatewayConfig
from gateway.errors import GatewayConfigError
from gateway.server import running_gateway
from gateway.web import WebConfig

DIST = Path(__file__).resolve().parents[2] / "web" / "dist"


@pytest.fixture(scope="module")
async def client() -> AsyncIterator[httpx.AsyncClient]:
    config = GatewayConfig(target="127.0.0.1:1", host="127.0.0.1", port=0, deadline_s=2.0)
    async with running_gateway(config) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        yield c


def _bundle(suffix: str) -> Path:
    (path,) = [p for p in DIST.iterdir() if p.suffix == suffix]
    return path


def _is_api_error(r: httpx.Response) -> bool:
    return r.headers["content-type"].startswith("application/json") and "error" in r.json()


async def test_root_is_the_app_with_a_strict_content_security_policy(client: httpx.AsyncClient) -> None:
    r = await client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert r.content == (DIST / "index.html").read_bytes()
    assert r.headers["cache-control"] == "no-cache"
    csp = r.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert r.headers["x-content-type-options"] == "nosniff"


async def test_hashed_bundles_are_cached_forever_and_gzipped(client: httpx.AsyncClient) -> None:
    for suffix, media in ((".js", "text/javascript"), (".css", "text/css")):
        path = _bundle(suffix)
        assert re.search(r"-[A-Z0-9]{8}\.", path.name), path.name
        r = await client.get(f"/{path.name}", headers={"accept-encoding": "gzip"})
        assert r.status_code == 200
        assert r.headers["content-type"] == f"{media}; charset=utf-8"
        assert r.headers["cache-control"] == "public, max-age=31536000, immutable"
        assert r.headers["content-encoding"] == "gzip"
        assert r.content == path.read_bytes()  # httpx decoded the gzip body
        plain = await client.get(f"/{path.name}", headers={"accept-encoding": "identity"})
        assert "content-encoding" not in plain.headers and plain.content == path.read_bytes()
        assert len(gzip.compress(path.read_bytes())) < len(path.read_bytes())


async def test_manifest_and_icon_have_their_content_types(client: httpx.AsyncClient) -> None:
    manifest = await client.get("/manifest.webmanifest")
    assert manifest.headers["content-type"] == "application/manifest+json"
    assert manifest.json()["start_url"] == "/"
    icon = await client.get("/icon.svg")
    assert icon.headers["content-type"] == "image/svg+xml"
    assert icon.headers["cache-control"] == "no-cache"


async def test_client_routes_get_index_html_so_reloads_and_bookmarks_work(client: httpx.AsyncClient) -> None:
    for path in ("/login", "/organizations/acme", "/organizations/acme/sites/gw"):
        r = await client.get(path)
        assert r.status_code == 200, path
        assert r.content == (DIST / "index.html").read_bytes(), path


async def test_an_unchanged_file_is_answered_304(client: httpx.AsyncClient) -> None:
    first = await client.get("/")
    again = await client.get("/", headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


async def test_head_has_the_headers_and_no_body(client: httpx.AsyncClient) -> None:
    r = await client.head(f"/{_bundle('.js').name}", headers={"accept-encoding": "identity"})
    assert r.status_code == 200 and r.content == b""
    assert int(r.headers["content-length"]) == _bundle(".js").stat().st_size


async def test_api_paths_are_never_shadowed(client: httpx.AsyncClient) -> None:
    # A route of the API: the gateway calls the (closed) gRPC target and answers in its error shape.
    listed = await client.get("/v1/organizations", headers={"accept": "text/html"})
    assert listed.status_code == 503 and _is_api_error(listed), listed.text
    unknown = await client.get("/v1/no/such/thing", headers={"accept": "text/html"})
    assert unknown.status_code == 404 and _is_api_error(unknown)
    assert (await client.get("/openapi.json")).json()["openapi"].startswith("3.")
    assert (await client.get("/healthz")).json() == {"status": "SERVING"}
    docs = await client.get("/docs")
    assert docs.status_code == 200 and b"/openapi.json" in docs.content
    assert docs.content != (DIST / "index.html").read_bytes()
    # The Prometheus scrape is the API's too, even when a browser-like Accept header asks.
    scraped = await client.get("/metrics", headers={"accept": "text/html"})
    assert scraped.status_code == 200 and scraped.headers["content-type"].startswith("text/plain")
    assert b"<html" not in scraped.content.lower()


async def test_missing_files_and_other_methods_get_the_apis_answers(client: httpx.AsyncClient) -> None:
    missing = await client.get("/no-such-file.js")
    assert missing.status_code == 404 and _is_api_error(missing)
    posted = await client.post("/", json={})
    assert posted.status_code in (404, 405) and _is_api_error(posted)


def test_web_dir_setting_refuses_a_folder_without_a_build(tmp_path: Path) -> None:
    with pytest.raises(GatewayConfigError, match=r"EMMA_GATEWAY_WEB_DIR.*no index\.html"):
        WebConfig.from_env({"EMMA_GATEWAY_WEB_DIR": str(tmp_path)})
    assert WebConfig.from_env({"EMMA_GATEWAY_WEB_DIR": "off"}).directory is None
    assert WebConfig.from_env({"EMMA_GATEWAY_WEB_DIR": str(DIST)}).directory == DIST
    assert WebConfig.from_env({}).directory == DIST


async def test_the_maps_offline_base_layer_is_served(client: httpx.AsyncClient) -> None:
    r = await client.get("/countries-110m.json", headers={"accept-encoding": "gzip"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.headers["content-encoding"] == "gzip"
    topology = r.json()
    assert topology["type"] == "Topology" and len(topology["objects"]["countries"]["geometries"]) > 100


async def test_a_configured_tile_server_is_announced_and_admitted_by_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("EMMA_GATEWAY_MAP_TILES", "https://tiles.example.org/osm/{z}/{x}/{y}.png")
    monkeypatch.setenv("EMMA_GATEWAY_MAP_ATTRIBUTION", "© OpenStreetMap contributors & <friends>")
    config = GatewayConfig(target="127.0.0.1:1", host="127.0.0.1", port=0, deadline_s=2.0)
    async with running_gateway(config) as port, httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
        r = await c.get("/organizations/acme")
    assert r.status_code == 200
    assert '<meta name="emma-map-tiles" content="https://tiles.example.org/osm/{z}/{x}/{y}.png">' in r.text
    # The attribution is escaped: a configured value never becomes markup.
    assert 'content="© OpenStreetMap contributors &amp; &lt;friends&gt;"' in r.text
    csp = r.headers["content-security-policy"]
    assert "img-src 'self' data: https://tiles.example.org;" in csp
    assert "connect-src 'self';" in csp and "script-src 'self';" in csp


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("http://tiles.example.org/{z}/{x}/{y}.png", "must be an https URL"),
        ("tiles.example.org/{z}/{x}/{y}.png", "must be an https URL"),
        ("https://tiles.example.org/{z}/{x}.png", "lacks {y}"),
        ("https://{s}.tiles.example.org/{z}/{x}/{y}.png", "the host may not hold placeholders"),
    ],
)
def test_a_bad_tile_server_setting_is_refused_in_words(value: str, words: str) -> None:
    with pytest.raises(GatewayConfigError, match=re.escape(words)):
        WebConfig.from_env({"EMMA_GATEWAY_MAP_TILES": value})


def test_a_tile_server_on_this_machine_may_use_http() -> None:
    config = WebConfig.from_env({"EMMA_GATEWAY_MAP_TILES": "http://localhost:8081/{z}/{x}/{y}.png"})
    assert config.tile_origin == "http://localhost:8081"
    assert WebConfig.from_env({}).map_tiles == ""
