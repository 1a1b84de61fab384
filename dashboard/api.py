"""HTTP JSON API of the web process: queue typed prompts for the worker, read results, list runs,
examples and user points. Torch-free: it only talks to the job queue (llm_maps.jobs).

    POST   /api/runs/<run>/points         {"instruction", "context"?, "generate"?, "max_new_tokens"?,
                                           "temperature"?, "top_p"?, "seed"?, "domain"?} -> 202 {"id"}
    GET    /api/points/<id>               {"id", "run", "status", "error"?, "result"?}
    POST   /api/points/<id>/cancel        cancel a queued or running job -> {"id", "status"}
    GET    /api/runs                      runs with their manifest summary
    GET    /api/runs/<run>/examples/<id>  one example
    GET    /api/runs/<run>/points         the run's user points (?format=csv or jsonl: a download)
    GET    /api/runs/<run>/points/<id>    one user point
    DELETE /api/runs/<run>/points/<id>    delete one

Errors are ``{"error": "..."}``: 404 unknown run/job/example, 422 bad JSON or field (named),
413 over-long input, 503 queue full (with Retry-After).
"""

from __future__ import annotations

import math
import os

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.jobs import JobQueue, PointStore, QueueFull

LIMITS = {
    "max_chars": int(os.environ.get("LLM_MAPS_MAX_CHARS", "8000")),
    "max_new_tokens": int(os.environ.get("LLM_MAPS_MAX_NEW_TOKENS", "512")),
}
FIELDS = {"instruction": str, "context": str, "generate": bool, "max_new_tokens": int, "temperature": (int, float),
          "top_p": (int, float), "seed": int, "domain": str}


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def validate_point(body, *, max_chars: int, max_new_tokens: int, max_length_tokens: int | None = None,
                   token_count=None) -> dict:
    """Check a POST body; returns the job payload or raises ApiError (422 naming the field, 413)."""
    if not isinstance(body, dict):
        raise ApiError(422, "body: expected a JSON object")
    for key, value in body.items():
        if key not in FIELDS:
            raise ApiError(422, f"field '{key}': unknown field (known: {', '.join(FIELDS)})")
        kind = FIELDS[key]
        if value is None and key != "instruction":
            continue
        if isinstance(value, bool) and kind is not bool:
            raise ApiError(422, f"field '{key}': expected a number, got a boolean")
        if not isinstance(value, kind):
            name = {str: "a string", bool: "true or false", int: "an integer"}.get(kind, "a number")
            raise ApiError(422, f"field '{key}': expected {name}")
    instruction = body.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ApiError(422, "field 'instruction': required, a non-empty string")
    context = body.get("context") or ""
    chars = len(instruction) + len(context)
    if chars > max_chars:
        raise ApiError(413, f"field 'instruction': input is {chars} characters; the limit is {max_chars}")
    if max_length_tokens and token_count is not None:
        n = token_count(instruction + "\n\n" + context if context else instruction)
        if n > max_length_tokens:
            raise ApiError(413, f"field 'instruction': input is {n} tokens; this run's limit is {max_length_tokens}")
    payload = {"instruction": instruction, "context": context, "generate": bool(body.get("generate", False))}
    mnt = body.get("max_new_tokens")
    if mnt is not None:
        if not 1 <= mnt <= max_new_tokens:
            raise ApiError(422, f"field 'max_new_tokens': must be between 1 and {max_new_tokens}")
        payload["max_new_tokens"] = mnt
    temp = body.get("temperature")
    if temp is not None:
        if not (math.isfinite(temp) and 0 <= temp <= 5):
            raise ApiError(422, "field 'temperature': must be between 0 and 5 (0 = greedy)")
        payload["temperature"] = float(temp)
    top_p = body.get("top_p")
    if top_p is not None:
        if not (math.isfinite(top_p) and 0 < top_p <= 1):
            raise ApiError(422, "field 'top_p': must be in (0, 1]")
        payload["top_p"] = float(top_p)
    if body.get("seed") is not None:
        payload["seed"] = int(body["seed"])
    if body.get("domain"):
        payload["domain"] = body["domain"]
    return payload


def _jsonable(value):
    if isinstance(value, np.ndarray):
        return [_jsonable(v) for v in value.tolist()]
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None:
        return None
    try:
        import pandas as pd

        if value is pd.NA:
            return None
    except ImportError:  # pragma: no cover
        pass
    return value


def _token_counter(manifest: dict):
    """Count tokens with the run's tokenizer.json (``tokenizers`` only, no transformers), if found."""
    from pathlib import Path

    info = manifest.get("model_info") or {}
    for folder in (info.get("converted_to"), manifest.get("model")):
        if folder and (Path(folder) / "tokenizer.json").is_file():
            try:
                from tokenizers import Tokenizer

                tok = Tokenizer.from_file(str(Path(folder) / "tokenizer.json"))
                return lambda text: len(tok.encode(text).ids)
            except Exception:  # noqa: BLE001 - the worker checks exactly anyway
                return None
    return None


EXPORT_FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
CSV_COLUMNS = ["id", "created", "kind", "instruction", "context", "x", "y", "dist_to_train", "domain",
               "expected_accuracy", "expected_low", "expected_high", "neighbours", "output", "stop_reason",
               "n_tokens", "mean_logprob", "perplexity", "path_length", "final_dist", "temperature", "seed",
               "max_new_tokens", "prompt"]


def export_points(points: list[dict], fmt: str) -> str:
    """User points as JSONL (every field, tokens included) or CSV (one row per point: coordinates,
    expected accuracy, neighbours as ``id:distance`` joined by ``;``, output and path summary)."""
    import json

    if fmt == "jsonl":
        return "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in points)
    import pandas as pd

    rows = []
    for p in points:
        exp = p.get("expected_accuracy") or {}
        opts = p.get("options") or {}
        row = {k: p.get(k) for k in CSV_COLUMNS}
        row.update(expected_accuracy=exp.get("accuracy"), expected_low=exp.get("low"), expected_high=exp.get("high"),
                   neighbours=";".join(f"{n['example_id']}:{n['distance']:.6g}" for n in p.get("neighbours") or []),
                   temperature=opts.get("temperature"), seed=opts.get("seed"), max_new_tokens=opts.get("max_new_tokens"))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    for col in ("seed", "max_new_tokens", "n_tokens"):  # integers stay integers next to blanks
        frame[col] = frame[col].astype("Int64")
    return frame.to_csv(index=False)


def register_api(server, registry, queue: JobQueue, points: PointStore, url_prefix: str = "/api") -> None:
    import flask

    bp = flask.Blueprint("llm_maps_api", __name__, url_prefix=url_prefix)
    counters: dict = {}

    def entry_or_404(run: str):
        entry = registry.entry(run)
        if entry is None:
            raise ApiError(404, f"unknown run '{run}'")
        if not entry.ok:
            raise ApiError(404, f"run '{run}' cannot be read: {entry.error}")
        return entry

    @bp.errorhandler(ApiError)
    def _api_error(exc: ApiError):
        return flask.jsonify({"error": exc.message}), exc.status, exc.headers

    @bp.post("/runs/<run>/points")
    def submit(run: str):
        entry = entry_or_404(run)
        body = flask.request.get_json(silent=True)
        if body is None:
            raise ApiError(422, "body: invalid JSON (send Content-Type: application/json)")
        key = (str(entry.path), entry.manifest.get("created"))
        if key not in counters:
            counters[key] = _token_counter(entry.manifest)
        payload = validate_point(body, max_chars=LIMITS["max_chars"], max_new_tokens=LIMITS["max_new_tokens"],
                                 max_length_tokens=entry.manifest.get("max_length"), token_count=counters[key])
        try:
            job_id = queue.submit(entry.id, "generate" if payload["generate"] else "place", payload)
        except QueueFull as exc:
            raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
        return flask.jsonify({"id": job_id}), 202, {"Location": f"{url_prefix}/points/{job_id}"}

    @bp.get("/points/<job_id>")
    def status(job_id: str):
        job = queue.get(job_id)
        if job is None:
            raise ApiError(404, f"unknown point '{job_id}'")
        out = {"id": job["id"], "run": job["run"], "kind": job["kind"], "status": job["status"],
               "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished")}
        if job.get("cancel_requested"):
            out["cancel_requested"] = True
        if job.get("error"):
            out["error"] = job["error"]
        if job.get("result") is not None:
            out["result"] = job["result"]
        return flask.jsonify(out)

    @bp.post("/points/<job_id>/cancel")
    def cancel(job_id: str):
        job = queue.cancel(job_id)
        if job is None:
            raise ApiError(404, f"unknown point '{job_id}'")
        return flask.jsonify({"id": job_id, "status": job["status"],
                              "cancel_requested": bool(job.get("cancel_requested"))})

    @bp.get("/health")
    def health():
        """Readiness: 503 while the runs a first visit opens are still being loaded, then 200."""
        warm = flask.current_app.config.get("LLM_MAPS_WARM")
        body = {"status": "warming" if warm is not None and warm.is_alive() else "ready",
                "runs": len(registry.entries())}
        if body["status"] == "warming":
            return flask.jsonify(body), 503, {"Retry-After": "1"}
        return flask.jsonify(body)

    @bp.get("/runs")
    def runs():
        out = []
        for e in registry.entries():
            item = {"run": e.id, "path": str(e.path), "ok": e.ok}
            if e.ok:
                m = e.manifest
                item.update(model=m.get("model"), created=m.get("created"), counts=m.get("counts"),
                            accuracy=(m.get("scoring") or {}).get("accuracy"), layers=m.get("layers"),
                            default_layer=m.get("default_layer"), distance_metric=m.get("distance_metric"),
                            prompt_template=(m.get("prompt_template") or {}).get("name"),
                            views=m.get("views") or ["prompt"],
                            # what a generation's per-token dist is measured against
                            reference="atlas" if (m.get("token_atlas") or {}).get("tokens") else "prompts")
            else:
                item["error"] = e.error
            out.append(item)
        return flask.jsonify({"runs": out})

    @bp.get("/runs/<run>/examples/<path:example_id>")
    def example(run: str, example_id: str):
        entry = entry_or_404(run)
        try:
            data = registry.load(entry.id)
        except LLMMapsError as exc:
            raise ApiError(404, str(exc)) from None
        row = data.id_index.get(example_id)
        if row is None:
            raise ApiError(404, f"unknown example '{example_id}' in run '{run}'")
        rec = data.frame.iloc[int(row)]
        return flask.jsonify({k: _jsonable(v) for k, v in rec.items()})

    @bp.get("/runs/<run>/points")
    def list_points(run: str):
        entry = entry_or_404(run)
        fmt = flask.request.args.get("format", "json")
        if fmt == "json":
            return flask.jsonify({"points": points.list(entry.id)})
        if fmt not in EXPORT_FORMATS:
            raise ApiError(422, f"field 'format': unknown format '{fmt}' (json, csv, jsonl)")
        body = export_points(points.list(entry.id), fmt)
        return flask.Response(body, mimetype=EXPORT_FORMATS[fmt], headers={
            "Content-Disposition": f'attachment; filename="{entry.id}-points.{fmt}"'})

    @bp.get("/runs/<run>/points/<point_id>")
    def get_point(run: str, point_id: str):
        entry = entry_or_404(run)
        point = points.get(entry.id, point_id)
        if point is None:
            raise ApiError(404, f"unknown point '{point_id}' in run '{run}'")
        return flask.jsonify(point)

    @bp.delete("/runs/<run>/points/<point_id>")
    def delete_point(run: str, point_id: str):
        entry = entry_or_404(run)
        if not points.delete(entry.id, point_id):
            raise ApiError(404, f"unknown point '{point_id}' in run '{run}'")
        return flask.jsonify({"deleted": point_id})

    server.register_blueprint(bp)
