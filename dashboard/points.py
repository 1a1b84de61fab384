"""The per-point arrays the browser keeps for a run, served once as one binary blob.

The map page fetches ``/_llm_maps/points?run=ID`` once per run (after the first paint) and then
recolours and filters in the browser (assets/dashboard.js) with no server round trip. Format:

    uint32 little-endian  header length H
    H bytes               JSON header: n, arrays {name: {dtype, offset, length}}, colour options,
                          category names, hover strings (small runs only), ...
    zero padding to a multiple of 8, then the arrays (each at an 8-byte aligned offset)

``/_llm_maps/dist?run=ID&layer=K`` sends one float32 array: distance to train in another layer.
"""

from __future__ import annotations

import json
import struct

import numpy as np

from dashboard import figures as F

DTYPES = {np.dtype(np.uint8): "u1", np.dtype(np.uint16): "u2", np.dtype(np.int32): "i4",
          np.dtype(np.float32): "f4"}
CLIENT_MAX_POINTS = F.MAX_POINTS  # larger runs are sampled and drawn by the server


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


def points_payload(data) -> bytes:
    """Everything the browser needs to recolour and filter a run's map itself (cached per run)."""
    from dashboard.conditions_view import client_arrays, client_header

    def build():
        cats = data.cats
        arrays = {"x": data.x, "y": data.y, "score": data.score, "dist": data.dist, "out_len": data.out_len}
        arrays.update({f"cat_{c}": cats[c].codes for c in ("split", "correct", "domain", "task", "category")})
        arrays.update(client_arrays(data))  # per condition: 0 unscored, 1 wrong, 2 right
        header = {
            "run": data.id, "n": data.n, "default_layer": data.default_layer, "has_scores": data.has_scores,
            "options": F.client_options(data), "names": {c: cats[c].names for c in ("split", "domain", "task")},
            "missing": F.MISSING, "band": F.MISSING_BAND, "legend_slots": F.LEGEND_SLOTS,
            "short_hover": F.SHORT_HOVER,
            "hover": data.hover.tolist() if data.n <= F.HOVER_TEXT_MAX else None,
            **client_header(data),
        }
        return pack(header, arrays)
    return data._cached("points_payload", build)


def prepare_first_view(data) -> None:
    """What the map's first view of a run needs: its default figure built once (which also brings
    in plotly's figure classes and templates, ~50 ms the first time in a process) and the arrays
    the browser fetches after it."""
    F.view_figure(data)
    if data.n <= CLIENT_MAX_POINTS:
        points_payload(data)


def dist_payload(data, layer: int) -> bytes:
    return np.ascontiguousarray(data.distances(layer), dtype=np.float32).tobytes()


def install_routes(server, prefix: str = "/") -> None:
    """The two read-only endpoints on the app's Flask server (behind its basic auth, if any)."""
    import flask

    from dashboard import components as C

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

    @server.route(f"{prefix}_llm_maps/dist")
    def _dist():
        data = _load()
        try:
            return _binary(dist_payload(data, int(flask.request.args.get("layer", data.default_layer))))
        except (ValueError, Exception) as exc:  # noqa: BLE001 - reported to the page, never fatal
            return flask.Response(json.dumps({"error": str(exc)}), 409, mimetype="application/json")
