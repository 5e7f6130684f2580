"""/v1/docs: swagger-ui rendering /v1/openapi.json, from the static bundle a Python package ships.

Nothing is fetched from anywhere but this listener: the page, swagger-ui's script and style come
from the ``swagger-ui-bundle-v2`` package (swagger-ui's own dist, read into memory once), the
initializer is ours (no inline script, so the Content-Security-Policy can say ``script-src 'self'``),
and swagger-ui's online validator badge is off. The page is public, as the document is: it shows
what any client may call, and every call from its "Try it out" still needs a key.

Only the files named in ``FILES`` are served (no path from the request reaches the file system).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .paging import etag, matches

# The page's whole world: this origin only (connect-src for the document and "Try it out").
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "font-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")

PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gateway tenant API</title>
<link rel="stylesheet" href="swagger-ui.css">
<link rel="icon" type="image/png" href="favicon-32x32.png" sizes="32x32">
</head>
<body>
<noscript>This page needs JavaScript; the document it renders is <a href="../openapi.json">/v1/openapi.json</a>.</noscript>
<div id="swagger-ui"></div>
<script src="swagger-ui-bundle.js"></script>
<script src="docs.js"></script>
</body>
</html>
"""

# Relative URLs, so the page works under a reverse proxy's prefix too.
INITIALIZER = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: "../openapi.json",
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""

FILES = {
    "swagger-ui.css": "text/css",
    "swagger-ui-bundle.js": "text/javascript",
    "favicon-32x32.png": "image/png",
    "favicon-16x16.png": "image/png",
}


class Asset:
    def __init__(self, body: bytes, content_type: str):
        self.body = body
        self.content_type = content_type
        self.etag = etag(body)


def bundle_dir() -> Path:
    import swagger_ui_bundle

    return Path(str(swagger_ui_bundle.swagger_ui_path))


class Docs:
    """The page and its files, read once (about 1.7 MB) when the listener starts."""

    def __init__(self, root: Path | None = None):
        root = root or bundle_dir()
        self.assets = {name: Asset((root / name).read_bytes(), ctype) for name, ctype in FILES.items()}
        self.assets[""] = Asset(PAGE.encode(), "text/html")
        self.assets["docs.js"] = Asset(INITIALIZER.encode(), "text/javascript")

    def add_routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/v1/docs", self._redirect)
        router.add_get("/v1/docs/", self._serve)
        router.add_get("/v1/docs/{name}", self._serve)

    async def _redirect(self, request: web.Request) -> web.StreamResponse:
        # Relative, so a proxy's prefix is kept; the page's relative links need the trailing slash.
        raise web.HTTPPermanentRedirect("docs/")

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        asset = self.assets.get(request.match_info.get("name", ""))
        if asset is None:
            raise web.HTTPNotFound()
        headers = {"ETag": asset.etag, "Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff",
                   "Referrer-Policy": "no-referrer", "Cache-Control": "public, max-age=3600"}
        none_match = request.headers.get("If-None-Match")
        if none_match is not None and matches(none_match, asset.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=asset.body, content_type=asset.content_type, headers=headers,
                            charset="utf-8" if asset.content_type.startswith("text/") else None)
