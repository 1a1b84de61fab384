"""Read-only data access for the dashboard: which runs exist, and each run loaded once.

Runs are read through ``llm_maps.runfolder`` (manifest, Parquet, memory-mapped encodings) and kept
in a bounded LRU cache keyed on the run's path and file stamps, so a re-published run is reloaded.
Nothing here imports torch or the ``pipelines`` package.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from llm_maps.errors import LLMMapsError
from llm_maps.conditions import CONDITIONS_FILE
from llm_maps.runfolder import (ENCODINGS, EXAMPLES, MANIFEST, Run, RunIds, check_run_files, read_manifest,
                                read_result_json, run_group, runs_in)
from dashboard.conditions_data import load_conditions
from llm_maps.falloff import FALLOFF_FILE, clustered_trends, falloff_stats
from llm_maps.neighbours import nearest_train
from llm_maps.tokens import TOKENS_FILE, has_atlas

log = logging.getLogger("llm_maps.dashboard")
CACHE_RUNS = int(os.environ.get("LLM_MAPS_CACHE_RUNS", "4"))
# On-the-fly distances for a layer/metric without stored ones: only when N * N_train * hidden is
# at most this (about a second of numpy on a laptop); larger runs need `llm-maps falloff`.
ONLINE_DISTANCE_LIMIT = float(os.environ.get("LLM_MAPS_ONLINE_DISTANCE_LIMIT", "2e10"))
HOVER_CHARS = 80

CORRECTNESS_NAMES = ["train", "test: correct", "test: wrong", "test: unscored"]


@dataclass(frozen=True)
class RunEntry:
    """One run the app knows about; ``error`` is set when it cannot be read; ``group``: the
    fine-tuning group it belongs to (``runfolder.run_group``), else None."""
    id: str
    path: Path
    error: str | None = None
    manifest: dict | None = field(default=None, compare=False, repr=False)
    group: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class RunRegistry:
    """Runs given explicitly plus the finished (and unfinished) runs found in data folders, those
    of fine-tuning groups in them included (``runfolder.runs_in``)."""

    def __init__(self, runs=(), data_dirs=(), *, ids: RunIds | None = None):
        self.runs = [Path(p) for p in runs]
        self.data_dirs = [Path(p) for p in data_dirs]
        self.ids = ids or RunIds()  # ids stay put while runs come and go (shared with the workers)

    def entries(self) -> list[RunEntry]:
        paths: list[Path] = list(self.runs)
        for root in self.data_dirs:  # unfinished builds show as such, not silently missing
            paths += runs_in(root, unfinished=True)
        out = []
        for run_id, p in self.ids.assign(paths):
            group = run_group(p)
            try:
                manifest = read_manifest(p)
                _checked(str(p), _stamp(p, with_encodings=True))
                out.append(RunEntry(run_id, p, None, manifest, group))
            except LLMMapsError as exc:
                out.append(RunEntry(run_id, p, str(exc), group=group))
        return out

    def groups(self, entries: list[RunEntry] | None = None) -> dict[str, list[RunEntry]]:
        """The fine-tuning groups among the runs: group name -> its runs, by step (readable runs
        first in their order when a step is missing); in the order the groups first appear."""
        folders: dict[Path, list[RunEntry]] = {}
        for e in self.entries() if entries is None else entries:
            if e.group is not None:
                folders.setdefault(e.path.absolute().parent, []).append(e)
        out: dict[str, list[RunEntry]] = {}
        for runs in folders.values():  # two groups of one name in two folders: NAME, NAME (2)
            name, n = runs[0].group or "", 1
            while (name if n == 1 else f"{name} ({n})") in out:
                n += 1
            out[name if n == 1 else f"{name} ({n})"] = runs

        def step(e: RunEntry):
            value = (e.manifest or {}).get("step")
            return (value is None, value if isinstance(value, (int, float)) else 0)

        return {g: sorted(runs, key=step) for g, runs in out.items()}

    def entry(self, run_id: str | None) -> RunEntry | None:
        entries = self.entries()
        if run_id is None:
            return next((e for e in entries if e.ok), entries[0] if entries else None)
        return next((e for e in entries if e.id == run_id), None)

    def load(self, run_id: str | None) -> "RunData":
        """The loaded run, or LLMMapsError with a message fit for a banner. ``RUN::VIEW`` (a page's
        run key, see ``view_key``) is that view of the run."""
        run_id, view = split_key(run_id)
        if view:
            return self.load(run_id).for_view(view)
        entry = self.entry(run_id)
        if entry is None:
            if run_id is None:
                raise LLMMapsError("no runs found: build one with `llm-maps build` or `llm-maps demo`, "
                                   "or pass a run folder to `llm-maps serve`")
            raise LLMMapsError(f"no run named '{run_id}'")
        if entry.error:
            raise LLMMapsError(entry.error)
        with _load_lock(str(entry.path)):  # requests (and warm()) arriving together load it once
            return load_run(str(entry.path), _stamp(entry.path), entry.id)

    def warm(self, prepare=None) -> list[str]:
        """Load the runs a first visit will ask for, so the first page is served from memory: the
        runs given explicitly, else the default one; at most the cache's size. ``prepare(data)``
        builds whatever else a first view needs. Returns the ids of the runs loaded. Never raises:
        a run that fails is logged and shows its banner when a page asks for it."""
        try:
            entries = [e for e in self.entries() if e.ok]
        except Exception as exc:  # noqa: BLE001 - warming is an optimisation
            log.warning("warm-up: listing runs failed: %s", exc)
            return []
        chosen = [e for e in entries if any(e.path == p for p in self.runs)] or entries[:1]
        done = []
        for e in chosen[:CACHE_RUNS]:
            try:
                data = self.load(e.id)
                if prepare is not None:
                    prepare(data)
            except Exception as exc:  # noqa: BLE001
                log.warning("warm-up: run %s: %s", e.id, exc)
                continue
            done.append(e.id)
        return done


_LOAD_LOCKS: dict[str, threading.Lock] = {}
_LOAD_LOCKS_GUARD = threading.Lock()


def _load_lock(path: str) -> threading.Lock:
    with _LOAD_LOCKS_GUARD:
        return _LOAD_LOCKS.setdefault(path, threading.Lock())


def _after_fork_in_child() -> None:
    """A fork (gunicorn --preload) copies locks that another thread, such as a warm-up, may hold
    at that moment and that nothing would then release: the child starts with new locks and an
    empty run cache (a cached run's own lock may be held too)."""
    global _LOAD_LOCKS_GUARD
    _LOAD_LOCKS.clear()
    _LOAD_LOCKS_GUARD = threading.Lock()
    load_run.cache_clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _stamp(path: Path, with_encodings: bool = False) -> tuple:
    out = []
    names = [MANIFEST, EXAMPLES, FALLOFF_FILE, CONDITIONS_FILE, "regions.json", "regions.parquet"]
    if with_encodings:
        try:
            names += sorted(f"{ENCODINGS}/{e.name}" for e in os.scandir(path / ENCODINGS))
        except OSError:
            pass
    for name in names:
        try:
            st = (path / name).stat()
            out.append((name, st.st_mtime_ns, st.st_size))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


@functools.lru_cache(maxsize=256)
def _checked(path: str, stamp: tuple) -> None:
    """``check_run_files`` once per version of a run's files (raises LLMMapsError naming the file;
    a failure is not cached, so a fixed run is seen at once)."""
    check_run_files(path, read_manifest(path))


def _read_atlas_points(path: Path, manifest: dict) -> tuple[np.ndarray, np.ndarray] | None:
    import pandas as pd

    if not has_atlas(manifest):
        return None
    try:
        tokens = pd.read_parquet(path / TOKENS_FILE, columns=["x", "y"])
    except Exception as exc:  # noqa: BLE001 - missing, corrupt or without x/y: the map goes on without them
        log.warning("%s: atlas tokens not drawn (%s: %s)", path / TOKENS_FILE, type(exc).__name__, exc)
        return None
    return (tokens["x"].to_numpy(dtype=np.float32, na_value=np.nan),
            tokens["y"].to_numpy(dtype=np.float32, na_value=np.nan))


def _listed(value) -> list:
    """A list cell (a list, an array, or missing: None, NaN or pd.NA as Arrow lists have it) as a list."""
    import pandas as pd

    return [] if value is None or (np.ndim(value) == 0 and pd.isna(value)) else list(value)


def release_freed_memory() -> None:
    """Give memory freed after a large read back to the system: Arrow's pool, and on glibc the
    C heap (malloc_trim), which otherwise keeps the peak of a load for the life of the process."""
    import ctypes

    import pyarrow as pa

    pa.default_memory_pool().release_unused()
    try:  # the process's own symbols (no ctypes.util.find_library: it starts ldconfig in a child process)
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


# glibc's mallopt parameter for the number of malloc arenas
_M_ARENA_MAX = -8


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """For a long-lived web process, before its threads start: at most ``arenas`` glibc malloc
    arenas (each thread that allocates gets its own arena up to 8 per core, and what a run's load
    in the warming thread freed stays in that arena; with the C library's allocator for Arrow, 2
    arenas hold ~60 MB less at a million rows). A MALLOC_ARENA_MAX set by the user wins. False
    where there is no glibc."""
    import ctypes
    import os

    if os.environ.get("MALLOC_ARENA_MAX"):
        return False
    try:  # the process's own symbols (no ctypes.util.find_library: it starts ldconfig in a child process)
        return bool(ctypes.CDLL(None).mallopt(_M_ARENA_MAX, int(arenas)) == 1)
    except (OSError, AttributeError):  # not glibc
        return False


def own_texts(frame) -> np.ndarray:
    """[rows of ``frame``] each example's own text: its instruction, then its context (a blank line
    between); its templated prompt when it stores neither (``RunData.texts``)."""
    import pandas as pd

    empty = pd.Series([""] * len(frame), index=frame.index, dtype="string")
    instr = frame["instruction"].astype("string").fillna("").str.strip() if "instruction" in frame else empty
    ctx = frame["context"].astype("string").fillna("").str.strip() if "context" in frame else empty
    own = (instr + "\n\n" + ctx).where((instr != "") & (ctx != ""), instr + ctx)
    prompt = frame["prompt"].astype("string").fillna("").str.strip()
    return own.where(own != "", prompt).to_numpy(dtype=object)


def preview(text, chars: int) -> str:
    """``text`` (whitespace-trimmed) up to ``chars`` characters, cut at the last space when there is one
    in its second half, with "…" when anything was cut."""
    text = "" if text is None else str(text).strip()
    if len(text) <= chars:
        return text
    cut = text[:chars]
    space = cut.rfind(" ")
    return (cut[:space] if space > chars // 2 else cut).rstrip() + "…"


@functools.lru_cache(maxsize=CACHE_RUNS)
def load_run(path: str, stamp: tuple, run_id: str) -> "RunData":
    return RunData(Path(path), run_id)


VIEW_SEP = "::"
# Views a page can show besides the prompt map: the completion view (its own encodings, map and
# distances) and the token map (prompts placed on the map fitted with the token atlas).
VIEW_LABELS = {"prompt": "prompt", "completion": "prompt + completion", "tokens": "token map (atlas)"}


def split_key(key: str | None) -> tuple[str | None, str | None]:
    """``"run::completion"`` -> ("run", "completion"); a plain run id -> (id, None)."""
    if key and VIEW_SEP in key:
        run, view = key.rsplit(VIEW_SEP, 1)
        return run, (None if view in ("", "prompt") else view)
    return key, None


def view_key(run_id: str | None, view: str | None) -> str | None:
    """The key pages keep for a view of a run (the URL shows ``run`` and ``view`` separately)."""
    return run_id if not run_id or view in (None, "", "prompt") else f"{run_id}{VIEW_SEP}{view}"


def run_views(manifest: dict) -> list[str]:
    """The views a run can show: prompt, plus completion and tokens when it has them."""
    out = ["prompt"]
    if "completion" in (manifest.get("views") or []) and \
            ((manifest.get("view_settings") or {}).get("completion") or {}).get("projection"):
        out.append("completion")
    if ((manifest.get("token_atlas") or {}).get("projection")):
        out.append("tokens")
    return out


class Categorical:
    """Codes [N] (small ints) and their names."""

    def __init__(self, codes: np.ndarray, names: list[str]):
        self.codes, self.names = codes, names

    @classmethod
    def of(cls, values) -> "Categorical":
        import pandas as pd

        cat = pd.Categorical(pd.Series(values).astype("string").fillna("(none)"))
        dtype = np.uint8 if len(cat.categories) < 256 else np.uint16
        return cls(cat.codes.astype(dtype), [str(c) for c in cat.categories])

    def codes_of(self, names) -> np.ndarray:
        lookup = {n: i for i, n in enumerate(self.names)}
        return np.array([lookup[n] for n in names if n in lookup], dtype=np.int64)


class RunData:
    """One run loaded for the dashboard: typed column arrays plus lazily built extras."""

    def __init__(self, path: Path, run_id: str):
        import pandas as pd

        self.id = self.base_id = run_id
        self.view = "prompt"
        self.run = Run(path, arrow_lists=True)
        self.path = path
        self.manifest = self.run.manifest
        frame = self.run.examples
        self.frame = frame
        self.n = len(frame)
        self.x = frame["x"].to_numpy(dtype=np.float32, na_value=np.nan)  # [N]
        self.y = frame["y"].to_numpy(dtype=np.float32, na_value=np.nan)  # [N]
        self.score = pd.to_numeric(frame["score"], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        self.correct = frame["correct"].astype("boolean")  # nullable [N]
        self.dist = pd.to_numeric(frame["dist_to_train"], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        out = frame["output"].astype("string")
        self.out_len = out.str.len().to_numpy(dtype=np.float32, na_value=np.nan)
        self.is_train = (frame["split"] == "train").to_numpy()
        self.cats = {c: Categorical.of(frame[c]) for c in ("split", "domain", "task", "category")}
        for c in self.cats:  # a code per row, not a string: ~70 MB less for a million rows
            frame[c] = frame[c].astype("category")
        self.has_scores = bool(self.correct.notna().any())
        corr = np.where(self.is_train, 0, 3).astype(np.uint8)
        scored = self.correct.notna().to_numpy()
        cvals = self.correct.fillna(False).to_numpy(dtype=bool)
        corr[~self.is_train & scored & cvals] = 1
        corr[~self.is_train & scored & ~cvals] = 2
        self.cats["correct"] = Categorical(corr, list(CORRECTNESS_NAMES))
        self._lock = threading.RLock()  # lazily built values may use other lazily built values
        self._lazy: dict = {}
        self._shared: dict = {}  # built once per run and shared by its views (ViewData copies the reference)
        self._shared_lock = threading.Lock()
        self.falloff_file, self.falloff_error = _read_falloff(path)
        release_freed_memory()  # what reading the Parquet file needed and no longer does

    # --- lazily built, cached per run ------------------------------------------------------
    def _cached(self, key, build):
        with self._lock:
            if key not in self._lazy:
                self._lazy[key] = build()
            return self._lazy[key]

    def _shared_cached(self, key, build):
        """``build()`` once per run, shared by its views (``_cached`` is per view)."""
        with self._shared_lock:
            if key not in self._shared:
                self._shared[key] = build()
            return self._shared[key]

    @property
    def texts(self) -> np.ndarray:
        """[N] each example's own text, what people scan: its instruction, then its context (a blank
        line between); the templated prompt only when the run stores neither (e.g. lm-eval runs,
        whose prompt is the task's own text). The exact prompt stays in the drill-down."""
        return self._cached("texts", lambda: own_texts(self.frame))

    def text_of(self, row: int) -> str:
        """One example's own text (``texts[row]``), without building ``texts`` for every row."""
        built = self._lazy.get("texts")
        if built is not None:
            return str(built[row])
        import pandas as pd

        # one row built from scalars: ``frame.iloc[[row]]`` would copy whole Arrow columns
        one = pd.DataFrame({c: pd.Series([self.frame[c].iloc[int(row)]], dtype="string")
                            for c in ("instruction", "context", "prompt") if c in self.frame})
        return str(own_texts(one)[0])

    def text_preview(self, row: int, chars: int = 600) -> str:
        """The start of an example's own text (``texts``), cut at a word with "…" when longer."""
        return preview(self.text_of(row), chars)

    @property
    def hover(self) -> np.ndarray:
        """[N] hover strings: the first line of the example's own text (``texts``; shortened,
        HTML-escaped) and the key fields."""
        def build():
            import html

            import pandas as pd

            first = pd.Series(self.texts, dtype="string").str.split("\n", n=1).str[0]
            short = first.str.slice(0, HOVER_CHARS)
            short = short.where(first.str.len() <= HOVER_CHARS, short + "…").map(lambda t: html.escape(t, quote=False))
            dist = pd.Series(self.dist).map(lambda v: "" if v != v else f" · dist {v:.4g}")
            score = pd.Series(self.score).map(lambda v: "" if v != v else f" · score {v:.2f}")
            text = (short + "<br>" + self.frame["task"].astype("string").fillna("").map(lambda t: html.escape(t, quote=False))
                    + " · " + self.frame["split"].astype("string").fillna("") + dist.to_numpy() + score.to_numpy())
            return text.to_numpy(dtype=object)
        return self._cached("hover", build)

    def atlas_points(self) -> tuple[np.ndarray, np.ndarray] | None:
        """[T] x and y (float32) of the run's token atlas on the token map (tokens.parquet), read once
        per run and shared by its views; None when the run has no atlas or its tokens are not placed
        (or the file cannot be read: logged, the map goes on without them)."""
        return self._shared_cached("atlas_points", lambda: _read_atlas_points(self.path, self.manifest))

    def conditions(self):
        """The run's conditions (conditions.parquet joined with the examples, see
        ``dashboard.conditions_view.ConditionsData``), read once per run and shared by its views:
        (data, None); (None, None) when the run has none; (None, one-line message) when the file
        cannot be read (pages show the message, never fail)."""
        def build():
            try:
                return load_conditions(self), None
            except LLMMapsError as exc:
                return None, str(exc)
            except Exception as exc:  # noqa: BLE001 - a corrupt file can raise anything
                return None, f"{self.path / CONDITIONS_FILE}: cannot be read ({type(exc).__name__}: {exc})"
        return self._shared_cached("conditions", build)

    def rows_of(self, ids) -> dict[str, int]:
        """example_id -> row, for those of ``ids`` in the run: one vectorised pass over the id column
        (~10 ms at a million rows). No index is kept: a dict over a million ids holds ~150 MB."""
        import pyarrow as pa
        import pyarrow.compute as pc

        want = list(dict.fromkeys(str(i) for i in ids))
        if not want:
            return {}
        col = self._cached("ids", lambda: pa.array(self.frame["example_id"].astype("str"), from_pandas=True))
        hit = np.flatnonzero(pc.is_in(col, value_set=pa.array(want, type=col.type)).to_numpy(zero_copy_only=False))
        out: dict[str, int] = {}
        for row, example_id in zip(hit.tolist(), col.take(pa.array(hit)).to_pylist()):
            out.setdefault(example_id, row)  # the first row of an id, as a dict over the column kept it
        return out

    def row_of(self, example_id) -> int | None:
        """The row of one example_id, or None when it is not in the run."""
        return None if example_id is None else self.rows_of([example_id]).get(str(example_id))

    def search_mask(self, text: str) -> np.ndarray:
        """[N] bool: prompts containing ``text`` (case-insensitive, literal)."""
        text = (text or "").strip()
        key = ("search", text.lower())
        hits = self._lazy.get(key)
        if hits is None:
            hits = self.frame["prompt"].astype("string").str.contains(text, case=False, regex=False) \
                .fillna(False).to_numpy(dtype=bool)
            with self._lock:
                if sum(1 for k in self._lazy if k[0] == "search") > 16:
                    for k in [k for k in self._lazy if k[0] == "search"]:
                        del self._lazy[k]
                self._lazy[key] = hits
        return hits

    @property
    def views(self) -> list[str]:
        return run_views(self.manifest)

    def for_view(self, view: str | None) -> "RunData":
        """This run as seen in ``view`` (prompt: itself), built once."""
        if view in (None, "", "prompt"):
            return self
        if view not in self.views:
            raise LLMMapsError(f"run '{self.base_id}' has no {view} view (it has: {', '.join(self.views)})")
        return self._cached(("view", view), lambda: ViewData(self, view))

    def encodings(self, layer: int) -> np.ndarray:
        """Memory-mapped encodings of one stored layer of this view."""
        return self.run.encodings(layer)

    @property
    def metric(self) -> str:
        return str(self.manifest.get("distance_metric", "cosine"))

    @property
    def layers(self) -> list[int]:
        return self.run.layers

    @property
    def default_layer(self) -> int:
        return self.run.default_layer

    def n_train(self) -> int:
        return int(self.is_train.sum())

    def distances_available(self, layer: int, metric: str) -> bool:
        if int(layer) == self.default_layer and metric == self.metric:
            return True
        return self.n * self.n_train() * self._hidden() <= ONLINE_DISTANCE_LIMIT

    def _hidden(self) -> int:
        try:
            return int(self.encodings(self.default_layer).shape[1])
        except LLMMapsError:
            return 1 << 30

    def distances(self, layer: int | None = None, metric: str | None = None) -> np.ndarray:
        """[N] distance to the nearest train example (another one for train rows) in ``layer``.

        The stored ``dist_to_train`` for the run's own layer and metric; otherwise computed exactly
        from the memory-mapped encodings when the run is small enough, else LLMMapsError."""
        layer = self.default_layer if layer is None else int(layer)
        metric = metric or self.metric
        if layer == self.default_layer and metric == self.metric:
            return self.dist
        if not self.distances_available(layer, metric):
            raise LLMMapsError(f"distances for layer {layer} ({metric}) are not stored and the run is too "
                               f"large to compute them here: run `llm-maps falloff {self.path}`")
        return self._cached(("dist", layer, metric),
                            lambda: nearest_train_distance(self.encodings(layer), self.is_train, metric))

    def neighbours(self, row: int) -> list[tuple[int, float | None]]:
        """The stored k nearest training examples of ``row``: (row index, distance)."""
        ids = _listed(self.frame["nn_train_ids"].iloc[row])
        dists = _listed(self.frame["nn_train_dists"].iloc[row]) if "nn_train_dists" in self.frame else []
        dists = dists if len(dists) == len(ids) else [None] * len(ids)
        index = self.rows_of(ids)
        return [(index[str(i)], None if d is None else float(d)) for i, d in zip(ids, dists) if str(i) in index]

    def option_names(self, column: str) -> list[str]:
        return self.cats[column].names


class ViewData(RunData):
    """A run seen in another view: the same examples, with the view's map coordinates, distances and
    neighbours in the columns pages read (``x``, ``y``, ``dist_to_train``, ``nn_train_ids``, ...).

    completion: encodings/completion, x_completion, dist_to_train_completion, its own layers.
    tokens: the prompts on the token map (x_tokens, y_tokens); distances as in the prompt view.
    """

    SUFFIXED = ("x", "y", "dist_to_train", "nn_train_ids", "nn_train_dists")

    def __init__(self, base: RunData, view: str):  # noqa: D107 - no RunData.__init__: nothing is re-read
        import pandas as pd

        self.__dict__.update({k: v for k, v in base.__dict__.items() if k not in ("_lazy", "_lock")})
        self.view, self.base_id, self.id = view, base.id, view_key(base.id, view)
        self._lock = threading.RLock()
        self._lazy = {}
        frame = base.frame.copy()
        cols = ("x", "y") if view == "tokens" else self.SUFFIXED
        for col in cols:
            if f"{col}_{view}" in frame.columns:
                frame[col] = frame[f"{col}_{view}"]
        self.frame = frame
        self.x = frame["x"].to_numpy(dtype=np.float32, na_value=np.nan)
        self.y = frame["y"].to_numpy(dtype=np.float32, na_value=np.nan)
        self.dist = pd.to_numeric(frame["dist_to_train"], errors="coerce").to_numpy(dtype=np.float32, na_value=np.nan)
        if view == "completion":
            self.settings = (self.manifest.get("view_settings") or {})["completion"]
            self.falloff_file, self.falloff_error = None, None  # falloff.json holds the prompt view

    @property
    def layers(self) -> list[int]:
        return [int(k) for k in self.settings["layers"]] if self.view == "completion" else self.run.layers

    @property
    def default_layer(self) -> int:
        return int(self.settings["default_layer"]) if self.view == "completion" else self.run.default_layer

    def encodings(self, layer: int) -> np.ndarray:
        if self.view != "completion":
            return self.run.encodings(layer)
        if int(layer) not in self.layers:
            raise LLMMapsError(f"{self.path}: layer {layer} is not stored in the completion view ({self.layers})")
        path = self.path / "encodings" / "completion" / f"layer_{int(layer)}.npy"
        try:
            return np.load(path, mmap_mode="r")
        except FileNotFoundError:
            raise LLMMapsError(f"{path}: missing") from None
        except ValueError as exc:
            raise LLMMapsError(f"{path}: corrupt encodings ({exc})") from None


def nearest_train_distance(enc: np.ndarray, is_train: np.ndarray, metric: str) -> np.ndarray:
    """[N] exact distance to the nearest train row (excluding the row itself), float32 —
    ``llm_maps.neighbours.nearest_train``, the same code the pipelines use."""

    return nearest_train(enc, is_train, k=1, metric=metric)[0].astype(np.float32)


def _read_falloff(path: Path) -> tuple[dict | None, str | None]:
    data, error = read_result_json(path / FALLOFF_FILE, "falloff statistics", {"variants": list})
    return data, error and f"{error}; computing them on the fly"


def falloff_variant(falloff: dict | None, layer: int, metric: str) -> dict | None:
    """The variant of a falloff.json for this layer and metric, if there is one."""
    for v in (falloff or {}).get("variants", []):
        if int(v.get("layer", -1)) == int(layer) and v.get("metric") == metric:
            return v
    return None


def falloff_for(data: RunData, *, layer: int | None = None, metric: str | None = None, n_bins: int = 5,
                tasks: list[str] | None = None) -> tuple[dict | None, str]:
    """Falloff statistics to draw and where they came from.

    Uses falloff.json when it holds this layer/metric with the same bins and task-clustered trends
    and no task filter is set; otherwise ``llm_maps.falloff.falloff_stats`` on the test rows (trends
    task-clustered). (None, reason) when impossible."""

    layer = data.default_layer if layer is None else int(layer)
    metric = metric or data.metric
    if not data.has_scores:
        return None, "no scores yet"
    variant = falloff_variant(data.falloff_file, layer, metric)
    if variant is not None and not tasks and int(data.falloff_file.get("n_bins", -1)) == int(n_bins) \
            and clustered_trends(variant["stats"]):  # (an older file's trends are recomputed, task-clustered)
        return variant["stats"], f"from {FALLOFF_FILE}"
    try:
        dist = data.distances(layer, metric)
    except LLMMapsError as exc:
        return None, str(exc)
    sel = ~data.is_train & data.correct.notna().to_numpy()
    if tasks:
        sel &= np.isin(data.cats["task"].codes, data.cats["task"].codes_of(tasks))
    key = ("falloff", layer, metric, int(n_bins), tuple(sorted(tasks or ())))
    stats = data._cached(key, lambda: falloff_stats(
        dist[sel], data.correct.to_numpy(dtype=object, na_value=None)[sel],
        data.frame["domain"].astype(str).to_numpy()[sel], n_bins=int(n_bins),
        tasks=data.frame["task"].astype(str).to_numpy()[sel]))
    return stats, "computed on the fly"
