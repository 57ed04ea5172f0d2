"""Swagger UI at /docs, served by the server itself: its scripts come from the fastapi-offline package (the
``serve`` extra), never from a CDN, so the page works on machines without internet."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response

from .v1 import error

DOCS_PATH = "/docs"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css", "favicon.png": "image/png"}
ASSET_PATHS = frozenset(f"{DOCS_PATH}/{name}" for name in ASSETS)
PACKAGE = "fastapi_offline"


def assets_dir() -> Path | None:
    """The folder holding Swagger UI's files (None when the package is not installed)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


def add_docs_routes(app: FastAPI) -> None:
    """Register /docs (the page) and its assets; the app is created with ``docs_url=None``."""
    folder = assets_dir()
    missing = (
        f"Swagger UI's files are missing: install the {PACKAGE.replace('_', '-')} package "
        "(pip install 'hatzoo[serve]'); the API itself is described at /openapi.json"
    )

    @app.get(DOCS_PATH, include_in_schema=False)
    async def swagger_ui(request: Request) -> Response:
        if folder is None:
            return error(503, missing)
        root = f"{request.scope.get('root_path', '')}{DOCS_PATH}"
        return get_swagger_ui_html(
            openapi_url=f"{request.scope.get('root_path', '')}{app.openapi_url}",
            title=f"{app.title} - Swagger UI",
            swagger_js_url=f"{root}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/swagger-ui.css",
            swagger_favicon_url=f"{root}/favicon.png",
            swagger_ui_parameters={"validatorUrl": None},  # no call to validator.swagger.io either
        )

    @app.get(DOCS_PATH + "/{asset}", include_in_schema=False)
    async def swagger_asset(asset: str) -> Response:
        if asset not in ASSETS:
            return error(404, f"no docs asset {asset!r}; the page is {DOCS_PATH}")
        if folder is None:
            return error(503, missing)
        return FileResponse(
            folder / asset, media_type=ASSETS[asset], headers={"Cache-Control": "max-age=86400"}
        )
