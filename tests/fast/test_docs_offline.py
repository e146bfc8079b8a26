"""/docs works offline and with authentication: assets from the image, a bearer scheme, an Authorize button."""

from __future__ import annotations

import asyncio
import re

import httpx

from app.api import build_app
from app.settings import Settings


def get(app, path: str, token: str | None = None) -> httpx.Response:
    async def fetch() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        headers = {"authorization": f"Bearer {token}"} if token else {}
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            if path == "/retrieve":
                return await client.post(path, json={"queries": ["x"]}, headers=headers)
            return await client.get(path, headers=headers)

    return asyncio.run(fetch())


def test_docs_load_no_asset_from_outside_the_server() -> None:
    app = build_app(Settings())
    page = get(app, "/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        asset = get(app, source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source


def test_with_authentication_the_schema_offers_a_bearer_scheme_and_open_paths_need_none() -> None:
    app = build_app(Settings(auth_tokens="secret", docs_without_token=True))
    schema = get(app, "/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "A token from the tokens file.",
    }
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/health"]["get"]["security"] == []
    assert "security" not in schema["paths"]["/retrieve"]["post"]  # the global requirement applies


def test_docs_can_open_without_a_token_while_searches_still_need_one() -> None:
    app = build_app(Settings(auth_tokens="secret", docs_without_token=True))
    assert get(app, "/docs").status_code == 200
    assert get(app, "/docs/assets/swagger-ui-bundle.js").status_code == 200
    assert get(app, "/retrieve").status_code == 401
    assert get(app, "/info").status_code == 401


def test_by_default_docs_need_a_token_like_everything_not_open() -> None:
    app = build_app(Settings(auth_tokens="secret"))
    assert get(app, "/docs").status_code == 401
    assert get(app, "/docs", token="secret").status_code == 200
    assert "bearerAuth" in get(app, "/openapi.json", token="secret").text
