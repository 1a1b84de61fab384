"""What every response of the web process gets, whatever route answers it.

* A request body cap, checked on the declared ``Content-Length`` before a byte of the body is read:
  the JSON API's POSTs (``api.max_body_bytes()``, ~130 KB: the longest valid point) and everything
  else, Dash callbacks included (LLM_MAPS_MAX_BODY, default 2 MB, also Flask's MAX_CONTENT_LENGTH so
  a chunked body without a length is cut off while it is read). Over the cap: 413 JSON.
* Security headers: ``X-Content-Type-Options: nosniff``, ``X-Frame-Options: SAMEORIGIN`` and
  ``Content-Security-Policy: frame-ancestors 'self'`` (no framing by other sites).
* HTTP errors under the API's prefix (and the app's own JSON routes) answered as JSON.
* The WSGI server's own errors (waitress answers a body over LLM_MAPS_MAX_BODY from its
  ``Content-Length`` and malformed requests before the app runs) are JSON too: ``json_error_server``.
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


def json_error_server(server) -> None:
    """Make waitress's own error responses (413 over ``max_request_body_size``, 400 bad request,
    431 headers too large...) a JSON body ``{"error": ...}`` with the security headers, like the
    app's, instead of waitress's plain text. Works on a server from ``waitress.create_server``
    (one listener or several)."""
    import json

    from waitress.channel import HTTPChannel
    from waitress.task import ErrorTask

    class JSONErrorTask(ErrorTask):
        def execute(self) -> None:
            e = self.request.error
            if e.code == 413:
                limit = self.channel.server.adj.max_request_body_size
                length = getattr(self.request, "content_length", 0) or 0
                message = (f"body: {length} bytes; the limit is {limit} bytes" if length
                           else f"body: over the limit; the limit is {limit} bytes")
            else:
                message = f"{e.reason}: {e.body}".strip()
            body = json.dumps({"error": message}).encode("utf-8")
            self.status = f"{e.code} {e.reason}"
            self.response_headers.extend([("Content-Type", "application/json"),
                                          *SECURITY_HEADERS.items()])
            self.set_close_on_finish()
            self.content_length = len(body)
            self.write(body)

    class JSONErrorChannel(HTTPChannel):
        error_task_class = JSONErrorTask

    from waitress.server import BaseWSGIServer

    listeners = [server] if isinstance(server, BaseWSGIServer) else \
        [s for s in (getattr(server, "map", None) or {}).values() if isinstance(s, BaseWSGIServer)]
    for listener in listeners:
        listener.channel_class = JSONErrorChannel


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
