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

import math
import os
from dashboard.api import max_body_bytes
from llm_maps.jobs import QueueFull

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


def finite_json(value):
    """``value`` with every NaN and infinity replaced by None: JSON has no such numbers, and a
    response that holds a bare ``NaN`` is one that ``JSON.parse`` rejects."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_json(v) for v in value]
    return value


def allowed_origins() -> set[str]:
    """Origins (``scheme://host[:port]``) besides the app's own that may write to the API:
    LLM_MAPS_ALLOWED_ORIGINS, separated by commas or spaces (for deployments that serve the API to
    other sites on purpose)."""
    return {o.rstrip("/") for o in os.environ.get("LLM_MAPS_ALLOWED_ORIGINS", "").replace(",", " ").split() if o}


def cross_site_refusal(request) -> str | None:
    """Why a write to the API from this request is refused, or None. A browser sends ``Origin`` (and
    ``Sec-Fetch-Site``) with every cross-site POST, so a page on another site cannot queue jobs
    from a visitor's browser; clients that are not browsers (curl, scripts) send neither."""
    from urllib.parse import urlsplit

    site = request.headers.get("Sec-Fetch-Site", "").lower()
    origin = request.headers.get("Origin")
    if origin and origin.rstrip("/") in allowed_origins():
        return None
    if site in ("same-origin", "none"):  # the browser says it is our own page (or the user typed it)
        return None
    if site in ("cross-site", "same-site"):
        return f"cross-site write refused (Sec-Fetch-Site: {site}; set LLM_MAPS_ALLOWED_ORIGINS to allow other sites)"
    if origin:  # a browser without Sec-Fetch-Site: the origin's host must be the one the request was sent to
        # (by host, not scheme: behind a TLS-terminating proxy the app sees http where the page is https)
        hosts = {request.host.lower(), request.headers.get("X-Forwarded-Host", "").split(",")[0].strip().lower()}
        if (urlsplit(origin).netloc or origin).lower() not in hosts:
            return (f"cross-origin write from {origin[:100]!r} refused (the app is {request.host}; set "
                    "LLM_MAPS_ALLOWED_ORIGINS to allow other sites)")
    return None


def install_hardening(server, prefix: str = "/", dash_app=None) -> None:
    import flask
    from flask.json.provider import DefaultJSONProvider
    from werkzeug.exceptions import HTTPException


    api = f"{prefix}api/"
    json_paths = (api, f"{prefix}_llm_maps/", f"{prefix}_dash-update-component")
    server.config["MAX_CONTENT_LENGTH"] = max_body()

    class FiniteJSON(DefaultJSONProvider):
        def dumps(self, obj, **kwargs):
            return super().dumps(finite_json(obj), allow_nan=False, **kwargs)

    server.json = FiniteJSON(server)

    def too_large(limit: int, length: int | None = None) -> flask.Response:
        # (no Connection header: it is hop-by-hop, which a WSGI app may not set; waitress answered
        # such a response with a 500. The server has read the body by now, so the connection is clean)
        size = f"{length} bytes" if length is not None else "over the limit"
        return flask.Response(flask.json.dumps({"error": f"body: {size}; the limit is {limit} bytes"}), 413,
                              mimetype="application/json")

    def error(status: int, message: str) -> flask.Response:
        return flask.Response(flask.json.dumps({"error": message}), status, mimetype="application/json")

    @server.before_request
    def _same_origin_writes():
        req = flask.request
        if req.method in ("GET", "HEAD", "OPTIONS") or not (req.path.startswith(api) or req.path == api[:-1]):
            return None
        refused = cross_site_refusal(req)
        if refused:
            return error(403, refused)
        if req.content_length and req.mimetype != "application/json":  # a form or text/plain body: no
            return error(415, f"body: Content-Type {req.mimetype or 'missing'!s}; send application/json")
        return None

    @server.after_request
    def _cors(response):
        origin = flask.request.headers.get("Origin")
        if origin and flask.request.path.startswith(api) and origin.rstrip("/") in allowed_origins():
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Allow-Credentials"] = "true"  # (with LLM_MAPS_AUTH: basic auth)
            response.headers["Vary"] = "Origin"
            response.headers["Access-Control-Expose-Headers"] = "Location, Retry-After, Idempotent-Replayed"
            if flask.request.method == "OPTIONS":
                response.headers["Access-Control-Allow-Methods"] = "GET, POST, DELETE"
                response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization, Idempotency-Key"
        return response


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

    @server.errorhandler(QueueFull)
    def _queue_unavailable(exc):  # a page or callback that reads saved points while Redis is down
        return flask.Response(flask.json.dumps({"error": str(exc)}), 503, mimetype="application/json",
                              headers={"Retry-After": str(exc.retry_after)})

    if dash_app is not None:  # (after the body cap: an oversize callback body is a 413)
        _guard_dash(server, dash_app, prefix, error)


def _guard_dash(server, dash_app, prefix: str, error) -> None:
    """Dash's own routes answer malformed requests with 4xx, not 500: a callback request that is not
    a callback of this app (400), a component-suites path that names no registered file (404)."""
    import flask
    from dash.exceptions import DependencyException

    update = f"{prefix}_dash-update-component"

    @server.before_request
    def _callback_shape():
        req = flask.request
        if req.path != update or req.method != "POST":
            return None
        body = req.get_json(silent=True)
        if not isinstance(body, dict):
            return error(400, "callback: body must be a JSON object")
        output = body.get("output")
        if not isinstance(output, str) or output not in dash_app.callback_map:
            return error(400, "callback: 'output' names no callback of this app")
        for key in ("inputs", "state"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, (dict, list)) for v in value):
                return error(400, f"callback: '{key}' must be a list of objects")
        if "changedPropIds" in body and not isinstance(body["changedPropIds"], list):
            return error(400, "callback: 'changedPropIds' must be a list")
        return None

    @server.errorhandler(DependencyException)
    def _no_such_file(_exc):
        return error(404, "no such file")
