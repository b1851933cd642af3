"""The dashboard's files (web/dist, built by `make web`) served at `/`, on the same origin as the API.

Same origin means no CORS and no second server: the page calls /v1/... with its bearer token. The web
layer wraps the API app and answers only GET and HEAD of paths outside the API's own (/v1, /docs,
/openapi.json, /healthz), so it can never shadow a route; every other request goes to the API app,
which answers 404 and 405 in its own error shape.

- The build is read into memory once at start-up (a few files of tens of KB): no file system access
  per request, no path traversal to guard against, and the gzip variant is computed once.
- Bundles with a content hash in their name are cached for a year (`immutable`); index.html, the
  manifest and the icon are revalidated on every load (ETag, 304), so a new build shows at once.
- Paths without a file extension that match no file are the app's own routes (/organizations/acme):
  they get index.html, so a bookmark or a reload of any page works.
- The fleet map draws bundled country outlines offline; EMMA_GATEWAY_MAP_TILES names a tile server
  (an https URL template with {z}/{x}/{y}) that index.html announces in meta tags and the
  Content-Security-Policy admits as an image origin, and nothing else.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from pathlib import Path
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import GatewayConfigError

log = logging.getLogger("emma.gateway")

DEFAULT_DIST = Path(__file__).resolve().parent.parent / "web" / "dist"
# The API app's paths; the web layer answers none of them.
API_PATHS = frozenset({"/v1", "/docs", "/openapi.json", "/healthz", "/metrics"})
API_PREFIXES = ("/v1/", "/v1:")

# Explicit types rather than the mimetypes module, whose answers depend on the host's /etc/mime.types.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".geojson": "application/geo+json",
    ".txt": "text/plain; charset=utf-8",
}
COMPRESSIBLE = frozenset({".html", ".js", ".css", ".json", ".webmanifest", ".svg", ".geojson", ".txt"})
# esbuild's [name]-[hash] entry names: 8 characters of base32.
HASHED = re.compile(r"-[A-Z0-9]{8}\.(js|css)$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"
# The page loads only its own scripts and styles and talks only to its own origin.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; manifest-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
TILE_PLACEHOLDERS = ("{z}", "{x}", "{y}")


def csp(tile_origin: str = "") -> str:
    """The page's policy; a configured tile server's origin is the one outside source of images."""
    return CSP.replace("img-src 'self' data:;", f"img-src 'self' data: {tile_origin};") if tile_origin else CSP


@dataclass(frozen=True)
class WebConfig:
    """EMMA_GATEWAY_WEB_DIR: the built dashboard (default: web/dist of this checkout); "off" serves none.
    EMMA_GATEWAY_MAP_TILES: a tile server for the fleet map, an https URL template with {z}, {x} and {y}
    (unset: the bundled country outlines only, which work offline); EMMA_GATEWAY_MAP_ATTRIBUTION: the
    credit its licence asks for, shown on the map."""

    directory: Path | None = DEFAULT_DIST
    map_tiles: str = ""
    map_attribution: str = ""

    @property
    def tile_origin(self) -> str:
        if not self.map_tiles:
            return ""
        parts = urlsplit(self.map_tiles)
        return f"{parts.scheme}://{parts.netloc}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebConfig:
        env = os.environ if env is None else env
        tiles = env.get("EMMA_GATEWAY_MAP_TILES", "").strip()
        if tiles:
            parts = urlsplit(tiles)
            # https only: the page is served over TLS in production and mixed content would be blocked;
            # http is allowed for a tile server on this machine (a local mirror).
            local = parts.hostname in ("localhost", "127.0.0.1", "::1")
            if parts.scheme not in ("https", "http") or (parts.scheme == "http" and not local) or not parts.netloc:
                raise GatewayConfigError(
                    f"EMMA_GATEWAY_MAP_TILES={tiles!r} must be an https URL (http only for localhost), "
                    "for example https://tile.example.org/{z}/{x}/{y}.png"
                )
            missing = [p for p in TILE_PLACEHOLDERS if p not in tiles]
            if missing:
                raise GatewayConfigError(f"EMMA_GATEWAY_MAP_TILES={tiles!r} lacks {', '.join(missing)}")
            if any(c in parts.netloc for c in "{};' "):
                raise GatewayConfigError(f"EMMA_GATEWAY_MAP_TILES={tiles!r}: the host may not hold placeholders")
        attribution = env.get("EMMA_GATEWAY_MAP_ATTRIBUTION", "").strip()
        raw = env.get("EMMA_GATEWAY_WEB_DIR", "").strip()
        if raw == "":
            return cls(map_tiles=tiles, map_attribution=attribution)
        if raw.lower() == "off":
            return cls(directory=None, map_tiles=tiles, map_attribution=attribution)
        path = Path(raw)
        if not (path / "index.html").is_file():
            raise GatewayConfigError(f"EMMA_GATEWAY_WEB_DIR={raw!r} holds no index.html (build it with `make web`)")
        return cls(directory=path, map_tiles=tiles, map_attribution=attribution)


@dataclass(frozen=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    content_type: str
    cache_control: str
    etag: str
    html: bool
    csp: str = CSP


def _with_map_tiles(html: bytes, tiles: str, attribution: str) -> bytes:
    """index.html announcing the tile server to the page (read by web/src/components/map.tsx)."""
    meta = (
        f'<meta name="emma-map-tiles" content="{escape(tiles)}">\n'
        f'<meta name="emma-map-attribution" content="{escape(attribution)}">\n'
    )
    return html.replace(b"</head>", meta.encode() + b"</head>", 1)


def load_assets(directory: Path, map_tiles: str = "", map_attribution: str = "") -> dict[str, Asset]:
    """Every file under `directory` by its URL path; "/" is index.html (with the tile server's meta tags
    and CSP when `map_tiles` is set)."""
    assets: dict[str, Asset] = {}
    policy = csp(WebConfig(map_tiles=map_tiles).tile_origin)
    for path in sorted(directory.rglob("*")):
        if not path.is_file():
            continue
        suffix = path.suffix.lower()
        body = path.read_bytes()
        if suffix == ".html" and map_tiles:
            body = _with_map_tiles(body, map_tiles, map_attribution)
        packed = gzip.compress(body, mtime=0) if suffix in COMPRESSIBLE else None
        url = "/" + path.relative_to(directory).as_posix()
        assets[url] = Asset(
            body=body,
            gzipped=packed if packed is not None and len(packed) < len(body) else None,
            content_type=CONTENT_TYPES.get(suffix, "application/octet-stream"),
            cache_control=IMMUTABLE if HASHED.search(path.name) else REVALIDATE,
            etag='"' + hashlib.sha256(body).hexdigest()[:32] + '"',
            html=suffix == ".html",
            csp=policy,
        )
    if "/index.html" in assets:
        assets["/"] = assets["/index.html"]
    return assets


def _is_api_path(path: str) -> bool:
    return path in API_PATHS or path.startswith(API_PREFIXES)


def _is_client_route(path: str) -> bool:
    # /organizations/acme/sites/gw is a page of the app; /app-XYZ.js or /favicon.ico is a file.
    return "." not in path.rsplit("/", 1)[-1]


class WebApp:
    """ASGI: the dashboard's files for GET/HEAD outside the API's paths, everything else to `api`."""

    def __init__(self, api: ASGIApp, assets: Mapping[str, Asset]) -> None:
        self.api = api
        self.assets = dict(assets)
        self.index = self.assets.get("/index.html")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            await self.api(scope, receive, send)
            return
        path = str(scope["path"])
        if _is_api_path(path):
            await self.api(scope, receive, send)
            return
        asset = self.assets.get(path)
        if asset is None and self.index is not None and _is_client_route(path):
            asset = self.index
        if asset is None:
            await self.api(scope, receive, send)  # the API's 404, in its error shape
            return
        await _respond(asset, scope, send)


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value).decode("latin-1")
    return ""


async def _respond(asset: Asset, scope: Scope, send: Send) -> None:
    headers: list[tuple[bytes, bytes]] = [
        (b"cache-control", asset.cache_control.encode()),
        (b"etag", asset.etag.encode()),
        (b"x-content-type-options", b"nosniff"),
    ]
    if asset.html:
        headers += [
            (b"content-security-policy", asset.csp.encode()),
            (b"referrer-policy", b"no-referrer"),
            (b"x-frame-options", b"DENY"),
        ]
    if asset.gzipped is not None:
        headers.append((b"vary", b"accept-encoding"))
    if asset.etag in _header(scope, b"if-none-match"):
        await send({"type": "http.response.start", "status": 304, "headers": headers})
        await send({"type": "http.response.body", "body": b""})
        return
    body = asset.body
    if asset.gzipped is not None and "gzip" in _header(scope, b"accept-encoding").lower():
        body = asset.gzipped
        headers.append((b"content-encoding", b"gzip"))
    headers += [(b"content-type", asset.content_type.encode()), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if scope["method"] == "HEAD" else body})


def with_web(api: ASGIApp, config: WebConfig | None = None) -> ASGIApp:
    """`api` with the dashboard in front of it, or `api` alone when there is no build to serve."""
    config = config or WebConfig.from_env()
    if config.directory is None:
        return api
    if not (config.directory / "index.html").is_file():
        log.warning("no dashboard at %s (run `make web`); serving the API only", config.directory)
        return api
    return WebApp(api, load_assets(config.directory, config.map_tiles, config.map_attribution))


__all__ = ["WebApp", "WebConfig", "csp", "load_assets", "with_web"]
