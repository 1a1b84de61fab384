"""Findings: does accuracy fall off more steeply with distance to the training data in one domain
("Chollet") than in another ("Reasoning")? Statistics a reviewer accepts, torch-free.

* One distance scale for every run: a test example's distance to train as its percentile among the
  run's test distances (0 = nearest, 1 = farthest), so slopes compare across layers, metrics, views
  and models. Raw units are reported beside it.
* Tasks are the unit of independence: every interval is a *task-clustered* bootstrap (tasks are
  resampled with replacement within each domain; a replicate is a weighting of the rows, so the
  logistic fits of all replicates run at once as a few Newton steps in numpy), and the contrast's
  p-value permutes domain labels across tasks.
* The within-task slope is the conditional-logit (task fixed effects) slope: each task's own
  accuracy is conditioned out, so only the ordering of right and wrong answers *inside* a task
  carries it.

Compute functions are pure and keyword-only; ``findings_run`` reads a run folder
(``llm_maps.runfolder``) and is what ``llm-maps findings``, the Findings page and ``llm-maps
export`` share. The result is JSON-ready (see ``compute_findings``).
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

import numpy as np
import numpy.typing as npt

from .conditions_file import CONDITIONS_FILE, condition_rows
from .errors import LLMMapsError
from .falloff import Z95, wilson_interval
from .resample import interval_95 as _interval
# re-exported: the task bootstrap's home is llm_maps.resample; scripts and tests import these from here too
from .resample import MAX_FLIPS as MAX_FLIPS, sign_flip_p as sign_flip_p, small_cluster as small_cluster
from .resample import task_ratio_interval as task_ratio_interval, task_resample_counts as task_resample_counts
from .resample import MIN_TASKS_FOR_INTERVAL, task_mean_interval
from .neighbours import knn
from .runfolder import ENCODINGS, EXAMPLES, Run, check_writable, read_result_json, record_stage

if TYPE_CHECKING:
    from .runfolder import Run

FloatArray = npt.NDArray[np.float64]

FINDINGS_FILE = "findings.json"
FORMAT_VERSION = 2  # 2: contrast.within / .between, verdict_detail, robustness excludes_0 / p_holm
MIN_TASKS_FOR_CLAIM = 5  # fewer tasks in a domain than this: no claim, whatever the interval says
ALPHA = 0.05
VERDICTS = ("supported", "not supported", "reversed")
DEFAULT_CONTRAST = ("Chollet", "Reasoning")
FIRST_TOKEN_COLUMNS = ("first_entropy", "first_top_prob", "first_kl_to_mean")
METRICS = ("cosine", "euclidean")
Z80 = 0.8416212335729143  # one-sided normal quantile for 80 % power
UNIT = ("slope = change in the log-odds of a correct answer per unit distance percentile (the fraction of test "
        "examples nearer to the training data: 0 = nearest, 1 = farthest); negative = accuracy falls with distance")
MAX_SLOPE = 60.0  # |slope| beyond this per unit percentile = (quasi-)separation, not an estimate


# --- the distance scale ----------------------------------------------------------------------------

def percentile_scale(distance: np.ndarray) -> np.ndarray:
    """[N] each finite distance's percentile rank among the finite ones, (average rank - 1/2) / n:
    the fraction of the split nearer to the training data (ties count one half), from 1/(2n) for
    the nearest to 1 - 1/(2n) for the farthest. Repeating every example leaves it unchanged.
    NaN stays NaN. (scipy.stats.rankdata's average ranks, without importing scipy.stats.)"""
    d = np.asarray(distance, dtype=float)
    out = np.full(d.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(d))
    if len(ok):
        v = d[ok]
        order = np.argsort(v, kind="stable")
        sv = v[order]
        starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
        ends = np.r_[starts[1:], len(sv)]
        avg = (starts + 1 + ends) / 2.0  # mean of the 1-based ranks starts+1 .. ends
        ranks = np.empty(len(v))
        ranks[order] = np.repeat(avg, ends - starts)
        out[ok] = (ranks - 0.5) / len(v)
    return out


def expit(z: np.ndarray) -> np.ndarray:
    """The logistic function, overflow-free."""
    return 0.5 * (1.0 + np.tanh(0.5 * z))


# --- batched fits ----------------------------------------------------------------------------------

def _blocks(n_rep: int, n_rows: int, budget: float = 4e6) -> Iterable[slice]:
    step = max(1, int(budget // max(n_rows, 1)))
    for start in range(0, n_rep, step):
        yield slice(start, min(n_rep, start + step))


def fit_logistic(*, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None, max_iter: int = 50,
                 tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logistic regression of ``y`` (0/1) on ``x`` with an intercept, for every row of ``weights``
    ([R, n] case weights, e.g. bootstrap counts; None = one fit with unit weights) at once, by
    Newton's method. Returns (intercept [R], slope [R], ok [R]); ``ok`` is False where a fit has
    one class only, no spread in x, did not converge, or separates (|slope| > MAX_SLOPE)."""
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    w_all = np.ones((1, len(x))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    n_rep = w_all.shape[0]
    a_out, s_out, ok_out = np.full(n_rep, np.nan), np.full(n_rep, np.nan), np.zeros(n_rep, dtype=bool)
    for sl in _blocks(n_rep, len(x)):
        w = w_all[sl]  # [r, n]
        sw = w.sum(1)
        sy = (w * y).sum(1)
        mx = (w * x).sum(1) / np.maximum(sw, 1e-300)
        vx = (w * (x - mx[:, None]) ** 2).sum(1)
        valid = (sy > 0) & (sy < sw) & (vx > 1e-12 * np.maximum(sw, 1))
        ybar = np.clip(sy / np.maximum(sw, 1e-300), 1e-6, 1 - 1e-6)
        a = np.log(ybar / (1 - ybar))
        s = np.zeros_like(a)
        done = ~valid
        for _ in range(max_iter):
            act = np.flatnonzero(~done)  # rows still moving: the others are not recomputed
            if len(act) == 0:
                break
            wa = w[act]
            p = expit(a[act, None] + s[act, None] * x[None, :])
            r = wa * (y - p)
            g0, g1 = r.sum(1), r @ x
            v = wa * p * (1 - p)
            h00, h01, h11 = v.sum(1), v @ x, v @ (x * x)
            det = h00 * h11 - h01 * h01
            det = np.where(np.abs(det) > 1e-300, det, np.nan)
            d0 = (h11 * g0 - h01 * g1) / det
            d1 = (h00 * g1 - h01 * g0) / det
            big = np.maximum(np.abs(d0), np.abs(d1))
            scale = np.where(big > 5, 5 / np.where(big > 0, big, 1), 1.0)  # damp wild first steps
            a[act] += np.nan_to_num(d0 * scale)
            s[act] += np.nan_to_num(d1 * scale)
            done[act] = ~(big > tol) | ~np.isfinite(big)
        conv = done & valid & np.isfinite(s) & (np.abs(s) < MAX_SLOPE)
        a_out[sl], s_out[sl], ok_out[sl] = np.where(conv, a, np.nan), np.where(conv, s, np.nan), conv
    return a_out, s_out, ok_out


def fit_ols_slope(*, x: np.ndarray, y: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """Weighted least-squares slope of y on x for every row of ``weights`` ([R, n]; None = one fit)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    w = np.ones((1, len(x))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    sw = np.maximum(w.sum(1), 1e-300)
    mx, my = (w * x).sum(1) / sw, (w * y).sum(1) / sw
    sxx = (w * (x - mx[:, None]) ** 2).sum(1)
    sxy = (w * (x - mx[:, None]) * (y - my[:, None])).sum(1)
    return np.where(sxx > 1e-12, sxy / np.where(sxx > 1e-12, sxx, 1), np.nan)


def weighted_auroc(*, score: np.ndarray, positive: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
    """AUROC of ``score`` for ``positive`` (ties count one half), for every row of ``weights``
    ([R, n] case weights; None = one unweighted value). Equals scikit-learn's roc_auc_score with
    ``sample_weight``. NaN where a row has no positive or no negative weight."""
    score = np.asarray(score, dtype=float)
    pos = np.asarray(positive, dtype=bool)
    w = np.ones((1, len(score))) if weights is None else np.atleast_2d(np.asarray(weights, dtype=float))
    order = np.argsort(score, kind="stable")
    s_sorted = score[order]
    starts = np.flatnonzero(np.r_[True, s_sorted[1:] != s_sorted[:-1]])  # groups of tied scores
    pos_o = pos[order]
    out = np.full(w.shape[0], np.nan)
    for sl in _blocks(w.shape[0], len(score)):
        wo = w[sl][:, order]
        wp = np.add.reduceat(np.where(pos_o, wo, 0.0), starts, axis=1)  # [r, G]
        wn = np.add.reduceat(np.where(pos_o, 0.0, wo), starts, axis=1)
        below = np.cumsum(wn, axis=1) - wn  # negative weight strictly below each group
        num = (wp * (below + 0.5 * wn)).sum(1)
        den = wp.sum(1) * wn.sum(1)
        out[sl] = np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)
    return out


def _cond_loglik(x: np.ndarray, y: np.ndarray, betas: np.ndarray) -> np.ndarray:
    """Conditional-logit log-likelihood of one task at each of ``betas`` ([G] -> [G]): the log
    probability that exactly the observed rows are the correct ones, given how many are."""
    x = np.asarray(x, dtype=float)
    x = x - x.mean()  # a shift cancels in the conditional likelihood
    k = int(y.sum())
    sign = 1.0
    if k > len(y) - k:  # the complement set has the same likelihood at -beta
        y, k, sign = 1 - y, len(y) - k, -1.0
    b = sign * np.asarray(betas, dtype=float)
    log_e = np.full((len(b), k + 1), -np.inf)
    log_e[:, 0] = 0.0
    for xi in x:  # elementary symmetric polynomials of exp(b * x), in log space
        log_e[:, 1:] = np.logaddexp(log_e[:, 1:], log_e[:, :-1] + (b * xi)[:, None])
    out: FloatArray = b * float(x[y > 0].sum()) - log_e[:, k]
    return out


def within_curves(*, x: np.ndarray, y: np.ndarray, task: np.ndarray, lim: float = 20.0,
                  grid_step: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each task's conditional-logit log-likelihood on a grid of slopes: (grid [G], per-task [T, G] in
    ``np.unique(task)`` order, informative [T]). A set of tasks' within-task slope is the argmax of
    the sum of its rows, so bootstrap replicates and permutations are weightings of the rows. Tasks
    where all or none are correct (or x does not vary) carry no information: their rows are 0."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    names, codes = np.unique(np.asarray(task), return_inverse=True)
    grid = np.arange(-lim, lim + grid_step / 2, grid_step)
    per_task = np.zeros((len(names), len(grid)))  # [T, G]
    informative = np.zeros(len(names), dtype=bool)
    for t in range(len(names)):
        g = np.flatnonzero(codes == t)
        if 0 < y[g].sum() < len(g) and np.ptp(x[g]) > 0:
            informative[t] = True
            per_task[t] = _cond_loglik(x[g], y[g], grid)
    return grid, per_task, informative


def curve_argmax(ll: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """[R] the slope maximising each row of summed log-likelihoods ``ll`` [R, G] (refined by a
    parabola through the grid point and its neighbours); NaN where the maximum is at an end of the
    grid (separation) or a row is all 0 (no informative task)."""
    ll = np.atleast_2d(ll)
    j = np.argmax(ll, axis=1)
    interior = (j > 0) & (j < len(grid) - 1) & np.any(ll != 0, axis=1)
    jj = np.clip(j, 1, len(grid) - 2)
    rows = np.arange(len(j))
    l0, l1, l2 = ll[rows, jj - 1], ll[rows, jj], ll[rows, jj + 1]
    curv = l0 - 2 * l1 + l2
    shift = np.where(curv < 0, 0.5 * (l0 - l2) / np.where(curv < 0, curv, -1), 0.0)
    out: FloatArray = np.where(interior, grid[jj] + np.clip(shift, -0.5, 0.5) * (grid[1] - grid[0]), np.nan)
    return out


def conditional_logit_slope(*, x: np.ndarray, y: np.ndarray, task: np.ndarray,
                            task_weights: np.ndarray | None = None, lim: float = 20.0,
                            grid_step: float = 0.05) -> tuple[float, np.ndarray, int]:
    """Within-task slope: the conditional-logit (task fixed effects) MLE of correct on ``x``, which
    statsmodels' ConditionalLogit also fits. Tasks where all or none are correct carry no
    information and drop out. ``task_weights`` [R, T] (T = number of distinct tasks, in
    ``np.unique`` order) gives the slope of each task-resampled replicate from the per-task
    log-likelihoods on a grid (refined by a parabola). Returns (slope, replicate slopes [R],
    informative tasks); NaN where the maximum is not interior (separation)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    names, codes = np.unique(np.asarray(task), return_inverse=True)
    groups = [np.flatnonzero(codes == t) for t in range(len(names))]
    grid, per_task, inf_mask = within_curves(x=x, y=y, task=task, lim=lim, grid_step=grid_step)
    informative = list(np.flatnonzero(inf_mask))
    reps = np.full(0 if task_weights is None else np.atleast_2d(task_weights).shape[0], np.nan)
    if not informative:
        return math.nan, reps, 0
    total = per_task.sum(0)
    i = int(np.argmax(total))
    slope = math.nan
    if 0 < i < len(grid) - 1:
        lo, hi = grid[i - 1], grid[i + 1]
        for _ in range(3):  # zoom in: the log-likelihood is concave in beta
            fine = np.linspace(lo, hi, 41)
            ll = np.sum([_cond_loglik(x[groups[t]], y[groups[t]], fine) for t in informative], axis=0)
            j = int(np.clip(np.argmax(ll), 1, len(fine) - 2))
            lo, hi = fine[j - 1], fine[j + 1]
        fine = np.linspace(lo, hi, 3)
        l0, l1, l2 = np.sum([_cond_loglik(x[groups[t]], y[groups[t]], fine) for t in informative], axis=0)
        curv = l0 - 2 * l1 + l2
        slope = float(fine[1] + (0.5 * (l0 - l2) / curv * (fine[1] - fine[0]) if curv < 0 else 0.0))
    if task_weights is not None:
        reps = curve_argmax(np.atleast_2d(np.asarray(task_weights, dtype=float)) @ per_task, grid)
    return slope, reps, len(informative)


def _num(v: float | None) -> float | None:
    return None if v is None or not np.isfinite(v) else float(v)


# --- the analysis ----------------------------------------------------------------------------------

class DomainData:
    """The rows of one domain: percentile x, correct y, task codes (0..T-1) and names."""

    def __init__(self, name: str, x: np.ndarray, y: np.ndarray, task: np.ndarray, raw: np.ndarray):
        self.name, self.x, self.y, self.raw = name, x, y.astype(float), raw
        self.task_names, self.codes = np.unique(task, return_inverse=True)

    @property
    def n_tasks(self) -> int:
        return len(self.task_names)

    def weights(self, counts: np.ndarray) -> np.ndarray:
        """[B, n] row weights of task-resample counts [B, T]."""
        return counts[:, self.codes]


def _prepare(*, distance: npt.ArrayLike, correct: Iterable[Any], domain: Iterable[Any], task: Iterable[Any],
             where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                                      np.ndarray, np.ndarray, np.ndarray]:
    d = np.asarray(distance, dtype=float)
    c = np.array([np.nan if v is None or (isinstance(v, float) and math.isnan(v)) else float(bool(v))
                  for v in correct])
    dom = np.array([str(v) for v in domain], dtype=object)
    tsk = np.array([str(v) for v in task], dtype=object)
    if not (len(d) == len(c) == len(dom) == len(tsk)):
        raise LLMMapsError(f"{where}: distance, correct, domain and task differ in length")
    pct = percentile_scale(d)  # among all of the split's distances, scored or not
    keep = np.isfinite(d) & np.isfinite(c)
    if not keep.any():
        raise LLMMapsError(f"{where}, field 'correct': no scored test examples with a distance "
                           "(run `llm-maps score RUN` first)")
    return keep, pct, d, c, dom, tsk


def check_contrast(*, domains: Sequence[str], tasks_per_domain: dict[str, int], contrast: Sequence[str],
                   where: str) -> tuple[str, str]:
    present = sorted(set(domains))
    if len(present) < 2:
        raise LLMMapsError(f"{where}, field 'domain': the scored test examples are all in one domain "
                           f"('{present[0]}'); findings compare two domains")
    a, b = contrast
    for name in (a, b):
        if name not in present:
            raise LLMMapsError(f"{where}, field 'domain': no scored test examples in domain '{name}' "
                               f"(domains: {', '.join(present)}); choose two with --contrast A,B")
    if a == b:
        raise LLMMapsError(f"--contrast: the two domains must differ, got '{a}' twice")
    for name in (a, b):
        if tasks_per_domain[name] < 2:
            raise LLMMapsError(f"{where}, field 'task': domain '{name}' has only {tasks_per_domain[name]} task "
                               "among the scored test examples; the contrast needs at least 2 tasks per domain "
                               f"(tasks, not examples, are the unit of independence; an interval over tasks needs "
                               f"{MIN_TASKS_FOR_INTERVAL}, a claim {MIN_TASKS_FOR_CLAIM})")
    return a, b


def task_means(dd: "DomainData") -> np.ndarray:
    """[n] each row's task mean of x (the between-task covariate of the hybrid model)."""
    sums = np.bincount(dd.codes, weights=dd.x, minlength=dd.n_tasks)
    sizes = np.bincount(dd.codes, minlength=dd.n_tasks)
    out: FloatArray = (sums / np.maximum(sizes, 1))[dd.codes]
    return out



class Slopes:
    """One part of the falloff (pooled, within or between tasks) for the two domains: the
    estimates, the task-bootstrap replicates (the same draws for every part) and the slopes under
    permuted domain labels (the same permutations for every part)."""

    def __init__(self, est_a: float, est_b: float, boot_a: np.ndarray, boot_b: np.ndarray,
                 perm_a: np.ndarray | None, perm_b: np.ndarray | None, fits: dict[str, Any] | None = None,
                 observed: float | None = None, exact: bool = False):
        self.est_a, self.est_b, self.boot_a, self.boot_b = est_a, est_b, boot_a, boot_b
        self.perm_a, self.perm_b = perm_a, perm_b
        self.fits = fits or {}  # pooled: each domain's {intercept, slope, boot_intercept, boot_slope}
        # the observed difference as the permutations compute theirs (the same estimator: the
        # within-task estimate above is refined further than the permutations' grid), and whether
        # the permutations are every assignment of the tasks to the domains (an exact test)
        self.observed, self.exact = observed, exact
        # the tasks that carry information, where fewer than all do (within: a task all right or all
        # wrong drops out of the conditional logit): the small-cluster spread counts these
        self.clusters: tuple[int, int] | None = None


def domain_labellings(n_a: int, n_b: int, n_perm: int, seed: int) -> tuple[np.ndarray, bool]:
    """Domain labels for the permutation test [P, n_a + n_b] (1 = the task goes to domain a; each
    domain keeps its number of tasks): every assignment when there are at most ``n_perm`` of them
    (the test is then exact), else ``n_perm`` drawn at random. Returns (labels, exact)."""
    total = math.comb(n_a + n_b, n_a)
    if total <= n_perm:
        labels = np.zeros((total, n_a + n_b))
        for i, chosen in enumerate(itertools.combinations(range(n_a + n_b), n_a)):
            labels[i, list(chosen)] = 1.0
        return labels, True
    labels = np.zeros((n_perm, n_a + n_b))
    labels[:, :n_a] = 1.0
    return np.random.default_rng(seed + 7919).permuted(labels, axis=1), False


def _fit_parts(da: "DomainData", db: "DomainData", counts_a: np.ndarray, counts_b: np.ndarray,
               labels: np.ndarray | None, decompose: bool = True, exact: bool = False) -> dict[str, Slopes]:
    """Pooled (logistic on x), between (logistic on the task-mean x: task accuracy against the task's
    distance) and within (conditional logit, task fixed effects) slopes of both domains, on the
    given bootstrap counts [B, T] and permutation labels [P, Ta + Tb] (1 = the task goes to a;
    ``exact``: every assignment). The observed labelling goes through the permutations' own
    estimator too (its first row), so that the p-value compares like with like.
    ``decompose=False``: the pooled part only."""
    out = {}
    if labels is not None:
        labels = np.vstack([np.r_[np.ones(da.n_tasks), np.zeros(db.n_tasks)], labels])
    pooled_x = np.r_[da.x, db.x]
    y = np.r_[da.y, db.y]
    codes = np.r_[da.codes, db.codes + da.n_tasks]
    for part, xa, xb in (("pooled", da.x, db.x), ("between", task_means(da), task_means(db)))[:2 if decompose else 1]:
        fits: dict[str, dict[str, Any]] = {}
        for key, dd, xx, counts in (("a", da, xa, counts_a), ("b", db, xb, counts_b)):
            ia, sa, _ = fit_logistic(x=xx, y=dd.y)
            ib, sb, _ = fit_logistic(x=xx, y=dd.y, weights=dd.weights(counts))
            fits[key] = {"intercept": float(ia[0]), "slope": float(sa[0]), "boot_intercept": ib, "boot_slope": sb,
                         "counts": counts}
        perm_a = perm_b = None
        if labels is not None:
            x_all = pooled_x if part == "pooled" else np.r_[xa, xb]
            w = labels[:, codes]
            perm_a = fit_logistic(x=x_all, y=y, weights=w)[1]
            perm_b = fit_logistic(x=x_all, y=y, weights=1.0 - w)[1]
        out[part] = _with_permutations(fits["a"]["slope"], fits["b"]["slope"], fits["a"]["boot_slope"],
                                       fits["b"]["boot_slope"], perm_a, perm_b, exact, fits)
    if not decompose:
        return out
    curves, informative = {}, {}
    for key, dd in (("a", da), ("b", db)):
        grid, per_task, informative[key] = within_curves(x=dd.x, y=dd.y, task=dd.codes)
        curves[key] = per_task
    est_a = conditional_logit_slope(x=da.x, y=da.y, task=da.codes)[0]
    est_b = conditional_logit_slope(x=db.x, y=db.y, task=db.codes)[0]
    perm_a = perm_b = None
    if labels is not None:
        both = np.vstack([curves["a"], curves["b"]])
        perm_a, perm_b = curve_argmax(labels @ both, grid), curve_argmax((1.0 - labels) @ both, grid)
    out["within"] = _with_permutations(est_a, est_b, curve_argmax(counts_a @ curves["a"], grid),
                                       curve_argmax(counts_b @ curves["b"], grid), perm_a, perm_b, exact)
    out["within"].clusters = (int(informative["a"].sum()), int(informative["b"].sum()))
    return out


def _with_permutations(est_a: float, est_b: float, boot_a: np.ndarray, boot_b: np.ndarray,
                       perm_a: np.ndarray | None, perm_b: np.ndarray | None, exact: bool,
                       fits: dict[str, Any] | None = None) -> Slopes:
    """A part's Slopes, the first row of the permutation slopes (the observed labelling) split off."""
    if perm_a is None or perm_b is None:
        return Slopes(est_a, est_b, boot_a, boot_b, None, None, fits)
    return Slopes(est_a, est_b, boot_a, boot_b, perm_a[1:], perm_b[1:], fits,
                  observed=float(perm_a[0] - perm_b[0]), exact=exact)


def part_contrast(sl: Slopes, *, n_tasks_a: int, n_tasks_b: int) -> dict[str, Any]:
    """slope_a, slope_b, slope_diff = a - b with its task-bootstrap 95 % interval (small-cluster
    corrected), the two-sided permutation p-value (labels permuted across tasks), the standard error
    the interval implies and the minimum detectable difference (80 % power, 5 % level)."""
    diff = sl.est_a - sl.est_b
    g_a, g_b = sl.clusters or (n_tasks_a, n_tasks_b)
    boot = small_cluster(sl.est_a, sl.boot_a, g_a) - small_cluster(sl.est_b, sl.boot_b, g_b)
    lo, hi = _interval(boot) if min(g_a, g_b) >= MIN_TASKS_FOR_INTERVAL else (None, None)
    se = None if lo is None or hi is None else float((hi - lo) / (2 * Z95))
    p, n_perm = None, 0
    obs = diff if sl.observed is None else sl.observed
    if sl.perm_a is not None and sl.perm_b is not None and np.isfinite(diff) and np.isfinite(obs):
        d = sl.perm_a - sl.perm_b
        d = d[np.isfinite(d)]
        if len(d):
            # as extreme as observed, up to rounding (the observed labelling itself counts)
            hits = int(np.sum(np.abs(d) >= abs(obs) - 1e-9 * max(1.0, abs(obs))))
            # every assignment: the observed one is among them; random ones: add it (Phipson-Smyth)
            p = hits / len(d) if sl.exact else (1 + hits) / (len(d) + 1)
            p, n_perm = float(p), int(len(d))
    return {"slope_a": _num(sl.est_a), "slope_b": _num(sl.est_b), "slope_diff": _num(diff), "low": lo, "high": hi,
            "p_value": p, "se": se, "mdd": None if se is None else float((Z95 + Z80) * se),
            "bootstrap_failed": int((~np.isfinite(boot)).sum()), "permutations": n_perm}


def part_verdict(part: Mapping[str, Any], *, n_tasks_a: int, n_tasks_b: int, p_value: float | None = None) -> str:
    """The hypothesis is directional: "a falls off more steeply than b" (slope_a - slope_b < 0).
    ``supported`` when the interval lies below 0, the permutation test rejects equal slopes and a's
    slope is negative; ``reversed`` when the interval lies above 0 and the test rejects; otherwise
    ``not supported`` (so too with no p-value, or fewer than MIN_TASKS_FOR_CLAIM tasks in a domain).
    ``p_value``: use this one (e.g. Holm-adjusted) instead of the part's."""
    lo, hi = part.get("low"), part.get("high")
    p = part.get("p_value") if p_value is None else p_value
    if lo is None or hi is None or p is None or min(n_tasks_a, n_tasks_b) < MIN_TASKS_FOR_CLAIM or p >= ALPHA:
        return "not supported"
    if hi < 0:
        slope_a = part.get("slope_a")
        return "supported" if slope_a is None or slope_a < 0 else "not supported"
    if lo > 0:
        return "reversed"
    return "not supported"


def verdict_line(contrast: dict[str, Any]) -> str:
    """The plain verdict of the pooled contrast, generated from its numbers: a directional claim
    ("a falls off more steeply than b") that may say "not supported" or "reversed"."""
    a, b = contrast["a"], contrast["b"]
    d, lo, hi, p = contrast["slope_diff"], contrast["low"], contrast["high"], contrast["p_value"]
    ta, tb = contrast["n_tasks_a"], contrast["n_tasks_b"]
    tasks = f"{ta} vs {tb} tasks, {contrast['n_a']} vs {contrast['n_b']} examples"
    ptxt = "" if p is None else f", p = {p:.3g}"
    if d is not None and min(ta, tb) < MIN_TASKS_FOR_CLAIM:  # too few tasks: no claim, with or without an interval
        few = a if ta <= tb else b
        iv = f"[{lo:+.2f}, {hi:+.2f}]" if lo is not None and hi is not None else "[no interval over tasks]"
        return (f"not supported: {few} has only {min(ta, tb)} tasks; no claim is made with fewer than "
                f"{MIN_TASKS_FOR_CLAIM} tasks per domain (slope difference ({a} − {b}) {d:+.2f} {iv} per unit "
                f"percentile{ptxt}; {tasks})")
    if d is None or lo is None or hi is None:
        return (f"not supported: the slope difference {a} − {b} could not be estimated (a domain's accuracy is all "
                f"right or all wrong, or its distances do not vary; {tasks})")
    numbers = f"slope difference ({a} − {b}) {d:+.2f} [{lo:+.2f}, {hi:+.2f}] per unit percentile"
    if (lo > 0 or hi < 0) and p is None:
        return (f"not supported: the {numbers} excludes 0, but no permutation test was run, and no claim is made "
                f"without one ({tasks})")
    if (lo > 0 or hi < 0) and p >= ALPHA:  # the two tests disagree: no claim
        return (f"not supported: the slope difference ({a} − {b}) {d:+.2f} has interval [{lo:+.2f}, {hi:+.2f}], "
                f"which excludes 0, but the permutation test does not reject equal slopes (p = {p:.3g}) ({tasks})")
    verdict = part_verdict(contrast, n_tasks_a=ta, n_tasks_b=tb)
    if verdict == "supported":
        return f"{a} falls off more steeply than {b}: {numbers}{ptxt} ({tasks})"
    if verdict == "reversed":
        sb = contrast.get("slope_b")
        how = "falls off more steeply" if sb is None or sb < 0 else "has the lower slope"
        return (f"reversed: {b} {how} than {a}, the opposite of the hypothesis that {a} falls off more steeply: "
                f"{numbers}{ptxt} ({tasks})")
    if hi < 0:  # significant, but a's slope is not negative: nothing falls off
        return (f"not supported: {a}'s accuracy does not fall with distance (slope {contrast['slope_a']:+.2f}), so it "
                f"cannot fall off more steeply than {b}'s, though its slope is the lower: {numbers}{ptxt} ({tasks})")
    mdd = contrast.get("mdd")
    tail = (f"; with these task counts a difference smaller than {mdd:.2f} cannot be detected (80 % power, "
            "5 % level)" if mdd is not None else "")
    return (f"not supported: the slope difference ({a} − {b}) {d:+.2f} has interval [{lo:+.2f}, {hi:+.2f}], "
            f"which includes 0{ptxt}{tail} ({tasks})")


PART_WORDS = {  # (part, verdict) -> the sentence; {a}, {b}, {n}: domains and the part's numbers
    ("within", "supported"): "within a task, distance matters more in {a} than in {b} ({n})",
    ("within", "not supported"): "within a task, distance is not shown to matter more in {a} than in {b} ({n})",
    ("within", "reversed"): "within a task, distance matters more in {b} than in {a}, the reverse ({n})",
    ("between", "supported"): "far tasks are harder in {a} than in {b} ({n})",
    ("between", "not supported"): "far tasks are not shown to be harder in {a} than in {b} ({n})",
    ("between", "reversed"): "far tasks are harder in {b} than in {a}, the reverse ({n})",
}


def part_sentence(part: str, con: Mapping[str, Any], verdict: str) -> str:
    """One part's plain sentence with its numbers."""
    q = con.get(part) or {}

    def f(v: float | None) -> str:
        return "-" if v is None else f"{v:+.2f}"

    if q.get("slope_diff") is None:  # a part that could not be fitted (e.g. separation)
        n = "no difference could be fitted"
    else:
        n = (f"difference {f(q.get('slope_diff'))} "
             + ("[no interval]" if q.get("low") is None or q.get("high") is None
                else f"[{f(q.get('low'))}, {f(q.get('high'))}]")
             + ("" if q.get("p_value") is None else f", p = {q['p_value']:.3g}"))
    return PART_WORDS[(part, verdict)].format(a=con["a"], b=con["b"], n=n)


def _bins_on_scale(x: np.ndarray, y: np.ndarray, n_bins: int) -> list[dict[str, Any]]:
    """Accuracy (or mean) in equal-width percentile bins, with Wilson intervals for 0/1 values."""
    edges = np.linspace(0, 1, n_bins + 1)
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, n_bins - 1)
    out = []
    for b in range(n_bins):
        sel = idx == b
        n = int(sel.sum())
        if not n:
            continue
        k = int(y[sel].sum())
        lo, hi = wilson_interval(k, n)
        out.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "x": float(np.mean(x[sel])), "n": n,
                    "correct": k, "accuracy": k / n, "low": lo, "high": hi})
    return out


def _quartile(dd: DomainData, which: str, *, n_boot: int, seed: int) -> dict[str, Any]:
    """Accuracy in the domain's nearest or farthest quarter of examples (by distance): Wilson 95 %
    over examples, and task-clustered."""
    q = np.quantile(dd.x, 0.25 if which == "near" else 0.75)
    sel = dd.x <= q if which == "near" else dd.x >= q
    n, k = int(sel.sum()), int(dd.y[sel].sum())
    lo, hi = wilson_interval(k, n)
    _, tlo, thi, tasks = task_mean_interval(dd.y[sel], dd.codes[sel], n_boot=n_boot, rng=np.random.default_rng(seed),
                                            bounds=(0.0, 1.0), proportion=True)
    return {"n": n, "correct": k, "accuracy": k / n if n else None, "low": _num(lo), "high": _num(hi),
            "task_low": tlo, "task_high": thi, "n_tasks": tasks,
            "percentile_max" if which == "near" else "percentile_min": float(q)}


def risk_coverage(*, x: np.ndarray, y: np.ndarray, steps: int = 20) -> list[dict[str, Any]]:
    """Accuracy when only the nearest ``coverage`` fraction of examples is answered."""
    order = np.argsort(x, kind="stable")
    ys = y[order]
    out = []
    for c in np.linspace(1 / steps, 1, steps):
        n = max(1, int(round(c * len(ys))))
        out.append({"coverage": round(float(c), 4), "n": n, "accuracy": float(ys[:n].mean())})
    return out


def _domain_stats(dd: DomainData, boot: dict[str, Any] | None, *, n_boot: int, seed: int, n_bins: int,
                  first_token: dict[str, np.ndarray] | None, curve_x: np.ndarray) -> dict[str, Any]:
    rng = np.random.default_rng(seed + 104729 + sum(map(ord, dd.name)))
    counts = boot["counts"] if boot is not None else task_resample_counts(n_tasks=dd.n_tasks, n_boot=n_boot, rng=rng)
    w = dd.weights(counts)
    if boot is None:
        ia, sa, _ = fit_logistic(x=dd.x, y=dd.y)
        ib, sb, _ = fit_logistic(x=dd.x, y=dd.y, weights=w) if dd.n_tasks >= 2 else (None, np.full(0, np.nan), None)
        intercept, slope = float(ia[0]), float(sa[0])
    else:
        intercept, slope, ib, sb = boot["intercept"], boot["slope"], boot["boot_intercept"], boot["boot_slope"]
    # the replicates below are drawn only where an interval is given from them (MIN_TASKS_FOR_INTERVAL)
    boot_ok = dd.n_tasks >= MIN_TASKS_FOR_INTERVAL
    lo, hi = _interval(small_cluster(slope, sb, dd.n_tasks)) if boot_ok else (None, None)
    _, raw_slope, _ = fit_logistic(x=dd.raw, y=dd.y)
    err = dd.y < 0.5
    auc = weighted_auroc(score=dd.x, positive=err)[0]
    alo, ahi = _interval(weighted_auroc(score=dd.x, positive=err, weights=w)) if boot_ok else (None, None)
    within, within_b, n_inf = conditional_logit_slope(x=dd.x, y=dd.y, task=dd.codes,
                                                      task_weights=counts if boot_ok else None)
    wlo, whi = _interval(small_cluster(within, within_b, n_inf)) if n_inf >= MIN_TASKS_FOR_INTERVAL else (None, None)
    curve = None
    if np.isfinite(slope):
        p = expit(intercept + slope * curve_x)
        band_lo = band_hi = None
        if ib is not None and boot_ok and np.isfinite(sb).sum() >= 10:
            good = np.isfinite(sb)
            pb = expit(ib[good, None] + sb[good, None] * curve_x[None, :])
            band_lo, band_hi = np.percentile(pb, 2.5, axis=0).tolist(), np.percentile(pb, 97.5, axis=0).tolist()
        curve = {"x": curve_x.tolist(), "p": p.tolist(), "low": band_lo, "high": band_hi}
    conf = {}
    for col, values in (first_token or {}).items():
        v = np.asarray(values, dtype=float)
        ok = np.isfinite(v)
        if ok.sum() < 3:
            continue
        s = float(fit_ols_slope(x=dd.x[ok], y=v[ok])[0])
        clo, chi = _interval(fit_ols_slope(x=dd.x[ok], y=v[ok], weights=w[:, ok])) if boot_ok else (None, None)
        edges = np.linspace(0, 1, n_bins + 1)
        idx = np.clip(np.searchsorted(edges, dd.x[ok], side="right") - 1, 0, n_bins - 1)
        bins = [{"x": float(dd.x[ok][idx == b].mean()), "n": int((idx == b).sum()), "mean": float(v[ok][idx == b].mean())}
                for b in range(n_bins) if (idx == b).any()]
        conf[col] = {"n": int(ok.sum()), "mean": float(v[ok].mean()), "slope": _num(s), "low": clo, "high": chi,
                     "bins": bins}
    n, k = len(dd.y), int(dd.y.sum())
    alow, ahigh = wilson_interval(k, n)
    _, tlow, thigh, _ = task_mean_interval(dd.y, dd.codes, n_boot=n_boot, rng=np.random.default_rng(seed),
                                           bounds=(0.0, 1.0), proportion=True)
    return {
        "n": n, "n_tasks": dd.n_tasks, "correct": k, "accuracy": k / n, "accuracy_low": alow, "accuracy_high": ahigh,
        "accuracy_task_low": tlow, "accuracy_task_high": thigh,
        "slope": _num(slope), "slope_low": lo, "slope_high": hi, "intercept": _num(intercept),
        "slope_raw": _num(raw_slope[0]),
        "auroc": _num(auc), "auroc_low": alo, "auroc_high": ahi,
        "slope_within_task": _num(within), "slope_within_task_low": wlo, "slope_within_task_high": whi,
        "n_tasks_within": n_inf,
        "near": _quartile(dd, "near", n_boot=n_boot, seed=seed + 1), "far": _quartile(dd, "far", n_boot=n_boot,
                                                                                       seed=seed + 2),
        "bins": _bins_on_scale(dd.x, dd.y, n_bins), "curve": curve,
        "risk_coverage": risk_coverage(x=dd.x, y=dd.y), "confidence": conf,
        "bootstrap_failed": int((~np.isfinite(sb)).sum()) if len(sb) else None,
    }


def compute_findings(*, distance: np.ndarray, correct: Sequence[Any], domain: Sequence[Any], task: Sequence[Any],
                     contrast: Sequence[str] = DEFAULT_CONTRAST, n_boot: int = 2000, seed: int = 0,
                     first_token: dict[str, np.ndarray] | None = None, n_bins: int = 5,
                     permutation: bool = True, details: bool = True, where: str = "run",
                     decompose: bool = True) -> dict[str, Any]:
    """Findings for one distance variant of a split.

    ``distance`` [N] raw distances to train of the split's examples (NaN = none); ``correct`` [N]
    bool or None (unscored rows count in the percentile scale, not in the fits); ``domain``,
    ``task`` [N]. Returns domains (slope per unit percentile with a task-clustered 95 % interval,
    nearest/farthest-quartile accuracy with Wilson intervals, AUROC of distance for an error with a
    clustered interval, within-task slope, risk-coverage, confidence-vs-distance slopes), the
    contrast ``a - b`` with its interval, task-level permutation p-value and minimum detectable
    difference, and the verdict. ``details=False``: the contrast only (robustness rows)."""
    if n_boot < 100:
        raise LLMMapsError(f"--bootstrap: at least 100 replicates are needed for a 95 % interval, got {n_boot}")
    keep, pct, d, c, dom, tsk = _prepare(distance=distance, correct=correct, domain=domain, task=task, where=where)
    tasks_per_domain = {name: len(set(tsk[keep & (dom == name)])) for name in set(dom[keep])}
    a, b = check_contrast(domains=list(dom[keep]), tasks_per_domain=tasks_per_domain, contrast=tuple(contrast),
                          where=where)
    data = {name: DomainData(name, pct[keep & (dom == name)], c[keep & (dom == name)], tsk[keep & (dom == name)],
                             d[keep & (dom == name)]) for name in sorted(tasks_per_domain)}
    da, db = data[a], data[b]
    rng = np.random.default_rng(seed)
    counts_a = task_resample_counts(n_tasks=da.n_tasks, n_boot=n_boot, rng=rng)
    counts_b = task_resample_counts(n_tasks=db.n_tasks, n_boot=n_boot, rng=rng)
    labels, exact = None, False
    if permutation:  # domain labels shuffled across the pooled tasks (each domain keeps its task count)
        labels, exact = domain_labellings(da.n_tasks, db.n_tasks, n_boot, seed)
    parts = _fit_parts(da, db, counts_a, counts_b, labels, decompose, exact)
    sizes = {"n_tasks_a": da.n_tasks, "n_tasks_b": db.n_tasks}
    pooled = part_contrast(parts["pooled"], **sizes)
    others = ("within", "between") if decompose else ()
    con = {"a": a, "b": b, **pooled, **sizes, "n_a": len(da.y), "n_b": len(db.y),
           **{part: part_contrast(parts[part], **sizes) for part in others}}
    detail = {part: part_verdict(con if part == "pooled" else con[part], **sizes) for part in ("pooled", *others)}
    out = {"n_test": int(keep.sum()), "n_tasks": int(len(set(tsk[keep]))), "contrast": con,
           "verdict": "; ".join([verdict_line(con), *(part_sentence(part, con, detail[part]) for part in others)]),
           "verdict_detail": detail}
    if not details:
        return out
    curve_x = np.linspace(0, 1, 21)
    domains = {}
    for name, dd in data.items():
        fits = parts["pooled"].fits
        shared = {a: fits["a"], b: fits["b"]}.get(name)
        domains[name] = _domain_stats(dd, shared, n_boot=n_boot, seed=seed, n_bins=n_bins,
                                      first_token={k: np.asarray(v, dtype=float)[keep & (dom == name)]
                                                   for k, v in (first_token or {}).items()},
                                      curve_x=curve_x)
    finite = d[np.isfinite(d)]
    out.update({
        "unit": UNIT,
        "interval": (f"95 % percentile interval of a task-clustered bootstrap (tasks resampled with replacement "
                     f"within each domain; replicates spread by sqrt(G/(G-1)) for G tasks), B = {n_boot}, seed "
                     f"{seed}; p-values: "
                     + (f"every one of the {math.comb(da.n_tasks + db.n_tasks, da.n_tasks)} assignments of the tasks "
                        "to the two domains (exact)" if exact else
                        f"{con['permutations']} permutations of domain labels across tasks")
                     + "; a "
                     f"difference is claimed only in the hypothesis' direction ({a} falls off more steeply), when "
                     f"interval and permutation test agree, with at least {MIN_TASKS_FOR_CLAIM} tasks per domain; "
                     "pooled = all examples, within = conditional logit (task fixed effects), between = task "
                     "accuracy against the task's mean distance percentile; accuracies (acc, nearest and "
                     "farthest quarter) with task-clustered intervals (and Wilson's over examples in the JSON)"),
        "bootstrap": n_boot, "seed": seed,
        "distance_raw": {"n": int(len(finite)), "min": float(finite.min()), "max": float(finite.max()),
                         "quartiles": [float(v) for v in np.quantile(finite, [0.25, 0.5, 0.75])]},
        "domains": domains,
        "risk_coverage": risk_coverage(x=pct[keep], y=c[keep]),
        "notes": _notes(domains, a, b),
    })
    return out


def _notes(domains: dict[str, Any], a: str, b: str) -> list[str]:
    notes = []
    for name in (a, b):
        st = domains[name]
        if st["accuracy"] < 0.1 or st["accuracy"] > 0.9:
            notes.append(f"{name}: accuracy {st['accuracy']:.2f} is near {'0' if st['accuracy'] < 0.5 else '1'}, so its "
                         "slope is poorly determined; a stronger model (or easier/harder tasks) gives a sharper answer")
        if st["n_tasks"] < 10:
            notes.append(f"{name}: only {st['n_tasks']} tasks; intervals from so few clusters are rough")
        if st["slope_high"] is not None and st["slope_high"] < 0 and st["slope_within_task_high"] is not None \
                and st["slope_within_task_high"] >= 0:
            notes.append(f"{name}: the within-task slope's interval includes 0: the falloff may be hard tasks lying "
                         "far from the training data rather than distance within a task")
    return notes


# --- run folders -----------------------------------------------------------------------------------

def run_views(manifest: Mapping[str, Any]) -> list[str]:
    """"prompt" plus the views ``manifest.views`` lists (names, or objects with a "name")."""
    out = ["prompt"]
    for v in manifest.get("views") or []:
        name = v.get("name") if isinstance(v, dict) else v
        if name and str(name) not in out:
            out.append(str(name))
    return out


def view_encodings(run: Run, view: str, layer: int) -> np.ndarray:
    """Memory-mapped [N, H] encodings of one view and layer (``encodings/<view>/layer_<k>.npy``)."""
    if view == "prompt":
        return run.encodings(layer)
    path = run.path / ENCODINGS / view / f"layer_{int(layer)}.npy"
    try:
        enc: np.ndarray = np.load(path, mmap_mode="r")
        return enc
    except FileNotFoundError:
        raise LLMMapsError(f"{path}: missing (view '{view}' is listed in the manifest)") from None


def variant_distances(run: Run, *, rows: np.ndarray, layer: int, metric: str, view: str = "prompt",
                      centred: bool = False) -> np.ndarray:
    """[len(rows)] distance of each of ``rows`` to its nearest train example in one layer, metric,
    view, on raw or train-mean-centred encodings. The stored column when it is that variant."""

    frame = run.examples
    default_metric = run.manifest.get("distance_metric", "cosine")
    if metric not in METRICS:
        raise LLMMapsError(f"--metric: unknown distance metric '{metric}' (cosine, euclidean)")
    if not centred and layer == run.default_layer and metric == default_metric:
        col = "dist_to_train" if view == "prompt" else f"dist_to_train_{view}"
        if col in frame.columns:
            stored: FloatArray = frame[col].to_numpy(dtype=float, na_value=np.nan)[rows]
            return stored
    enc = view_encodings(run, view, layer)
    is_train = (frame["split"] == "train").to_numpy()
    train = np.asarray(enc[is_train], dtype=np.float32)
    query = np.asarray(enc[rows], dtype=np.float32)
    if len(train) == 0:
        raise LLMMapsError(f"{run.path}: the run has no train examples to measure distances to")
    if centred:
        mean = train.mean(0, dtype=np.float64).astype(np.float32)
        train, query = train - mean, query - mean
    own = np.full(len(rows), -1, dtype=np.int64)
    train_pos = np.full(len(frame), -1, dtype=np.int64)
    train_pos[is_train] = np.arange(int(is_train.sum()))
    own[:] = train_pos[rows]  # a train row skips itself
    dist, _ = knn(query, train, k=1, metric=metric, self_index=own)
    out: FloatArray = np.where(np.isfinite(dist[:, 0]), dist[:, 0], np.nan)
    return out


def findings_run(run_dir: str | Path, *, layer: int | None = None, metric: str | None = None, view: str = "prompt",
                 centred: bool = False, contrast: Sequence[str] | None = None, n_boot: int = 2000, seed: int = 0,
                 split: str = "test", robustness: bool = True, write: bool = True, progress: bool = True,
                 run: Run | None = None, notes: Sequence[str] = (), condition: str | None = None,
                 given: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Findings of a run (``llm-maps findings``): the chosen variant in full and, with
    ``robustness``, the contrast for every stored layer x metric x view x raw/centred. Written to
    RUN/findings.json (atomically, with a history entry; ``given``: the command's config as given)
    when ``write``. ``notes``: caveats to show with the numbers."""

    run = run or Run(run_dir)
    if write and condition is None:  # a read-only run fails now, not after the bootstrap
        check_writable(run.path, [FINDINGS_FILE], hint="use --json FILE for a copy elsewhere")
    frame = run.examples
    where = str(run.path / EXAMPLES)
    layer = run.default_layer if layer is None else int(layer)
    if layer not in run.layers:
        raise LLMMapsError(f"--layer: layer {layer} is not stored in this run (stored: {run.layers})")
    metric = metric or run.manifest.get("distance_metric", "cosine")
    views = run_views(run.manifest)
    if view not in views:
        raise LLMMapsError(f"--view: the run has no view '{view}' (views: {', '.join(views)})")
    contrast = tuple(contrast or DEFAULT_CONTRAST)
    if len(contrast) != 2:
        raise LLMMapsError(f"--contrast: give two domains as A,B, got {','.join(contrast)!r}")
    rows = np.flatnonzero((frame["split"] == split).to_numpy())
    if condition is not None:  # correctness under a condition; the distances stay the examples' own
        rows, correct = condition_rows(run, condition, split)
        where = f"{run.path / CONDITIONS_FILE} ({condition})"
        write = False  # findings.json stays the run's direct findings
    elif frame["correct"].iloc[rows].notna().sum() == 0:
        raise LLMMapsError(f"{where}, field 'correct': no scored {split} examples (run `llm-maps score {run.path}` first)")
    else:
        correct = list(frame["correct"].astype("boolean").to_numpy(dtype=object, na_value=None)[rows])
    domain = frame["domain"].astype(str).to_numpy()[rows]
    task = frame["task"].astype(str).to_numpy()[rows]
    first = {c: frame[c].to_numpy(dtype=float, na_value=np.nan)[rows] for c in FIRST_TOKEN_COLUMNS if c in frame.columns}
    dist = variant_distances(run, rows=rows, layer=layer, metric=metric, view=view, centred=centred)
    result = compute_findings(distance=dist, correct=correct, domain=domain, task=task, contrast=contrast,
                              n_boot=n_boot, seed=seed, first_token=first or None, where=where)
    out = {"format_version": FORMAT_VERSION, "split": split, "layer": layer, "metric": metric, "view": view,
           "centred": bool(centred), "model": run.manifest.get("model"), **result,
           **({"condition": condition} if condition is not None else {})}
    out["notes"] = [*(run.manifest.get("notes") or []), *notes, *out.get("notes", [])]  # the run's own first
    if not first:
        out["notes"].append("first-token statistics (first_entropy, first_top_prob, first_kl_to_mean) "
                                           "are not stored: re-run `llm-maps score RUN` to add them")
    out["robustness"] = robustness_table(run, rows=rows, correct=correct, domain=domain, task=task,
                                         contrast=contrast, n_boot=n_boot, seed=seed, views=views,
                                         progress=progress, where=where) if robustness else []
    note = robustness_floor_note(len(out["robustness"]), out["contrast"]["n_tasks_a"], out["contrast"]["n_tasks_b"],
                                 n_boot)
    if note:
        out["notes"].append(note)
    if write:
        used = sorted({layer, *(r["layer"] for r in out["robustness"])})
        record_stage(run.path, "findings", {"layer": layer, "metric": metric, "view": view, "centred": bool(centred),
                                            "contrast": list(contrast), "n_boot": n_boot, "split": split,
                                            "robustness": bool(robustness)},
                     outputs={FINDINGS_FILE: out}, seed=seed, given=given,
                     inputs=[EXAMPLES, *(f"{ENCODINGS}/layer_{k}.npy" for k in used)])
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family of p-values (None left out of the family and kept as
    None): the k-th smallest of m is multiplied by m - k + 1, made monotone, capped at 1
    (statsmodels' ``multipletests(method="holm")``)."""
    idx = [i for i, v in enumerate(p_values) if v is not None]
    m = len(idx)
    out: list[float | None] = [None] * len(p_values)
    running = 0.0
    for k, i in enumerate(sorted(idx, key=lambda i: float(p_values[i] or 0.0))):
        running = max(running, min(1.0, (m - k) * float(p_values[i] or 0.0)))
        out[i] = running
    return out


def robustness_table(run: Run, *, rows: np.ndarray, correct: Sequence[Any], domain: Sequence[Any],
                     task: Sequence[Any], contrast: Sequence[str], n_boot: int, seed: int, views: list[str],
                     progress: bool = True, where: str = "run") -> list[dict[str, Any]]:
    """The pooled contrast for every stored layer x metric x view, on raw and train-mean-centred
    encodings (cosine only: euclidean distances do not change when every encoding moves by the same
    vector), each with its permutation p-value; the p-values are Holm-adjusted across the table
    (so many looks do not make a claim), ``supported_adjusted`` is the directional verdict on them."""
    from tqdm.auto import tqdm

    combos = [(k, m, v, c) for v in views for k in run.layers for m in METRICS for c in (False, True)
              if not (c and m == "euclidean")]
    out = []
    for k, m, v, c in tqdm(combos, desc="robustness", unit="variant", disable=not progress, dynamic_ncols=True):
        dist = variant_distances(run, rows=rows, layer=k, metric=m, view=v, centred=c)
        res = compute_findings(distance=dist, correct=correct, domain=domain, task=task, contrast=contrast,
                               n_boot=n_boot, seed=seed, details=False, where=where, decompose=False)
        con = res["contrast"]
        lo, hi = con["low"], con["high"]
        out.append({"layer": int(k), "metric": m, "view": v, "centred": bool(c), "slope_a": con["slope_a"],
                    "slope_b": con["slope_b"], "slope_diff": con["slope_diff"], "low": lo, "high": hi,
                    "excludes_0": bool(lo is not None and hi is not None and (lo > 0 or hi < 0)),
                    "p_value": con["p_value"], "_con": con})
    for row, p_adj in zip(out, holm([r["p_value"] for r in out])):
        con = row.pop("_con")
        row["p_holm"] = p_adj
        row["supported_adjusted"] = p_adj is not None and part_verdict(
            con, n_tasks_a=con["n_tasks_a"], n_tasks_b=con["n_tasks_b"], p_value=p_adj) == "supported"
    return out


def robust_excludes_0(row: Mapping[str, Any]) -> bool:
    """A robustness row's "the interval excludes 0" (format 1 files called it ``supported``)."""
    return bool(row.get("excludes_0", row.get("supported", False)))


def read_findings(run_dir: str | Path) -> tuple[dict[str, Any] | None, str | None]:
    """RUN/findings.json as ``llm-maps findings`` wrote it: (result, None), (None, None) when there is
    none, or (None, reason) when it cannot be read."""
    return read_result_json(Path(run_dir) / FINDINGS_FILE, "findings", {"domains": dict, "contrast": dict})


def robustness_floor_note(m: int, ta: int, tb: int, n_boot: int) -> str | None:
    """A note when no Holm-adjusted p of ``m`` robustness rows can fall below ALPHA: the smallest p
    of one row is 1 / (B + 1) with B random permutations; with every assignment of the ta + tb tasks
    (K of them, at most B), it counts the observed one, and its mirror too when ta == tb (swapping
    the domains gives exactly the opposite difference)."""
    if not m:
        return None
    assignments = math.comb(ta + tb, ta)
    if assignments <= n_boot:
        floor = (2 if ta == tb else 1) / assignments
        if m * floor < ALPHA:
            return None
        return (f"robustness: with {m} variants and only {assignments} ways to assign the {ta + tb} tasks to the two "
                f"domains, no Holm-adjusted p can fall below {m * floor:.3f}: more tasks are needed for "
                "'supported (adjusted)' to be reachable")
    if m / (n_boot + 1) < ALPHA:
        return None
    return (f"robustness: with {m} variants and {n_boot} permutations no Holm-adjusted p can fall below "
            f"{m / (n_boot + 1):.3f}: raise --bootstrap for 'supported (adjusted)' to be reachable")


def format_findings(result: dict[str, Any]) -> str:
    """The findings as text: verdict, per-domain table, contrast, robustness."""

    def f(v: float | None, s: str = ".2f") -> str:
        return "-" if v is None else format(v, s)

    lines = [f"findings ({result['split']}{', condition ' + result['condition'] if result.get('condition') else ''}, layer {result['layer']}, {result['metric']}, view {result['view']}"
             f"{', centred' if result.get('centred') else ''}): {result['n_test']} scored examples in "
             f"{result['n_tasks']} tasks", "", result["verdict"], ""]
    if result.get("domains"):
        def acc(a: float | None, lo: float | None, hi: float | None, wlo: float | None = None,
                whi: float | None = None) -> str:
            if lo is not None and hi is not None:
                return f(a) + f" [{f(lo)}, {f(hi)}]"
            # too few tasks for an interval over tasks: Wilson's over examples, marked w
            return f(a) + (f" [{f(wlo)}, {f(whi)}]w" if wlo is not None and whi is not None else "")

        lines.append(f"  {'domain':<12} {'n':>5} {'tasks':>5} {'acc [95% CI]':<17} {'slope [95% CI]':<22} "
                     f"{'within-task':<22} {'AUROC(error) [95% CI]':<22} {'near q acc':<17} far q acc")
        for name, st in result["domains"].items():
            near, far = st["near"], st["far"]
            few = (f"  (no claim: only {st['n_tasks']} tasks)" if st["n_tasks"] < MIN_TASKS_FOR_CLAIM else "")
            failed = (f"  ({st['bootstrap_failed']} of {result.get('bootstrap', '?')} replicates failed to fit, "
                      "left out)" if st.get("bootstrap_failed") else "")
            lines.append(f"  {name:<12} {st['n']:>5} {st['n_tasks']:>5} "
                         f"{acc(st['accuracy'], st.get('accuracy_task_low'), st.get('accuracy_task_high'), st.get('accuracy_low'), st.get('accuracy_high')):<17} "
                         f"{f(st['slope']) + ' [' + f(st['slope_low']) + ', ' + f(st['slope_high']) + ']':<22} "
                         f"{f(st['slope_within_task']) + ' [' + f(st['slope_within_task_low']) + ', ' + f(st['slope_within_task_high']) + ']':<22} "
                         f"{f(st['auroc'], '.3f') + ' [' + f(st['auroc_low'], '.3f') + ', ' + f(st['auroc_high'], '.3f') + ']':<22} "
                         f"{acc(near['accuracy'], near.get('task_low'), near.get('task_high'), near.get('low'), near.get('high')):<17} "
                         f"{acc(far['accuracy'], far.get('task_low'), far.get('task_high'), far.get('low'), far.get('high'))}{few}{failed}")
        lines.append(f"  ({result['unit']}; {result['interval']}; an accuracy's [..]w: Wilson's over examples, where "
                     f"it holds fewer than {MIN_TASKS_FOR_INTERVAL} tasks)")
    con = result["contrast"]
    detail = result.get("verdict_detail") or {}
    lines += ["", f"contrast {con['a']} − {con['b']} (hypothesis: {con['a']} falls off more steeply):"]
    for part in ("pooled", "within", "between"):
        q = con if part == "pooled" else con.get(part)
        if q is None:
            continue
        failed = (f"; {q['bootstrap_failed']} of {result.get('bootstrap', '?')} replicates failed to fit, left out"
                  if q.get("bootstrap_failed") else "")
        lines.append(f"  {part:<8} {f(q['slope_a'])} vs {f(q['slope_b'])}: difference {f(q['slope_diff'])} "
                     f"[{f(q['low'])}, {f(q['high'])}], p = {f(q['p_value'], '.3g')}, minimum detectable "
                     f"{f(q['mdd'])}{failed}  -> {detail.get(part, '-')}")
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    if result.get("robustness"):
        lines += ["", "robustness (pooled slope difference, 95% interval, permutation p Holm-adjusted across the table):",
                  f"  {'view':<10} {'layer':>5} {'metric':<9} {'encodings':<9} {'diff':>7}  {'interval':<18} "
                  f"{'excludes 0':<10} {'p':>6} {'p (Holm)':>8}  supported (adjusted)"]
        for r in result["robustness"]:
            lines.append(f"  {r['view']:<10} {r['layer']:>5} {r['metric']:<9} {'centred' if r['centred'] else 'raw':<9} "
                         f"{f(r['slope_diff']):>7}  {'[' + f(r['low']) + ', ' + f(r['high']) + ']':<18} "
                         f"{'yes' if robust_excludes_0(r) else 'no':<10} {f(r.get('p_value'), '.3g'):>6} "
                         f"{f(r.get('p_holm'), '.3g'):>8}  {'yes' if r.get('supported_adjusted') else 'no'}")
    return "\n".join(lines)
