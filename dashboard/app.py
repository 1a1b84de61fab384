"""The Dash app: ``create_app(...)`` and a module-level ``server`` for ``gunicorn dashboard.app:server``.

Runs come from arguments or, for ``server``, from the environment:

    LLM_MAPS_RUNS   run folders, separated by ``os.pathsep`` (":" on Linux)
    LLM_MAPS_DATA   folders holding runs (default: data/runs under the working directory)
    LLM_MAPS_AUTH   "user:password" to require HTTP basic auth
    LLM_MAPS_PREFIX the URL path the app lives under (default "/"), e.g. "/llm-maps/" behind a proxy

The web process never imports torch, transformers or ``pipelines``.
"""

from __future__ import annotations

import base64
import hmac
import os
import re
import threading
from html import escape as html_escape
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, dcc, html

from dashboard import background
from dashboard.bundle import PLOTLY_BUNDLE, bundle_path
from dashboard.data import RunRegistry, limit_malloc_arenas
from llm_maps.runfolder import RunIds, split_run_args
from dashboard.api import register_api
from dashboard.figures import LEGEND_BG, template_name
from dashboard.hardening import allowed_origins, install_hardening, json_error_server, max_body
from dashboard.points import install_routes, prepare_first_view
from llm_maps.errors import LLMMapsError
from llm_maps.jobs import make_points, make_queue, state_dir_for

HERE = Path(__file__).resolve().parent
_CREATE_LOCK = threading.Lock()


def _env_paths(name: str) -> list[Path]:
    return [Path(p) for p in os.environ.get(name, "").split(os.pathsep) if p.strip()]


def parse_auth(value: str | None) -> tuple[str, str] | None:
    """"user:password" -> (user, password); None or "" -> None."""
    if not value:
        return None
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ValueError("LLM_MAPS_AUTH must look like user:password")
    return user, password


def normalise_prefix(prefix: str | None) -> str:
    """"/", "/llm-maps/": a URL path that starts and ends with "/"."""
    prefix = (prefix or "/").strip()
    if not re.fullmatch(r"[A-Za-z0-9._~/-]*", prefix) or {".", ".."} & set(prefix.split("/")):
        raise ValueError(f"URL prefix {prefix!r}: use letters, digits and . _ ~ - / only, no . or .. parts")
    return "/" + "/".join(p for p in prefix.split("/") if p) + ("/" if prefix.strip("/") else "")


def _install_basic_auth(server, credentials: tuple[str, str], prefix: str = "/") -> None:
    import flask

    expected = base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()

    def authorised() -> bool:
        scheme, _, given = flask.request.headers.get("Authorization", "").strip().partition(" ")
        if scheme.lower() != "basic":  # RFC 7617: the scheme name is case-insensitive
            given = ""
        return hmac.compare_digest(given.strip().encode(), expected.encode())

    server.config["LLM_MAPS_AUTHORISED"] = authorised  # /api/health shows its details only then


    @server.before_request
    def _check_auth():
        if flask.request.path == f"{prefix}api/health":  # readiness probes carry no password
            return None
        if flask.request.method == "OPTIONS" and \
                (flask.request.headers.get("Origin") or "").rstrip("/") in allowed_origins():
            return None  # a CORS preflight of an allowed site carries no credentials; the request itself will
        if not authorised():
            return flask.Response("authentication required", 401, {"WWW-Authenticate": 'Basic realm="llm-maps"'})
        return None


def _navbar(prefix: str = "/") -> dbc.Navbar:
    links = [dbc.NavItem(dbc.NavLink(name, href=prefix + name.lower(), active="partial", id=f"nav-{name.lower()}"))
             for name in ("Map", "Playground", "Falloff", "Findings", "Compare", "Examples", "Runs")]
    return dbc.Navbar(dbc.Container([
        dbc.NavbarBrand("LLM Maps", href=prefix + "map"),
        dbc.Nav(links, navbar=True, className="me-auto"),
        dbc.Switch(id="theme-dark", label="dark", value=False, persistence=True, persistence_type="local",
                   className="mb-0"),
    ], fluid=True), color="primary", dark=True, className="mb-2")


def _install_api(server, registry, state_dir: Path, prefix: str = "/") -> None:
    queue = make_queue(state_dir)  # RedisJobQueue (Celery workers) when REDIS_URL is set, else diskcache
    points = make_points(state_dir, jobs=queue)
    server.config["LLM_MAPS_QUEUE"], server.config["LLM_MAPS_POINTS"] = queue, points
    # /api/health reports workers' liveness (503 when a run has none) where workers are expected:
    # `llm-maps serve` sets this; a gunicorn deployment with workers sets LLM_MAPS_EXPECT_WORKERS=1
    server.config["LLM_MAPS_EXPECT_WORKERS"] = os.environ.get("LLM_MAPS_EXPECT_WORKERS", "").lower() in ("1", "true", "yes")
    register_api(server, registry, queue, points, url_prefix=f"{prefix}api")


def plot_templates() -> dict:
    """The layouts of plotly's light and dark templates, which the browser switches figures between."""
    import plotly.io as pio


    return {key: {"template": {"layout": pio.templates[template_name(dark)].layout.to_plotly_json()},
                  "legend_bg": LEGEND_BG[dark]} for key, dark in (("light", False), ("dark", True))}


# The script Dash's page runs first, in <head>: assets/early.js (see its header for what it does
# and why). Inlined, as it must run before Dash's own scripts, with its settings as data attributes.
EARLY_JS = HERE / "assets" / "early.js"


def early_script(prefix: str) -> str:
    """assets/early.js as an inline <script> for an app served under ``prefix``."""
    url = f"{bundle_path(prefix)}?m={int(PLOTLY_BUNDLE.stat().st_mtime)}"
    lines = EARLY_JS.read_text(encoding="utf-8").splitlines()
    while lines and (lines[0].startswith("//") or not lines[0].strip()):  # its header stays in the file
        lines.pop(0)
    code = "\n".join(lines) + "\n"
    if "</script" in code.lower():
        raise ValueError(f"{EARLY_JS}: must not contain '</script'")
    attrs = {"plen": str(len(prefix)), "url": url, "dcc": f"{prefix}_dash-component-suites/dash/dcc/"}
    data = " ".join(f'data-{k}="{html_escape(v, quote=True)}"' for k, v in attrs.items())
    return f"<script {data}>\n{code}</script>"


def index_string(prefix: str, base: str) -> str:
    """Dash's page ``base`` (an app's ``index_string``) with the early script in the head."""
    return base.replace("{%css%}", "{%css%}\n        " + early_script(prefix), 1)


def create_app(runs=None, data_dirs=None, *, auth: str | tuple[str, str] | None = None,
               title: str = "LLM Maps", state_dir: str | Path | None = None, warm: bool = False,
               prefix: str | None = None) -> dash.Dash:
    """A Dash app serving ``runs`` (run folders) and the runs found in ``data_dirs``.

    Without arguments, runs come from LLM_MAPS_RUNS / LLM_MAPS_DATA (default data/runs) and basic
    auth from LLM_MAPS_AUTH. ``warm``: load the runs a first visit opens in a background thread
    (RunRegistry.warm), so the first page does not wait for Parquet reads. ``prefix``: the URL path
    the app is served under (default LLM_MAPS_PREFIX, else "/"): pages, assets and the API all
    live below it."""
    runs = _env_paths("LLM_MAPS_RUNS") if runs is None else [Path(p) for p in runs]
    given = bool(runs)
    runs, folders = split_run_args(runs, strict=False)  # a folder of runs given as a run is one
    if data_dirs is None:
        data_dirs = _env_paths("LLM_MAPS_DATA") or ([] if given else [Path.cwd() / "data" / "runs"])
    data_dirs = [*folders, *(Path(d) for d in data_dirs if Path(d) not in folders)]
    if auth is None:
        auth = os.environ.get("LLM_MAPS_AUTH")
    credentials = parse_auth(auth) if isinstance(auth, str) else auth
    prefix = normalise_prefix(os.environ.get("LLM_MAPS_PREFIX") if prefix is None else prefix)

    # Dash internals used here, and why:
    # - Dash._setup_server(): the page modules (pages/) register their callbacks with dash.callback
    #   into Dash's process-wide list when Dash(use_pages=True) imports them, and an app takes that
    #   list over only in _setup_server, which Dash runs on the app's first request. With more than
    #   one app in a process (tests, or two create_app calls), the first app to get a request would
    #   take the callbacks of every app created before it. So each app takes its own now, right
    #   after creating them, under a lock that keeps another create_app from registering in
    #   between. Dash has no public call for this. A real first request (Flask's test client)
    #   would do it through public paths, but Flask refuses new before_request hooks after an app's
    #   first request, and the auth, redirect and caching hooks are installed below. The request
    #   context is the one Dash's own first-request hook runs it in, so anything in it that reads
    #   the request or the app context finds one, as it would there.
    # Everything else is public: Dash(...) options, app.index_string, app.layout, dash.page_container,
    # dash.clientside_callback, app.server (the Flask app).
    with _CREATE_LOCK:
        app = dash.Dash(__name__, use_pages=True, pages_folder=str(HERE / "pages"),
                        assets_folder=str(HERE / "assets"), assets_ignore=r"^((flatly|darkly)\.min\.css|plotly-llm-maps\.min\.js|early\.js)$",
                        external_stylesheets=[], suppress_callback_exceptions=True, title=title,
                        serve_locally=True, update_title=None, eager_loading=False, url_base_pathname=prefix)
        app.index_string = index_string(app.config.requests_pathname_prefix, app.index_string)
        state = Path(state_dir) if state_dir else state_dir_for(runs, data_dirs)
        registry = RunRegistry(runs, data_dirs, ids=RunIds(state))  # the workers read the same ids
        app.server.config["LLM_MAPS_REGISTRY"] = registry
        app.server.config["LLM_MAPS_PREFIX"] = prefix
        app.server.config["LLM_MAPS_STATE"] = state
        _install_api(app.server, registry, state, prefix)
        install_hardening(app.server, prefix, dash_app=app)
        app.layout = html.Div([
            html.Link(id="theme-css", rel="stylesheet", href=f"{prefix}assets/themes/flatly.min.css"),
            _navbar(prefix),
            background.banner(),
            dash.page_container,
            html.Div(id="theme-sync", hidden=True), html.Div(id="run-nav", hidden=True),
            dcc.Store(id="plot-templates", data=plot_templates()),
        ])
        dash.clientside_callback(dash.ClientsideFunction("llm_maps", "theme"), Output("theme-sync", "children"),
                                 Input("theme-dark", "value"), State("plot-templates", "data"))
        dash.clientside_callback(dash.ClientsideFunction("llm_maps", "pickRun"), Output("run-nav", "children"),
                                 Input("run-picker", "value"), prevent_initial_call=True)
        with app.server.test_request_context("/"):
            app._setup_server()  # see above: bind this app's page callbacks now
    if credentials:
        _install_basic_auth(app.server, credentials, prefix)
    _install_home_redirect(app.server, prefix)
    _install_not_found_status(app.server, prefix)
    _install_bundle_caching(app.server, prefix)
    install_routes(app.server, prefix)
    if warm:
        _start_warm(app.server, registry)
        # gunicorn --preload forks workers from this process: each starts its own warm-up (the
        # child's run cache starts empty, see dashboard.data._after_fork_in_child)
        os.register_at_fork(after_in_child=lambda: _start_warm(app.server, registry))
    return app


def _start_warm(server, registry) -> None:
    """RunRegistry.warm in a background thread; /api/health says "warming" until it ends."""
    # what loading a run imports, imported here first: a thread importing pyarrow.parquet while
    # the main thread imports something it needs can see a half-initialised module
    import pandas  # noqa: F401
    import plotly.graph_objects  # noqa: F401
    import pyarrow.parquet  # noqa: F401


    thread = threading.Thread(target=registry.warm, kwargs={"prepare": prepare_first_view},
                              name="llm-maps-warm", daemon=True)
    server.config["LLM_MAPS_WARM"] = thread
    thread.start()


def _install_bundle_caching(server, prefix: str = "/") -> None:
    """The plotly bundle's URL carries its file's mtime (?m=): browsers may keep it for a year
    instead of asking again on every page load."""
    import flask

    path = bundle_path(prefix)

    @server.after_request
    def _cache_bundle(response):
        if flask.request.path == path and flask.request.args.get("m") and response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def _install_not_found_status(server, prefix: str = "/") -> None:
    """A page path no page is registered at still gets Dash's page (which draws the 404 page), but
    with the status 404, not 200: for crawlers, link checkers and anyone who reads the status."""
    import flask

    own = ("_dash-", "_reload-hash", "_favicon", "_alive_", "assets/", "api", "_llm_maps/")  # _alive_: Jupyter mode

    @server.after_request
    def _not_found(response):
        req = flask.request
        if req.method != "GET" or response.status_code != 200 or response.mimetype != "text/html" \
                or not req.path.startswith(prefix):
            return response
        rest = req.path[len(prefix):]
        if rest.startswith(own):
            return response
        pages = {str(page["path"]).strip("/") for page in dash.page_registry.values()}
        if rest.strip("/") not in pages or rest.strip("/") == "404":
            response.status_code = 404
        return response


def _install_home_redirect(server, prefix: str = "/") -> None:
    import flask

    @server.before_request
    def _home():
        if flask.request.path in ("/", prefix, prefix.rstrip("/")):
            query = flask.request.query_string.decode()
            return flask.redirect(f"{prefix}map" + (f"?{query}" if query else ""))
        return None


_default_app: dash.Dash | None = None


def __getattr__(name: str):
    """``server`` (and ``app``) are created on first use, so importing this module is cheap."""
    global _default_app
    if name in ("server", "app"):
        if _default_app is None:
            _default_app = create_app(warm=True)
        return _default_app.server if name == "server" else _default_app
    raise AttributeError(name)


def serve(runs=(), data_dirs=(), *, host: str = "127.0.0.1", port: int = 8050, auth: str | None = None,
          prefix: str | None = None, threads: int = 8, announce=None) -> None:
    """Serve the app with waitress, a production WSGI server (pure Python, no debug, no
    development-server warning), until SIGINT/SIGTERM (KeyboardInterrupt / SystemExit), then
    close the listening socket. ``announce(url)`` is called once the port is bound."""
    import logging

    from waitress.server import create_server

    limit_malloc_arenas()  # before the run-loading thread and waitress's threads make their arenas
    app = create_app(list(runs), list(data_dirs), auth=auth, warm=True, prefix=prefix)
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "task queue depth" notes under load
    try:

        # waitress reads a request's whole body before the app sees it (spooled to a file): a body
        # over the cap must be refused by waitress itself, from its Content-Length, with a 413
        server = create_server(app.server, host=host, port=port, threads=threads, ident="llm-maps",
                               max_request_body_size=max_body())
        json_error_server(server)
    except OSError as exc:

        raise LLMMapsError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (--port P for another port)") from None
    if announce is not None:
        announce(f"http://{host}:{getattr(server, 'effective_port', port)}{normalise_prefix(prefix)}")
    try:
        server.run()
    finally:
        server.close()
