"""The page at ``GET /docs``: Swagger UI rendering the service's ``/openapi.json``.

Swagger UI's files come from the ``swagger-ui-bundle`` package and the gateway serves them
itself (``/docs/swagger-ui.css``, ``/docs/swagger-ui-bundle.js``): the page works offline and
loads nothing from another site. When the service asks for a token, ``/openapi.json`` answers
401 to a browser that has none; the page then asks for the token (kept in the tab's
``sessionStorage`` under the same key as the playground's), loads the description with it and
sends it with every "Try it out" request.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

from swagger_ui_bundle import swagger_ui_path

ASSETS = {"swagger-ui.css": "text/css; charset=utf-8",
          "swagger-ui-bundle.js": "text/javascript; charset=utf-8"}

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>gradbook API</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="docs/swagger-ui.css">
<style>
body { margin: 0; font-family: system-ui, sans-serif; }
nav { display: flex; gap: 1.5rem; align-items: center; padding: .6rem 1.25rem;
      background: #1f2937; color: #f9fafb; }
nav a { color: #bfdbfe; }
#token-form { padding: 1rem 1.25rem; background: #fef3c7; }
#token-form label { font-weight: 600; margin-right: .5rem; }
</style>
</head>
<body>
<nav><strong>gradbook API</strong><a href="./">playground</a>
  <a href="openapi.json">openapi.json</a></nav>
<form id="token-form" hidden>
  <label for="token">This service needs its token</label>
  <input id="token" type="password" autocomplete="off" spellcheck="false">
  <button type="submit">Use token</button>
  <p id="token-message"></p>
</form>
<div id="ui"></div>
<script src="docs/swagger-ui-bundle.js"></script>
<script>
(() => {
  const KEY = 'gradbook-token';  // the playground's key: one token per tab for both pages
  const form = document.getElementById('token-form');
  const withToken = (headers) => {
    const token = sessionStorage.getItem(KEY);
    if (token && !headers.Authorization) headers.Authorization = `Bearer ${token}`;
    return headers;
  };
  form.addEventListener('submit', (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY, document.getElementById('token').value.trim());
    load();
  });
  async function load() {
    const reply = await fetch('openapi.json', {headers: withToken({})});
    if (reply.status === 401) {
      form.hidden = false;
      document.getElementById('token-message').textContent = sessionStorage.getItem(KEY)
        ? 'The service refused this token.' : '';
      return;
    }
    form.hidden = true;
    SwaggerUIBundle({
      spec: await reply.json(), dom_id: '#ui', deepLinking: true,
      requestInterceptor: (request) => { withToken(request.headers); return request; },
    });
  }
  load();
})();
</script>
</body>
</html>
"""


def page() -> str:
    """The HTML of ``GET /docs``."""
    return PAGE


@cache
def asset(name: str) -> bytes:
    """One of Swagger UI's files (``ASSETS``), as the package ships it."""
    if name not in ASSETS:
        raise KeyError(name)
    text = (Path(swagger_ui_path) / name).read_bytes()
    return text.split(b"\n//# sourceMappingURL=")[0].split(b"\n/*# sourceMappingURL=")[0]
