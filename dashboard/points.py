"""The per-point arrays the browser keeps for a run, served once as one binary blob.

The map page fetches ``/_llm_maps/points?run=ID`` once per run (after the first paint) and then
recolours and filters in the browser (assets/dashboard.js) with no server round trip. Format:

    uint32 little-endian  header length H
    H bytes               JSON header: n, arrays {name: {dtype, offset, length}}, colour options,
                          category names, hover strings (small runs only), ...
    zero padding to a multiple of 8, then the arrays (each at an 8-byte aligned offset)

``/_llm_maps/dist?run=ID&layer=K`` sends one float32 array: distance to train in another layer.

The WebGL map (assets/mapgl.js, any size of run) gets the same arrays one at a time, as raw bytes
with no header (``/_llm_maps/array?run=ID&name=x``; their dtypes and the rest of the header come
with the page, ``gl_meta``), streamed from the run's own numpy arrays, and the per-point hover texts
of runs up to ``HOVER_TEXT_MAX`` rows as JSON (``/_llm_maps/hover?run=ID``).
"""

from __future__ import annotations

import html
import json
import struct

import numpy as np

from dashboard import figures as F
from dashboard import components as C, regions_data as RD
from dashboard.conditions_data import client_arrays, client_header
from dashboard.data import view_key

DTYPES = {np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2", np.dtype(np.int32): "i4",
          np.dtype(np.float32): "f4"}
CLIENT_MAX_POINTS = F.MAX_POINTS  # larger runs are sampled and drawn by the server
# Runs above this many rows open in the WebGL map by default: from here on it is faster at every
# step (benchmarks/bench_dashboard.py at 100k: first paint 0.98 s against the Plotly map's 1.77 s)
WEBGL_FROM_POINTS = 50_000


def pack(header: dict, arrays: dict[str, np.ndarray]) -> bytes:
    """header + arrays -> the binary format above."""
    specs, chunks, offset = {}, [], 0
    for name, values in arrays.items():
        values = np.ascontiguousarray(values)
        if values.dtype not in DTYPES:
            raise TypeError(f"{name}: unsupported dtype {values.dtype}")
        specs[name] = {"dtype": DTYPES[values.dtype], "offset": offset, "length": int(values.size)}
        raw = values.tobytes()
        pad = (-len(raw)) % 8
        chunks.append(raw + b"\0" * pad)
        offset += len(raw) + pad
    head = json.dumps({**header, "arrays": specs}, separators=(",", ":")).encode("utf-8")
    head_pad = (-(4 + len(head))) % 8
    return struct.pack("<I", len(head)) + head + b"\0" * head_pad + b"".join(chunks)


def unpack(blob: bytes) -> tuple[dict, dict[str, np.ndarray]]:
    """The inverse of ``pack`` (for tests and tools)."""
    (length,) = struct.unpack_from("<I", blob, 0)
    header = json.loads(blob[4:4 + length].decode("utf-8"))
    base = 4 + length + ((-(4 + length)) % 8)
    inverse = {v: k for k, v in DTYPES.items()}
    arrays = {name: np.frombuffer(blob, dtype=inverse[s["dtype"]], count=s["length"], offset=base + s["offset"])
              for name, s in header.pop("arrays").items()}
    return header, arrays


def client_columns(data) -> dict[str, np.ndarray]:
    """The per-point arrays the browser recolours and filters with (no copies of the run's own)."""
    cats = data.cats
    arrays = {"x": data.x, "y": data.y, "score": data.score, "dist": data.dist, "out_len": data.out_len}
    arrays.update({f"cat_{c}": cats[c].codes for c in ("split", "correct", "domain", "task", "category")})
    arrays.update(client_arrays(data))  # per condition: 0 unscored, 1 wrong, 2 right
    regions, _ = RD.regions_of(data)
    if regions is not None:  # the region of each row (-1: none), for the region filter
        arrays["region"] = regions.labels.astype(np.int32, copy=False)
    return arrays


def client_meta(data) -> dict:
    """What the browser needs besides the arrays: colour options, category names, legend slots..."""
    cats = data.cats
    return {
        "run": data.id, "n": data.n, "default_layer": data.default_layer, "has_scores": data.has_scores,
        "options": F.client_options(data), "names": {c: cats[c].names for c in ("split", "domain", "task")},
        "missing": F.MISSING, "band": F.MISSING_BAND, "legend_slots": F.LEGEND_SLOTS,
        "short_hover": F.SHORT_HOVER, "dim_opacity": F.DIM_OPACITY,
        **client_header(data),
    }


def points_payload(data) -> bytes:
    """Everything the browser needs to recolour and filter a run's map itself (cached per run)."""

    def build():
        header = {**client_meta(data), "hover": data.hover.tolist() if data.n <= F.HOVER_TEXT_MAX else None}
        return pack(header, client_columns(data))
    return data._cached("points_payload", build)


def atlas_columns(data) -> dict[str, np.ndarray]:
    """The token map's own points, in its view: every atlas token (``atlas_x``, ``atlas_y``), which the
    WebGL map draws faintly under the prompts; {} in other views or without placed atlas tokens."""
    xy = data.atlas_points() if data.view == "tokens" else None
    return {} if xy is None else {"atlas_x": xy[0], "atlas_y": xy[1]}


def atlas_count(data) -> int:
    """How many atlas tokens the Map page draws under the prompts of this view."""
    return int(atlas_columns(data).get("atlas_x", np.zeros(0)).size)


def gl_meta(data) -> dict:
    """The WebGL map's description of a run (assets/mapgl.js): ``client_meta`` plus each array's
    dtype and length (fetched one by one from ``/_llm_maps/array``), whether per-point hover texts
    can be fetched (``/_llm_maps/hover``, runs of at most HOVER_TEXT_MAX rows) and how many atlas
    tokens the token map draws under the prompts (0: none)."""
    arrays = {name: {"dtype": DTYPES[np.dtype(a.dtype)], "length": int(a.size)}
              for name, a in {**client_columns(data), **atlas_columns(data)}.items()}
    return {**client_meta(data), "arrays": arrays, "hover": data.n <= F.HOVER_TEXT_MAX, "atlas": atlas_count(data)}


def array_chunks(values: np.ndarray, chunk: int = 1 << 20):
    """``values`` as raw little-endian bytes, a chunk at a time (the run's array is never copied whole)."""
    raw = memoryview(np.ascontiguousarray(values)).cast("B")
    for start in range(0, len(raw), chunk):
        yield bytes(raw[start:start + chunk])


def prepare_first_view(data) -> None:
    """What the map's first view of a run needs: its default figure built once (which also brings
    in plotly's figure classes and templates, ~50 ms the first time in a process) and the arrays
    the browser fetches after it."""
    if map_mode(data.n, None) == "webgl":  # the WebGL map (pages/map.py): the arrays are the run's own
        client_columns(data)
        return
    F.view_figure(data)
    points_payload(data)


def dist_payload(data, layer: int) -> bytes:
    return np.ascontiguousarray(data.distances(layer), dtype=np.float32).tobytes()


def map_mode(n: int, renderer: str | None, atlas: int = 0) -> str:
    """How the Map page draws a run of ``n`` rows: "webgl" (every point, assets/mapgl.js: asked for
    with renderer=webgl, or by default above WEBGL_FROM_POINTS, and for a token map with ``atlas``
    tokens to draw under its prompts, which only it draws), "client" (Plotly, recoloured in the
    browser) or "server" (Plotly, a sample and a density layer drawn by the server: renderer=plotly
    above CLIENT_MAX_POINTS)."""
    if renderer == "webgl" or (renderer != "plotly" and (n > WEBGL_FROM_POINTS or atlas > 0)):
        return "webgl"
    return "client" if n <= CLIENT_MAX_POINTS else "server"


def gl_page_hint(registry, args) -> tuple[str, list[str]] | None:
    """For a request of the Map page's HTML (query ``args``): (run key, arrays) when its map will be
    the WebGL one (pages/map.py ``map_mode``: asked for, or by its manifest a run above
    WEBGL_FROM_POINTS rows or a token map with atlas tokens), so that the page head starts fetching
    the arrays of its first frame and leaves plotly.js alone (assets/early.js); None otherwise or
    when that is not known cheaply."""
    renderer = args.get("renderer")
    if renderer == "plotly":
        return None
    entry = registry.entry(args.get("run") or None)
    if entry is None or not entry.ok:
        return None
    n = ((entry.manifest or {}).get("counts") or {}).get("examples")
    atlas = ((entry.manifest or {}).get("token_atlas") or {}).get("tokens") if args.get("view") == "tokens" else 0
    if map_mode(n if isinstance(n, int) else 0, renderer, atlas if isinstance(atlas, int) else 0) != "webgl":
        return None
    colour = args.get("colour") or "split"
    names = ["x", "y", "cat_split"] + ([f"cat_{colour}"] if F.COLOUR_KIND.get(colour) == "categorical" else
                                       [colour] if colour in ("score", "out_len") else [])
    return view_key(entry.id, args.get("view")), list(dict.fromkeys(names))


def install_routes(server, prefix: str = "/") -> None:
    """The read-only endpoints on the app's Flask server (behind its basic auth, if any)."""
    import flask


    def _load():
        data, error = C.load(flask.request.args.get("run"))
        if data is None:
            flask.abort(flask.Response(json.dumps({"error": error}), 404, mimetype="application/json"))
        return data

    def _binary(blob: bytes) -> flask.Response:
        return flask.Response(blob, mimetype="application/octet-stream", headers={"Cache-Control": "no-cache"})

    @server.route(f"{prefix}_llm_maps/points")
    def _points():
        data = _load()
        if data.n > CLIENT_MAX_POINTS:
            return flask.Response(json.dumps({"error": "run too large for the browser; drawn by the server"}), 409,
                                  mimetype="application/json")
        return _binary(points_payload(data))

    @server.route(f"{prefix}_llm_maps/array")
    def _array():
        """One per-point array (``gl_meta`` names them) as raw bytes: no JSON, no copy of the array."""
        data = _load()
        name = flask.request.args.get("name", "")
        values = (atlas_columns(data) if name.startswith("atlas_") else client_columns(data)).get(name)
        if values is None:
            return flask.Response(json.dumps({"error": f"no array {name!r}"}), 404, mimetype="application/json")
        return flask.Response(array_chunks(values), mimetype="application/octet-stream",
                              headers={"Cache-Control": "no-cache", "Content-Length": str(values.nbytes),
                                       "X-LLM-Maps-Dtype": DTYPES[np.dtype(values.dtype)]})

    @server.route(f"{prefix}_llm_maps/hover")
    def _hover():
        data = _load()
        if data.n > F.HOVER_TEXT_MAX:
            return flask.Response(json.dumps({"error": "no per-point hover texts for a run this large"}), 409,
                                  mimetype="application/json")
        return flask.Response(json.dumps(data.hover.tolist()), mimetype="application/json",
                              headers={"Cache-Control": "no-cache"})

    @server.after_request
    def _gl_hint(response):
        """The Map page's HTML: the WebGL map's first arrays named in the page head (``gl_page_hint``)."""
        req = flask.request
        if req.method != "GET" or req.path != f"{prefix}map" or response.status_code != 200 \
                or response.mimetype != "text/html" or response.direct_passthrough:
            return response
        try:
            hint = gl_page_hint(flask.current_app.config["LLM_MAPS_REGISTRY"], req.args)
        except Exception:  # noqa: BLE001 - a hint only; the page works without it
            hint = None
        if hint is not None:
            attrs = f'data-gl="{html.escape(hint[0], quote=True)}" data-gl-arrays="{",".join(hint[1])}" '
            body = response.get_data(as_text=True)
            response.set_data(body.replace("<script data-plen=", "<script " + attrs + "data-plen=", 1))
        return response

    @server.route(f"{prefix}_llm_maps/dist")
    def _dist():
        data = _load()
        try:
            return _binary(dist_payload(data, int(flask.request.args.get("layer", data.default_layer))))
        except (ValueError, Exception) as exc:  # noqa: BLE001 - reported to the page, never fatal
            return flask.Response(json.dumps({"error": str(exc)}), 409, mimetype="application/json")
