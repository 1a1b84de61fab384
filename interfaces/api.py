"""The Python API: open a run in a notebook, read it, analyse it, draw it, compare runs, show the
dashboard inline, and run the model stages.

    import llm_maps

    run = llm_maps.open_run("data/runs/demo")
    run.examples                          # pandas DataFrame, one row per example
    run.findings()["verdict"]             # the findings.json structure (typed: FindingsFile)
    run.falloff_figure()                  # the Falloff page's Plotly figure
    llm_maps.compare([run, "data/runs/demo-ft/step-000096"])["task_gain"]["verdict"]
    run.show()                            # the dashboard inline in Jupyter

Everything here composes what the command line and the dashboard already do: statistics from
the core (``llm_maps.findings``, ``llm_maps.comparison``), figures from ``dashboard`` (the same
builders the pages call), model stages from ``pipelines`` through the commands' own handlers and
typed configs (``llm_maps.stages``). This module is on the top layer; ``llm_maps`` re-exports its
public names lazily. Importing it imports neither dash nor torch: the dashboard is imported when a
figure is asked for, the model stack only inside ``build``, ``score``, ``atlas`` and ``finetune``,
so a view-only install (``pip install llm-maps``) reads, analyses and draws runs.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence, Union, cast

import numpy as np

from llm_maps.contract import FalloffFile, FindingsFile
from llm_maps.errors import LLMMapsError
from dashboard.app import create_app
from dashboard.compare_figures import falloff_overlay_figure, loss_figure, scaling_figure
from dashboard.data import _stamp, load_run
from dashboard.falloff_view import falloff_view
from dashboard.figures import view_figure
from dashboard.findings_view import figures
from dashboard.regions_view import add_region_layer, regions_of
from interfaces.cli.model import COMMANDS
from llm_maps.comparison import compare_runs
from llm_maps.config import option_of
from llm_maps.falloff import FALLOFF_FILE, clustered_trends
from llm_maps.findings import DEFAULT_CONTRAST, FORMAT_VERSION, findings_run, read_findings, run_views, view_encodings
from llm_maps.regions import read_regions, run_regions
from llm_maps.runfolder import Run as _RunFolder, runs_in
from llm_maps.stages import STAGES
from pipelines.falloff_run import falloff_run

if TYPE_CHECKING:
    import pandas as pd
    import plotly.graph_objects as go

    from llm_maps.contract import RegionsFile

__all__ = ["open_run", "Run", "compare", "compare_figures", "show", "Dashboard", "build", "score", "atlas",
           "finetune", "RunLike"]

RunLike = Union["Run", _RunFolder, str, "os.PathLike[str]"]
"""A run: a ``Run``, or the path of a run folder."""

_METRICS = ("cosine", "euclidean")


# ================================================================================ reading a run

def open_run(path: RunLike) -> "Run":
    """Open a finished run folder read-only (``llm-maps build`` wrote it).

    Args:
        path: the run folder (``data/runs/demo``), or a ``Run`` (returned as it is).

    Returns:
        The run. Its manifest is read and checked now; examples and encodings when first used.

    Raises:
        LLMMapsError: one line naming the file and field at fault (no manifest, a run still being
            built, a newer format than this version reads).
    """
    if isinstance(path, Run):
        return path
    if isinstance(path, _RunFolder):
        return Run(path.path)
    return Run(os.fspath(path))


def _as_run(run: RunLike) -> "Run":
    return open_run(run)


class Run(_RunFolder):
    """One run folder, read-only: its manifest, examples, encodings, statistics and figures.

    Open one with ``open_run(path)``. Nothing is computed when it opens; each method reads what it
    needs (memory-mapped where it can) and computes what the run does not store.

    Attributes:
        path: the run folder.
        manifest: ``manifest.json`` (typed: ``llm_maps.contract.Manifest``; every key is described in
            the run-folder contract, docs/run-folder.md).
    """

    def __repr__(self) -> str:
        counts: dict[str, Any] = dict(self.manifest.get("counts", {}))
        return (f"Run({str(self.path)!r}: {self.manifest.get('model')}, {counts.get('examples', '?')} examples, "
                f"layers {self.layers})")

    # --------------------------------------------------------------------------- data
    @property
    def examples(self) -> "pd.DataFrame":
        """``examples.parquet`` as a pandas DataFrame, one row per example (read once).

        The contract's columns (``example_id``, ``split``, ``task``, ``category``, ``domain``,
        ``prompt``, ``reference``, ``output``, ``score``, ``correct``, ``x``, ``y``,
        ``dist_to_train``, ``nn_train_ids``) plus whatever the stages added (e.g. ``first_entropy``
        after ``score``, ``x_completion`` with the completion view). Row i is row i of every
        encodings array.
        """
        frame: pd.DataFrame = super().examples
        return frame

    @property
    def views(self) -> list[str]:
        """The encoded views: ``"prompt"``, then those ``manifest.views`` lists (e.g.
        ``"completion"``), then ``"tokens"`` when the run has a token atlas."""

        out = run_views(self.manifest)
        if (self.manifest.get("token_atlas") or {}) and "tokens" not in out:
            out.append("tokens")
        return out

    def view_layers(self, view: str = "prompt") -> list[int]:
        """The layers stored for ``view`` (the completion view may store fewer than the prompt)."""
        self._check_view(view)
        if view == "completion":
            settings = (self.manifest.get("view_settings") or {}).get("completion") or {}
            if settings.get("layers"):
                return [int(k) for k in settings["layers"]]
        if view == "tokens":
            atlas = self.manifest.get("token_atlas") or {}
            return sorted({int(k) for k in [atlas.get("map_layer", self.default_layer), *(atlas.get("layers") or [])]})
        return self.layers

    def _check_view(self, view: str) -> None:
        if view not in self.views:
            raise LLMMapsError(f"{self.path}: the run has no view '{view}' (views: {', '.join(self.views)})")

    def encodings(self, layer: int | None = None, view: str = "prompt") -> np.ndarray:
        """One layer's encodings, memory-mapped (nothing is read until used).

        Args:
            layer: a stored layer (``hidden_states`` index; default: the run's default layer, for the
                completion view its own default, for the token atlas its map layer).
            view: ``"prompt"`` (the state at the last prompt token, or an appended EOS),
                ``"completion"`` (prompt + completion + EOS), or ``"tokens"`` (the token atlas).

        Returns:
            float16 ``[N, hidden]`` (row i = example i of ``examples``); for ``"tokens"``
            ``[T, hidden]``, row j = row j of the run's ``tokens.parquet``.
        """
        if view == "prompt":
            return super().encodings(layer)
        self._check_view(view)
        layers = self.view_layers(view)
        if layer is None:
            if view == "completion":
                settings = (self.manifest.get("view_settings") or {}).get("completion") or {}
                layer = int(settings.get("default_layer", layers[-1]))
            else:
                layer = int((self.manifest.get("token_atlas") or {}).get("map_layer", layers[0]))
        if int(layer) not in layers:
            raise LLMMapsError(f"{self.path}: layer {layer} is not stored in the {view} view (stored: {layers})")

        return view_encodings(self, view, int(layer))

    # --------------------------------------------------------------------------- statistics
    def findings(self, *, layer: int | None = None, metric: str | None = None, view: str = "prompt",
                 centred: bool = False, contrast: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                 split: str = "test", robustness: bool = True, condition: str | None = None,
                 stored: bool = True, write: bool = False, progress: bool = False) -> FindingsFile:
        """The findings (``llm-maps findings``): does accuracy fall off more steeply with distance to
        train in one domain than in another? Slopes per domain, the contrast in its pooled,
        within-task and between-task parts, AUROC, the robustness table and a plain verdict.

        Args:
            layer: stored layer of the distances (default: the run's default layer).
            metric: ``"cosine"`` or ``"euclidean"`` (default: the run's metric).
            view: the encodings' view (``"prompt"``, ``"completion"``).
            centred: distances on train-mean-centred encodings.
            contrast: two domains ``(A, B)``; the hypothesis is that A falls off more steeply
                (default ``("Chollet", "Reasoning")``).
            n_boot: bootstrap replicates and permutations (tasks are resampled).
            seed: resampling seed.
            split: the rows analysed.
            robustness: also the contrast in every stored layer, metric and view, raw and centred.
            condition: correctness under a condition of ``conditions.parquet`` (e.g. ``"cot"``).
            stored: return ``findings.json`` when it holds exactly this variant (no computation).
            write: write the result to the run's ``findings.json`` (as the command does).
            progress: show a progress bar over the robustness variants.

        Returns:
            The structure of ``findings.json`` (``llm_maps.contract.FindingsFile``): ``verdict``,
            ``verdict_detail``, ``contrast``, ``domains``, ``robustness``, ``notes``, ...
        """

        layer = self.default_layer if layer is None else int(layer)
        metric = metric or str(self.manifest.get("distance_metric", "cosine"))
        pair = tuple(contrast or DEFAULT_CONTRAST)
        if stored and not write and condition is None:
            saved, _ = read_findings(self.path)
            if saved is not None and _findings_match(saved, layer=layer, metric=metric, view=view, centred=centred,
                                                     contrast=pair, n_boot=n_boot, seed=seed, split=split,
                                                     robustness=robustness):
                return cast(FindingsFile, saved)
        result = findings_run(self.path, layer=layer, metric=metric, view=view, centred=centred, contrast=pair,
                              n_boot=n_boot, seed=seed, split=split, robustness=robustness, write=write,
                              progress=progress, run=self, condition=condition)
        return cast(FindingsFile, result)

    def falloff(self, *, n_bins: int = 5, layers: Sequence[int] | None = None,
                metrics: Sequence[str] = _METRICS, split: str = "test", condition: str | None = None,
                stored: bool = True, write: bool = False) -> FalloffFile:
        """Accuracy against distance to train (``llm-maps falloff``): equal-count distance bins with
        Wilson 95 % intervals and a task-clustered logistic trend, overall and per domain, for each
        stored layer and metric.

        Args:
            n_bins: equal-count bins.
            layers: stored layers (default: all).
            metrics: distance metrics.
            split: the rows binned.
            condition: correctness under a condition of ``conditions.parquet``.
            stored: return ``falloff.json`` (its variants of ``layers`` and ``metrics``) when it
                holds them with these bins.
            write: write ``falloff.json`` (as the command does).

        Returns:
            The structure of ``falloff.json`` (``llm_maps.contract.FalloffFile``): ``variants``, one
            per layer and metric, each with ``stats``: ``"all"`` and each domain -> bins and trend.
        """
        wanted = [(int(k), str(m)) for k in (layers or self.layers) for m in metrics]
        if stored and not write and condition is None:
            saved = _stored_falloff(self, n_bins=n_bins, split=split, wanted=wanted)
            if saved is not None:
                return saved

        result = falloff_run(self.path, n_bins=n_bins, layers=layers, metrics=metrics, split=split,
                             condition=condition, write=write)
        return cast(FalloffFile, result)

    def regions(self, *, layer: int | None = None, view: str = "prompt", min_size: int | None = None, seed: int = 0,
                stored: bool = True, write: bool = False) -> "RegionsFile":
        """Regions (``llm-maps regions``): dense groups of examples in the full encoding space
        (HDBSCAN on a PCA of the centred encodings), each with its tasks, accuracy against the
        accuracy its tasks predict (task-clustered interval, q-value), coverage by train examples,
        keywords and its most central instruction.

        Args:
            layer: the stored layer clustered (default: the view's default layer).
            view: ``"prompt"`` or another encoded view.
            min_size: the smallest region (default: 1 % of the examples, 10 to 200).
            seed: seed of the PCA sample, the bootstrap and the sign flips.
            stored: return ``regions.json`` when it holds regions found with these settings.
            write: write ``regions.json`` and ``regions.parquet`` into the run (as the command does).

        Returns:
            The structure of ``regions.json`` (``llm_maps.contract.RegionsFile``): ``regions`` (one
            row per region), ``worse`` (regions worse than their tasks predict), ``uncovered``, ...
            ``map(regions=True)`` draws them.
        """

        if stored and not write:
            saved, _ = read_regions(self.path)
            params = (saved or {}).get("params") or {}
            if saved is not None and saved.get("view", "prompt") == view and params.get("seed") == seed \
                    and (layer is None or int(saved.get("layer", -1)) == int(layer)) \
                    and (min_size is None or params.get("min_size") == min_size):
                return cast("RegionsFile", saved)
        return cast("RegionsFile", run_regions(self.path, layer=layer, view=view, min_size=min_size, seed=seed,
                                               write=write))

    # --------------------------------------------------------------------------- figures
    def _data(self, view: str = "prompt") -> Any:
        """The dashboard's loaded form of this run (cached per file state, as the web process does)."""

        data = load_run(str(self.path), _stamp(self.path), self.name)
        if view in (None, "", "prompt"):
            return data
        self._check_view(view)
        return data.for_view(view)

    def map(self, *, colour: str = "split", view: str = "prompt", layer: int | None = None,
            split: Sequence[str] | None = None, domain: Sequence[str] | None = None,
            task: Sequence[str] | None = None, search: str = "", selected: int | None = None,
            regions: bool = False, dark: bool = False) -> "go.Figure":
        """The Map page's figure: every example on the 2-D map (WebGL), coloured and filtered as on
        the page; above 200,000 points in view, a fixed sample over a density layer.

        Args:
            colour: ``split``, ``correct``, ``score``, ``dist`` (distance to train), ``domain``,
                ``task``, ``category`` or ``out_len``.
            view: ``"prompt"``, ``"completion"`` or ``"tokens"`` (the token map).
            layer: the layer whose distances ``colour="dist"`` shows (default: the map's).
            split: keep these splits (default: all).
            domain: keep these domains.
            task: keep these tasks.
            search: keep prompts containing this text.
            selected: row of an example whose nearest train examples are drawn as lines.
            regions: outline the run's regions (``regions.json``: ``llm-maps regions`` or
                ``regions(write=True)`` writes it), as the Map page's Regions layer does.
            dark: plotly's dark template.

        Returns:
            A ``plotly.graph_objects.Figure``.
        """

        data = self._data(view)
        fig = view_figure(data, colour=colour, layer=layer, split=split, domain=domain, task=task, search=search,
                          selected=selected, dark=dark)
        if regions:

            found, error = regions_of(data)
            if found is None:
                raise LLMMapsError(error or f"{self.path}: no regions.json (run `llm-maps regions {self.path}`, or "
                                            "`run.regions(write=True)`)")
            add_region_layer(fig, data, dark=dark)
        return fig

    def falloff_figure(self, *, layer: int | None = None, metric: str | None = None, n_bins: int = 5,
                       domains: Sequence[str] | None = None, tasks: Sequence[str] | None = None,
                       layout: str = "overlay", view: str = "prompt", dark: bool = False) -> "go.Figure":
        """The Falloff page's figure: accuracy per equal-count distance bin with Wilson 95 %
        intervals, overall and per domain (from ``falloff.json`` when it holds the variant, else
        computed).

        Args:
            layer: stored layer of the distances.
            metric: ``"cosine"`` or ``"euclidean"``.
            n_bins: equal-count bins.
            domains: draw only these domains (default: all, and the overall curve).
            tasks: use only these tasks' examples.
            layout: ``"overlay"`` (one panel) or ``"side"`` (a panel per group).
            view: ``"prompt"`` or ``"completion"``.
            dark: plotly's dark template.

        Raises:
            LLMMapsError: the run has no scores, or the distances cannot be measured.
        """

        fig, stats, _, source = falloff_view(self._data(view), layer=layer, metric=metric, n_bins=n_bins,
                                             domains=list(domains or []), tasks=list(tasks or []), mode=layout,
                                             dark=dark)
        if stats is None:
            raise LLMMapsError(f"{self.path}: no falloff to draw ({source})")
        return fig

    def findings_figures(self, *, dark: bool = False, **options: Any) -> "dict[str, go.Figure]":
        """The Findings page's figures of ``findings(**options)``.

        Args:
            dark: plotly's dark template.
            **options: the options of ``findings`` (``layer``, ``metric``, ``contrast``, ...).

        Returns:
            ``{"findings-curves": ..., "findings-contrast": ..., "findings-detector": ...,
            "findings-confidence": ...}`` (the last only when the run has first-token statistics):
            fitted curves on the percentile scale with bands, the contrast's parts with their
            intervals, AUROC and risk-coverage, confidence against distance.
        """

        return figures(dict(self.findings(**options)), dark=dark)

    # --------------------------------------------------------------------------- the dashboard
    def show(self, **options: Any) -> "Dashboard":
        """Show the dashboard on this run inline in Jupyter (``show(self, **options)``)."""
        return show(self, **options)


def _findings_match(saved: dict[str, Any], *, layer: int, metric: str, view: str, centred: bool,
                    contrast: tuple[str, ...], n_boot: int, seed: int, split: str, robustness: bool) -> bool:
    """Whether a stored findings.json is the variant asked for (and, when asked, holds the table)."""
    con = saved.get("contrast") or {}
    return (saved.get("format_version") == FORMAT_VERSION and "condition" not in saved
            and int(saved.get("layer", -1)) == layer and saved.get("metric") == metric
            and saved.get("view", "prompt") == view and bool(saved.get("centred")) == bool(centred)
            and (con.get("a"), con.get("b")) == tuple(contrast) and saved.get("bootstrap") == n_boot
            and saved.get("seed") == seed and saved.get("split", "test") == split
            and (bool(saved.get("robustness")) or not robustness))


def _stored_falloff(run: Run, *, n_bins: int, split: str, wanted: list[tuple[int, str]]) -> FalloffFile | None:
    """falloff.json restricted to the variants ``wanted``, when it holds them all with these bins
    and task-clustered trends (an older file's trends are recomputed)."""
    import json


    try:
        saved = json.loads((run.path / FALLOFF_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(saved.get("variants"), list):
        return None
    if int(saved.get("n_bins", -1)) != int(n_bins) or saved.get("split", "test") != split:
        return None
    by_key = {(int(v.get("layer", -1)), v.get("metric")): v for v in saved["variants"] if isinstance(v, dict)}
    if any(k not in by_key or not clustered_trends(by_key[k].get("stats") or {}) for k in wanted):
        return None
    return cast(FalloffFile, {**saved, "variants": [by_key[k] for k in wanted]})


# ================================================================================ several runs

def compare(runs: Iterable[RunLike], *, axis: str | None = None, n_bins: int = 5, cka: str = "use",
            cka_between: str = "all", movers: int = 20, progress: bool = False) -> dict[str, Any]:
    """Compare runs over the same examples (``llm-maps compare``): model sizes, checkpoints of a
    fine-tune, or the same model's layers.

    Args:
        runs: two or more runs (``Run`` objects or paths), matched by ``example_id`` and a hash of
            the prompt.
        axis: ``"step"``, ``"n_params"`` or ``"order"`` (default: step when every run has one, else
            the parameter count, else the order given).
        n_bins: bins of the falloff curves (on the percentile-of-distance scale).
        cka: ``"use"`` (the runs' ``cka.json`` caches, computing what is missing), ``"recompute"``
            or ``"skip"``.
        cka_between: ``"all"`` layer pairs, or fewer (see ``llm-maps compare --help``).
        movers: how many of the examples whose nearest train examples changed most to list.
        progress: show progress bars.

    Returns:
        What ``llm-maps compare --json`` writes: ``runs``, ``tasks`` (accuracy per run and curve
        class), ``domains``, ``task_gain`` (train tasks vs held-out tasks, with its verdict),
        ``falloff``, ``alignment``, ``moved``, ``cka``.

    Raises:
        LLMMapsError: the runs do not hold the same examples (one line says how they differ).
    """

    result: dict[str, Any] = compare_runs([_as_run(r) for r in runs], axis=axis, n_bins=n_bins, cka=cka, cka_between=cka_between,
                        movers=movers, progress=progress)
    return result


def compare_figures(result: dict[str, Any], *, tasks: Sequence[str] = (), dark: bool = False) -> "dict[str, go.Figure]":
    """The Compare page's figures of a ``compare`` result.

    Args:
        result: what ``compare`` returned.
        tasks: tasks to draw beside the domains on the accuracy figure.
        dark: plotly's dark template.

    Returns:
        ``{"accuracy": ..., "falloff": ...}``, plus ``"loss"`` for a fine-tuning group's runs.
    """

    out = {"accuracy": scaling_figure(result, tasks=tasks, dark=dark), "falloff": falloff_overlay_figure(result, dark=dark)}
    if result.get("loss_curve"):
        out["loss"] = loss_figure(result["loss_curve"], dark=dark)
    return out


# ================================================================================ the dashboard in a notebook

@dataclass
class Dashboard:
    """A dashboard ``show`` started: its address, and ``stop()`` to close it."""
    url: str
    _close: Callable[[], None] = field(repr=False)

    def stop(self) -> None:
        """Stop serving (the cell's frame goes blank)."""
        self._close()


def _free_port(host: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _in_jupyter() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show(runs: RunLike | Iterable[RunLike], *, mode: str = "inline", height: int = 720, port: int | None = None,
         host: str = "127.0.0.1", block: bool = True) -> Dashboard:
    """Show the dashboard on ``runs``: inline in a Jupyter cell (Dash's Jupyter mode), else served
    at an address printed here.

    In Jupyter the dashboard runs in a thread of the kernel and is drawn in the cell's output; with
    ``block`` (the default) the call returns when the cell is interrupted (the stop button, or
    Ctrl-C outside Jupyter), and serving stops then. ``block=False`` returns at once and keeps
    serving until ``Dashboard.stop()`` (or the kernel ends). The playground needs a worker
    (``llm-maps worker RUN`` beside it, with the model stack installed).

    Args:
        runs: a run or several (``Run`` objects or paths).
        mode: Dash's Jupyter display mode: ``"inline"`` (in the cell), ``"external"`` (a link) or
            ``"tab"``.
        height: the inline frame's height in pixels.
        port: the port to serve on (default: a free one).
        host: the address to listen on.
        block: wait until interrupted (see above).

    Returns:
        The ``Dashboard`` (its ``url``; ``stop()``).
    """
    import threading
    import time


    many = [runs] if isinstance(runs, (Run, _RunFolder, str, os.PathLike)) else list(runs)
    paths = [_as_run(r).path for r in many]
    port = port or _free_port(host)
    app = create_app(paths, [], warm=False)
    url = f"http://{host}:{port}/"
    if _in_jupyter():
        app.run(jupyter_mode=mode, jupyter_height=height, host=host, port=port)

        def close() -> None:
            from dash._jupyter import JupyterDash  # (Dash keeps its Jupyter servers here, by address)

            server = JupyterDash._servers.pop((host, port), None)
            if server is not None:
                server.shutdown()
    else:
        from werkzeug.serving import make_server

        server = make_server(host, port, app.server, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True, name="llm-maps-show").start()
        print(f"llm-maps: dashboard on {url} ({'Ctrl-C to stop' if block else 'Dashboard.stop() to stop'})",
              flush=True)
        close = server.shutdown
    dashboard = Dashboard(url, close)
    if block:
        try:
            while True:
                time.sleep(0.5)
        except KeyboardInterrupt:
            dashboard.stop()
    return dashboard


# ================================================================================ model stages

def _stage_config(name: str, config: Any, options: dict[str, Any]) -> Any:
    """The stage's typed config (``llm_maps.stages``) from a config and/or keyword options, with
    the fields the command requires checked (one line naming those missing)."""

    cls = STAGES[name].config
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], sorted(names), n=1)
        raise LLMMapsError(f"{name}: unknown parameter '{unknown[0]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
                           + f"; the parameters are the fields of llm_maps.stages.{cls.__name__}")
    if isinstance(options.get("data"), (str, os.PathLike)):
        options["data"] = [str(options["data"])]
    for key in ("run", "out"):
        if isinstance(options.get(key), (Run, _RunFolder)):
            options[key] = str(options[key].path)
        elif isinstance(options.get(key), os.PathLike):
            options[key] = os.fspath(options[key])
    cfg = dataclasses.replace(config, **options) if config is not None else cls(**options)
    missing = [f.name for f in dataclasses.fields(cls) if option_of(f).required and not getattr(cfg, f.name)]
    if missing:
        raise LLMMapsError(f"{name}: give {', '.join(f'{m}=' for m in missing)}")
    return cfg


def _run_stage(name: str, cfg: Any) -> None:
    """Run a stage through its command's handler (what ``llm-maps NAME`` runs after parsing)."""
    code = COMMANDS[name](cfg)
    if code:
        raise LLMMapsError(f"{name} exited with status {code}")


def build(config: Any = None, /, **options: Any) -> Run:
    """Build a run (``llm-maps build``): encode every example, fit the map, measure distances.

    Args:
        config: a ``llm_maps.config.BuildConfig`` (optional; ``options`` override its fields).
        **options: its fields, as keywords: ``model`` (hub id, folder or ``.gguf`` file),
            ``data`` (files or a hub id), ``out`` (the run folder), ``template``, ``layers``,
            ``projection``, ``split_by``, ``seed``, ... (the command's options, ``-`` as ``_``;
            ``llm-maps build --help`` and the manual list them).

    Returns:
        The built run. Needs the model stack (``pip install "llm-maps[model]"``).
    """
    cfg = _stage_config("build", config, dict(options))
    _run_stage("build", cfg)
    return open_run(cfg.out)


def score(run: RunLike, config: Any = None, /, **options: Any) -> Run:
    """Generate outputs and score them (``llm-maps score RUN``); with ``conditions`` also chain of
    thought or nearest-example prompting.

    Args:
        run: the run.
        config: a ``llm_maps.stages.ScoreConfig`` (optional; ``options`` override its fields).
        **options: its fields: ``generate``, ``metric``, ``threshold``, ``max_new_tokens``,
            ``temperature``, ``conditions``, ... (``llm-maps score --help``).

    Returns:
        The run, re-opened with its scores. Needs the model stack to generate.
    """
    cfg = _stage_config("score", config, {**options, "run": run})
    _run_stage("score", cfg)
    return open_run(cfg.run)


def atlas(run: RunLike, config: Any = None, /, **options: Any) -> Run:
    """Add the token atlas to a run (``llm-maps atlas RUN``): every train reference token's state,
    teacher-forced, and the token map.

    Args:
        run: the run.
        config: a ``llm_maps.stages.AtlasConfig`` (optional; ``options`` override its fields).
        **options: its fields: ``atlas_layers``, ``atlas_max_tokens``, ``batch_tokens``, ``device``,
            ... (``llm-maps atlas --help``).

    Returns:
        The run, re-opened. Needs the model stack.
    """
    cfg = _stage_config("atlas", config, {**options, "run": run})
    _run_stage("atlas", cfg)
    return open_run(cfg.run)


def finetune(run: RunLike, out: str | os.PathLike[str], config: Any = None, /, **options: Any) -> list[Run]:
    """Instruction-tune a run's model on its train split (``llm-maps finetune RUN --out GROUP``);
    every checkpoint becomes a run in ``out`` (step 0 being the base run).

    Args:
        run: the base run.
        out: the folder of the checkpoint runs (re-run to resume an interrupted finetune).
        config: a ``llm_maps.stages.FinetuneConfig`` (optional; ``options`` override its fields).
        **options: its fields: ``steps``, ``epochs``, ``lr``, ``full``, ``lora_r``,
            ``save_every``, ... (``llm-maps finetune --help``).

    Returns:
        The group's runs by step; ``compare(runs)`` compares them. Needs the model stack (and peft
        for LoRA).
    """

    cfg = _stage_config("finetune", config, {**options, "run": run, "out": out})
    _run_stage("finetune", cfg)
    return [open_run(p) for p in runs_in(cfg.out)]
