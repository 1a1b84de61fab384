"""What every response of the web process gets, whatever route answers it.

* A request body cap, checked on the declared ``Content-Length`` before a byte of the body is read:
  the JSON API's POSTs (``api.max_body_bytes()``, ~130 KB: the longest valid point) and everything
  else, Dash callbacks included (LLM_MAPS_MAX_BODY, default 2 MB, also Flask's MAX_CONTENT_LENGTH so
  a chunked body without a length is cut off while it is read). Over the cap: 413 JSON.
* Security headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: SAMEORIGIN`` and
  ``Content-Security-Policy: frame-ancestors 'self'`` (no framing by other sites).
* HTTP errors under the API's prefix (and the app's own JSON routes) answered as JSON.
"""

from __future__ import annotations

import os

SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "SAMEORIGIN",
    "Content-Security-Policy": "frame-ancestors 'self'",
    "Referrer-Policy": "same-origin",
}


def max_body() -> int:
    return int(os.environ.get("LLM_MAPS_MAX_BODY", str(2 * 1024 * 1024)))


def install_hardening(server, prefix: str = "/") -> None:
    import flask
    from werkzeug.exceptions import HTTPException

    from dashboard.api import max_body_bytes

    api = f"{prefix}api/"
    json_paths = (api, f"{prefix}_llm_maps/", f"{prefix}_dash-update-component")
    server.config["MAX_CONTENT_LENGTH"] = max_body()

    def too_large(limit: int, length: int | None = None) -> flask.Response:
        size = f"{length} bytes" if length is not None else "over the limit"
        return flask.Response(flask.json.dumps({"error": f"body: {size}; the limit is {limit} bytes"}), 413,
                              mimetype="application/json", headers={"Connection": "close"})

    @server.before_request
    def _cap_body():
        req = flask.request
        limit = max_body_bytes() if req.path.startswith(api) else max_body()
        req.max_content_length = limit  # also cuts off a chunked body while it is read
        if req.content_length is not None and req.content_length > limit:
            return too_large(limit, req.content_length)
        return None

    @server.after_request
    def _headers(response):
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @server.errorhandler(HTTPException)
    def _http_error(exc):
        if flask.request.path.startswith(json_paths):
            if exc.code == 413:
                return too_large(flask.request.max_content_length or max_body())
            return flask.jsonify({"error": exc.description or exc.name}), exc.code
        return exc
