"""HTTP JSON API of the web process: queue typed prompts for the worker, read results, list runs,
examples and user points. Torch-free: it only talks to the job queue (llm_maps.jobs).

    POST   /api/runs/<run>/points         {"instruction", "context"?, "generate"?, "max_new_tokens"?,
                                           "temperature"?, "top_p"?, "seed"?, "domain"?, "example_id"?,
                                           "cot"?} -> 202 {"id"}
                                          (example_id: a variation of that example, scored with its
                                          metric; cot: "think step by step" as the cot condition
                                          asks it: the answer starts with the cue, the prompt placed
                                          is the plain one; llm_maps.conditions.cot_prompt)
    GET    /api/points/<id>               {"id", "run", "status", "error"?, "result"?}
    POST   /api/points/<id>/cancel        cancel a queued or running job -> {"id", "status"}
    GET    /api/runs                      runs with their manifest summary and group (paths: owner only)
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

import flask
import numpy as np
from werkzeug.exceptions import HTTPException

from llm_maps.csvsafe import neutralise_frame
from llm_maps.errors import LLMMapsError
from llm_maps.jobs import FINAL, JobQueue, KeyInFlight, KeyReused, PointStore, QueueFull, request_fingerprint
from llm_maps.runfolder import model_label, run_key

LIMITS = {
    "max_chars": int(os.environ.get("LLM_MAPS_MAX_CHARS", "8000")),
    "max_new_tokens": int(os.environ.get("LLM_MAPS_MAX_NEW_TOKENS", "512")),
    "max_domain_chars": int(os.environ.get("LLM_MAPS_MAX_DOMAIN_CHARS", "200")),
    "max_depth": 8,  # JSON nesting of a request body (a point is a flat object: depth 1)
}
INT_MAX = 2**63 - 1  # integers: 0 .. 2^63 - 1 (what the generator's seed and every store accept)
TEMPERATURE_MIN, TEMPERATURE_MAX = 0.01, 5.0  # or exactly 0 (greedy); smaller ones overflow the softmax
TOP_P_MIN = 0.01
FIELDS = {"instruction": str, "context": str, "generate": bool, "max_new_tokens": int, "temperature": (int, float),
          "top_p": (int, float), "seed": int, "domain": str, "example_id": str, "cot": bool}


def max_body_bytes() -> int:
    """The largest POST body the API reads: the longest valid point, every character escaped
    (``\\uXXXX\\uXXXX`` is 12 bytes), plus room for the other fields."""
    return 12 * (LIMITS["max_chars"] + LIMITS["max_domain_chars"]) + 4096


class ApiError(Exception):
    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def parse_body(raw: bytes):
    """A request body -> its JSON value, or ApiError 422 (not UTF-8, not JSON, nested too deep)."""
    import json

    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ApiError(422, f"body: not valid UTF-8 (byte {exc.start})") from None
    depth = _max_depth(text)
    if depth > LIMITS["max_depth"]:
        raise ApiError(422, f"body: JSON nested {depth} levels deep; the limit is {LIMITS['max_depth']}")
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ApiError(422, f"body: invalid JSON ({str(exc).split(':')[0]}); send Content-Type: "
                            "application/json") from None


def _max_depth(text: str) -> int:
    """How deeply brackets nest in a JSON text (brackets inside strings not counted), without parsing."""
    import re

    depth = best = 0
    for token in re.finditer(r'"(?:[^"\\]|\\.)*"|[\[{]|[\]}]', text):
        c = token.group()
        if c in "[{":
            depth += 1
            best = max(best, depth)
        elif c in "]}":
            depth -= 1
    return best


def check_text(field: str, value: str) -> None:
    """Strings must be valid Unicode: a lone surrogate (from a ``\\ud800`` escape) is rejected."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ApiError(422, f"field '{field}': not valid Unicode (lone surrogate at character {exc.start})") from None


def validate_point(body, *, max_chars: int, max_new_tokens: int, max_length_tokens: int | None = None,
                   token_count=None, model_context: int | None = None) -> dict:
    """Check a POST body, every field; returns the job payload or raises ApiError (422 naming the
    field, 413 over-long text)."""
    if not isinstance(body, dict):
        raise ApiError(422, "body: expected a JSON object")
    for key, value in body.items():
        if key not in FIELDS:
            shown = key if len(key) <= 40 else key[:40] + "…"
            raise ApiError(422, f"field {shown.encode('ascii', 'backslashreplace').decode()!r}: unknown field "
                                f"(known: {', '.join(FIELDS)})")
        kind = FIELDS[key]
        if value is None and key != "instruction":
            continue
        name = {str: "a string", bool: "true or false", int: "an integer"}.get(kind, "a number")
        if isinstance(value, bool) and kind is not bool:
            raise ApiError(422, f"field '{key}': expected {name}, got a boolean")
        if not isinstance(value, kind):
            raise ApiError(422, f"field '{key}': expected {name}")
        if isinstance(value, str):
            check_text(key, value)
        elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= INT_MAX:
            raise ApiError(422, f"field '{key}': must be between 0 and {INT_MAX}")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ApiError(422, f"field '{key}': must be a finite number")
    instruction = body.get("instruction")
    if not isinstance(instruction, str) or not instruction.strip():
        raise ApiError(422, "field 'instruction': required, a non-empty string")
    context = body.get("context") or ""
    chars = len(instruction) + len(context)
    if chars > max_chars:
        field = "instruction" if len(instruction) > len(context) else "context"
        raise ApiError(413, f"field '{field}': input is {chars} characters; the limit is {max_chars}")
    domain = body.get("domain")
    if domain is not None and len(domain) > LIMITS["max_domain_chars"]:
        raise ApiError(413, f"field 'domain': {len(domain)} characters; the limit is {LIMITS['max_domain_chars']}")
    if max_length_tokens and token_count is not None:
        n = token_count(instruction + "\n\n" + context if context else instruction)
        if n > max_length_tokens:
            raise ApiError(413, f"field 'instruction': input is {n} tokens; this run's limit is {max_length_tokens}")
    payload = {"instruction": instruction, "context": context, "generate": bool(body.get("generate", False))}
    mnt = body.get("max_new_tokens")
    if mnt is not None:
        if not 1 <= mnt <= max_new_tokens:
            raise ApiError(422, f"field 'max_new_tokens': must be between 1 and {max_new_tokens}")
        if model_context is not None and mnt >= model_context:
            raise ApiError(422, f"field 'max_new_tokens': {mnt} does not fit the model's context of "
                                f"{model_context} tokens (the prompt needs some of it)")
        payload["max_new_tokens"] = mnt
    temp = body.get("temperature")
    if temp is not None:
        if not (temp == 0 or TEMPERATURE_MIN <= temp <= TEMPERATURE_MAX):
            raise ApiError(422, f"field 'temperature': must be 0 (greedy) or between {TEMPERATURE_MIN:g} and "
                                f"{TEMPERATURE_MAX:g}")
        payload["temperature"] = float(temp)
    top_p = body.get("top_p")
    if top_p is not None:
        if not TOP_P_MIN <= top_p <= 1:
            raise ApiError(422, f"field 'top_p': must be between {TOP_P_MIN:g} and 1")
        payload["top_p"] = float(top_p)
    if body.get("seed") is not None:
        payload["seed"] = int(body["seed"])
    if domain:
        payload["domain"] = domain
    example_id = body.get("example_id")
    if example_id is not None:
        if not example_id.strip():
            raise ApiError(422, "field 'example_id': must be an example id of the run (or left out)")
        payload["example_id"] = example_id  # that it is the run's: checked by the caller (check_example)
    if body.get("cot"):
        payload["cot"] = True
    return payload


def public_reason(reason: str) -> str:
    """A liveness reason as anyone may read it: worker ids (``host:pid``) left out, and an absolute
    path said by its last part (``/home/ann/models/x`` -> ``x``)."""
    import re

    reason = re.sub(r"worker [^\s:]+:\d+", "worker", reason)
    return re.sub(r"(?<![\w.])(?:/[^\s/:'\"()]+)+/([^\s/:'\"()]+)", r"\1", reason)


def public_error(entry) -> str:
    """Why a run cannot be read, with its folder said as the run's id instead of a local path."""
    text = str(entry.error)
    for path in (str(entry.path.resolve()), str(entry.path)):
        text = text.replace(path, entry.id)
    return text


def check_example(data, run: str, example_id: str) -> None:
    """A variation's ``example_id`` must be one of the run's examples: else 422 naming the field."""
    if data.row_of(example_id) is None:
        shown = example_id if len(example_id) <= 80 else example_id[:80] + "…"
        raise ApiError(422, f"field 'example_id': unknown example {shown!r} in run '{run}'")


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


def model_context(manifest: dict) -> int | None:
    """The model's context length in tokens (positions), from the manifest (``max_positions``) or the
    model folder's config.json; None when neither says."""
    import json
    from pathlib import Path

    if isinstance(manifest.get("max_positions"), int):
        return int(manifest["max_positions"])
    info = manifest.get("model_info") or {}
    for folder in (info.get("converted_to"), manifest.get("model")):
        path = Path(folder) / "config.json" if folder else None
        if path is not None and path.is_file():
            try:
                config = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                return None
            for key in ("max_position_embeddings", "n_positions", "n_ctx"):
                if isinstance(config.get(key), int) and config[key] > 0:
                    return int(config[key])
    return None


EXPORT_FORMATS = {"csv": "text/csv", "jsonl": "application/x-ndjson"}
CSV_COLUMNS = ["id", "created", "kind", "instruction", "context", "x", "y", "dist_to_train", "domain",
               "expected_accuracy", "expected_low", "expected_high", "neighbours", "output", "stop_reason",
               "n_tokens", "mean_logprob", "perplexity", "path_length", "final_dist", "temperature", "seed",
               "max_new_tokens", "prompt", "expected_task_low", "expected_task_high", "expected_tasks"]


def export_points(points: list[dict], fmt: str) -> str:
    """User points as JSONL (every field, tokens included) or CSV (one row per point: coordinates,
    expected accuracy with its bin's Wilson interval (expected_low, expected_high) and, appended last,
    its interval over tasks where the falloff has one and the bin's tasks,
    neighbours as ``id:distance`` joined by ``;``, output and path summary)."""
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
                   expected_task_low=exp.get("task_low"), expected_task_high=exp.get("task_high"),
                   expected_tasks=exp.get("n_tasks"),
                   neighbours=";".join(f"{n['example_id']}:{n['distance']:.6g}" for n in p.get("neighbours") or []),
                   temperature=opts.get("temperature"), seed=opts.get("seed"), max_new_tokens=opts.get("max_new_tokens"))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=CSV_COLUMNS)
    for col in ("seed", "max_new_tokens", "n_tokens", "expected_tasks"):  # integers stay integers next to blanks
        try:
            frame[col] = frame[col].astype("Int64")
        except (TypeError, ValueError, OverflowError):  # a value out of int64 (stored before limits): as text
            frame[col] = frame[col].map(lambda v: None if v is None or v != v else str(v))
    # CRLF rows (RFC 4180): a cell holding a bare carriage return is quoted too
    return neutralise_frame(frame).to_csv(index=False, lineterminator="\r\n")


api = flask.Blueprint("llm_maps_api", __name__)  # registered by ``register_api`` under the app's prefix


class _ApiState:
    """What the API's routes read, per app (``app.extensions["llm_maps_api"]``): the runs, the job
    queue, the point store, where the API is mounted, and each run's token counter."""

    def __init__(self, registry, queue: JobQueue, points: PointStore, url_prefix: str):
        self.registry, self.queue, self.points, self.url_prefix = registry, queue, points, url_prefix
        self.counters: dict = {}

    def entry_or_404(self, run: str):
        entry = self.registry.entry(run)
        if entry is None:
            raise ApiError(404, f"unknown run '{run}'")
        if not entry.ok:
            raise ApiError(404, f"run '{run}' cannot be read: {entry.error}")
        return entry

    def run_data(self, entry):
        try:
            return self.registry.load(entry.id)
        except LLMMapsError as exc:
            raise ApiError(404, str(exc)) from None

    def counter(self, entry):
        """(token counter, model context) of a run, made once per run build."""
        key = (str(entry.path), entry.manifest.get("created"))
        if key not in self.counters:
            self.counters[key] = (_token_counter(entry.manifest), model_context(entry.manifest))
        return self.counters[key]


def register_api(server, registry, queue: JobQueue, points: PointStore, url_prefix: str = "/api") -> None:
    """Mount the API (``api``) on the Flask app ``server`` at ``url_prefix``, serving ``registry``'s
    runs with ``queue`` and ``points``."""
    server.extensions["llm_maps_api"] = _ApiState(registry, queue, points, url_prefix)
    server.register_blueprint(api, url_prefix=url_prefix)


def _state() -> _ApiState:
    return flask.current_app.extensions["llm_maps_api"]


def _owner() -> bool:
    """The request carries the app's credentials (paths and worker ids are shown only then)."""
    return bool(flask.current_app.config.get("LLM_MAPS_AUTHORISED", lambda: False)())


@api.errorhandler(ApiError)
def _api_error(exc: ApiError):
    return flask.jsonify({"error": exc.message}), exc.status, exc.headers


@api.errorhandler(QueueFull)
def _queue_full(exc: QueueFull):
    """A full queue, or its server unreachable (Redis down): 503 with Retry-After, on every route."""
    return flask.jsonify({"error": str(exc)}), 503, {"Retry-After": str(exc.retry_after)}


@api.errorhandler(KeyReused)
def _key_reused(exc: KeyReused):
    return flask.jsonify({"error": str(exc)}), 422


@api.errorhandler(KeyInFlight)
def _key_in_flight(exc: KeyInFlight):
    return flask.jsonify({"error": str(exc)}), 409, {"Retry-After": str(exc.retry_after)}


@api.errorhandler(Exception)
def _any_error(exc: Exception):
    """Every other error of the API is JSON too: HTTP errors with their code, the rest a 500 that
    names the exception's type only (the details go to the log)."""
    if isinstance(exc, HTTPException):
        return flask.jsonify({"error": exc.description or exc.name}), exc.code or 500
    flask.current_app.logger.exception("API error on %s", flask.request.path)
    return flask.jsonify({"error": f"internal error ({type(exc).__name__})"}), 500


@api.post("/runs/<run>/points")
def submit(run: str):
    st = _state()
    entry = st.entry_or_404(run)
    body = parse_body(flask.request.get_data(cache=False))  # the size was checked before (hardening)
    token_count, context = st.counter(entry)
    payload = validate_point(body, max_chars=LIMITS["max_chars"], max_new_tokens=LIMITS["max_new_tokens"],
                             max_length_tokens=entry.manifest.get("max_length"), token_count=token_count,
                             model_context=context)
    key = idempotency_key(flask.request.headers.get("Idempotency-Key"))
    kind = "generate" if payload["generate"] else "place"
    refused = flask.current_app.config.get("LLM_MAPS_EXPECT_WORKERS") and st.queue.refusal(entry.id)
    if refused:  # a job no worker would ever run is not taken; one this key made already is answered
        again = st.queue.replay(key, request_fingerprint(entry.id, kind, payload)) if key else None
        if again is None:
            raise ApiError(503, f"{public_reason(refused)}; retry later", {"Retry-After": "2"})
        return _accepted(st, again, replayed=True)
    if "example_id" in payload:  # try a variation: the example the prompt was edited from
        check_example(st.run_data(entry), run, payload["example_id"])
    try:
        if key is None:
            job_id, replayed = st.queue.submit(entry.id, kind, payload, run_key=run_key(entry.manifest)), False
        else:
            job_id, replayed = st.queue.submit_once(entry.id, kind, payload, key, run_key=run_key(entry.manifest))
    except QueueFull as exc:
        raise ApiError(503, str(exc), {"Retry-After": str(exc.retry_after)}) from None
    return _accepted(st, job_id, replayed)


def _accepted(st: _ApiState, job_id: str, replayed: bool):
    """202 with the job's address; ``replayed``: the job this key's earlier request made (its answer
    may have been lost)."""
    headers = {"Location": f"{st.url_prefix}/points/{job_id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return flask.jsonify({"id": job_id}), 202, headers


def idempotency_key(raw: str | None) -> str | None:
    """The ``Idempotency-Key`` header's value (quotes of a structured-field string dropped), or
    None when absent; ApiError 400 unless 1-255 printable ASCII characters."""
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    if not 1 <= len(key) <= 255 or any(not " " <= c <= "~" for c in key):
        raise ApiError(400, "Idempotency-Key: 1 to 255 printable ASCII characters (e.g. a UUID)")
    return key


@api.get("/points/<job_id>")
def status(job_id: str):
    st = _state()
    job = st.queue.get(job_id)
    if job is None:
        raise ApiError(404, f"unknown point '{job_id}'")
    if st.registry.entry(job["run"]) is None:  # its run was removed (or renamed) while it waited
        if job["status"] not in FINAL:
            st.queue.fail(job_id, f"run '{job['run']}' is no longer served")
        raise ApiError(404, f"run '{job['run']}' of point '{job_id}' is no longer served")
    out = {"id": job["id"], "run": job["run"], "kind": job["kind"], "status": job["status"],
           "created": job.get("created"), "started": job.get("started"), "finished": job.get("finished")}
    if job.get("cancel_requested"):
        out["cancel_requested"] = True
    if job.get("error"):
        out["error"] = job["error"]
    if job.get("result") is not None:
        out["result"] = job["result"]
    return flask.jsonify(out)


@api.post("/points/<job_id>/cancel")
def cancel(job_id: str):
    job = _state().queue.cancel(job_id)
    if job is None:
        raise ApiError(404, f"unknown point '{job_id}'")
    return flask.jsonify({"id": job_id, "status": job["status"], "cancel_requested": bool(job.get("cancel_requested"))})


@api.get("/health")
def health():
    """Readiness: 503 while the runs a first visit opens are still being loaded; where the app
    expects workers (``llm-maps serve``, LLM_MAPS_EXPECT_WORKERS=1), 503 naming the reason while
    a served run has no live worker; else 200. Probes carry no password, so the body names runs
    only; worker ids (host:pid) and file paths only for a request with the app's credentials."""
    app, st = flask.current_app, _state()
    warm = app.config.get("LLM_MAPS_WARM")
    entries = st.registry.entries()
    body = {"status": "warming" if warm is not None and warm.is_alive() else "ready", "runs": len(entries)}
    if app.config.get("LLM_MAPS_EXPECT_WORKERS"):
        live, broken = _worker_health(st.queue, entries, details=_owner())
        body.update(workers=live, broken=broken)
        dead = [f"run '{run}': {v['reason']}" for run, v in live.items() if not v["live"]]
        if dead and body["status"] == "ready":
            body.update(status="no worker", reason="; ".join(dead))
    if body["status"] != "ready":
        return flask.jsonify(body), 503, {"Retry-After": "1"}
    return flask.jsonify(body)


def _worker_health(queue, entries, *, details: bool) -> tuple[dict, dict]:
    """Each served run's liveness and the runs that cannot be served, with their reasons
    (``details``: worker ids and errors as they are; else counts and public reasons)."""
    try:
        live = queue.run_liveness([e.id for e in entries if e.ok])
    except Exception as exc:  # noqa: BLE001 - the queue's server is down: not ready either
        live = {e.id: {"live": False, "workers": [], "reason": f"job queue unavailable ({type(exc).__name__})"}
                for e in entries if e.ok}
    if not details:
        live = {run: {"live": v["live"], "workers": len(v["workers"]),
                      "reason": v["reason"] and public_reason(v["reason"])} for run, v in live.items()}
    return live, {e.id: (e.error if details else public_error(e)) for e in entries if not e.ok}


@api.get("/runs")
def runs():
    """Every run: its id, its group (a fine-tuning group's name, else null), the model by name
    (and step); the folder and the model's path only for a request with the app's credentials."""
    owner = _owner()
    out = []
    for e in _state().registry.entries():
        item = {"run": e.id, "group": e.group, "ok": e.ok}
        if owner:
            item["path"] = str(e.path)
        if e.ok:
            m = e.manifest
            if owner:
                item["model_path"] = m.get("model")
            item.update(model=model_label(m), step=m.get("step"), created=m.get("created"), counts=m.get("counts"),
                        accuracy=(m.get("scoring") or {}).get("accuracy"),
                        # what that accuracy pools: the splits scored and their scored rows (the Runs page
                        # gives the test accuracy with its interval over tasks)
                        accuracy_splits=(m.get("scoring") or {}).get("splits"),
                        accuracy_n=(m.get("scoring") or {}).get("scored"), layers=m.get("layers"),
                        default_layer=m.get("default_layer"), distance_metric=m.get("distance_metric"),
                        prompt_template=(m.get("prompt_template") or {}).get("name"),
                        views=m.get("views") or ["prompt"],
                        # what a generation's per-token dist is measured against
                        reference="atlas" if (m.get("token_atlas") or {}).get("tokens") else "prompts")
        else:
            item["error"] = e.error
        out.append(item)
    return flask.jsonify({"runs": out})


@api.get("/runs/<run>/examples/<path:example_id>")
def example(run: str, example_id: str):
    st = _state()
    data = st.run_data(st.entry_or_404(run))
    row = data.row_of(example_id)
    if row is None:
        raise ApiError(404, f"unknown example '{example_id}' in run '{run}'")
    rec = data.frame.iloc[int(row)]
    return flask.jsonify({k: _jsonable(v) for k, v in rec.items()})


@api.get("/runs/<run>/points")
def list_points(run: str):
    st = _state()
    entry = st.entry_or_404(run)
    fmt = flask.request.args.get("format", "json")
    if fmt == "json":
        return flask.jsonify({"points": st.points.list(entry.id)})
    if fmt not in EXPORT_FORMATS:
        raise ApiError(422, f"field 'format': unknown format '{fmt}' (json, csv, jsonl)")
    body = export_points(st.points.list(entry.id), fmt)
    return flask.Response(body, mimetype=EXPORT_FORMATS[fmt], headers={
        "Content-Disposition": f'attachment; filename="{entry.id}-points.{fmt}"'})


@api.get("/runs/<run>/points/<point_id>")
def get_point(run: str, point_id: str):
    st = _state()
    point = st.points.get(st.entry_or_404(run).id, point_id)
    if point is None:
        raise ApiError(404, f"unknown point '{point_id}' in run '{run}'")
    return flask.jsonify(point)


@api.delete("/runs/<run>/points/<point_id>")
def delete_point(run: str, point_id: str):
    st = _state()
    if not st.points.delete(st.entry_or_404(run).id, point_id):
        raise ApiError(404, f"unknown point '{point_id}' in run '{run}'")
    return flask.jsonify({"deleted": point_id})


@api.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@api.route("/", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
@api.route("", defaults={"rest": ""}, methods=["GET", "POST", "PUT", "PATCH", "DELETE"], strict_slashes=False)
def unknown(rest: str):  # the bare prefix too: it is the API's, never a page of the Dash app
    raise ApiError(404, f"no such API path '{_state().url_prefix}/{rest}'")
