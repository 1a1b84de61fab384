"""Exact neighbours and saved projections, checked against brute force on tiny inputs."""

from __future__ import annotations

import numpy as np
import pytest

from llm_maps.neighbours import knn, nearest_train, pairwise_distances
from pipelines.project import Projection, _smooth_knn_weights, fit_projection


def test_cosine_and_euclidean_distances_exact():
    a = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 4.0]])
    d = pairwise_distances(a, a, "cosine")
    np.testing.assert_allclose(d, [[0, 1, 0.4], [1, 0, 0.2], [0.4, 0.2, 0]], atol=1e-12)
    e = pairwise_distances(a, a, "euclidean")
    np.testing.assert_allclose(e, [[0, np.sqrt(5), np.sqrt(20)], [np.sqrt(5), 0, np.sqrt(13)],
                                   [np.sqrt(20), np.sqrt(13), 0]], atol=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_nearest_train_matches_brute_force(metric):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(57, 9)).astype(np.float16)
    is_train = rng.random(57) < 0.6
    dist, rows, dists = nearest_train(x, is_train, k=4, metric=metric)
    full = pairwise_distances(x, x, metric)
    train = np.flatnonzero(is_train)
    for i in range(len(x)):
        cand = [j for j in train if j != i]
        order = sorted(cand, key=lambda j: (full[i, j], j))[:4]
        assert rows[i].tolist() == order
        np.testing.assert_allclose(dists[i], full[i, order], atol=1e-12)
        assert dist[i] == pytest.approx(full[i, order[0]], abs=1e-12)


def test_knn_chunking_gives_identical_results():
    rng = np.random.default_rng(1)
    q, b = rng.normal(size=(40, 5)), rng.normal(size=(30, 5))
    d1, i1 = knn(q, b, k=3, metric="euclidean")
    d2, i2 = knn(q, b, k=3, metric="euclidean", chunk_bytes=8 * 30 * 7)  # 7 rows per chunk
    np.testing.assert_array_equal(i1, i2)
    np.testing.assert_array_equal(d1, d2)


def test_single_train_example_has_no_other_neighbour():
    x = np.eye(3)
    dist, rows, _ = nearest_train(x, np.array([True, False, False]), k=2)
    assert np.isnan(dist[0]) and rows[0].tolist() == [-1, -1]
    assert rows[1].tolist() == [0, -1] and dist[1] == pytest.approx(1.0)


def test_smooth_knn_weights_sum_to_log2_k():
    d = np.array([[0.1, 0.2, 0.4, 0.8], [0.0, 0.5, 0.5, 0.6]])
    w = _smooth_knn_weights(d)
    np.testing.assert_allclose(w[0].sum(), np.log2(4), rtol=1e-6)
    assert w[0, 0] == pytest.approx(1.0) and np.all(np.diff(w[0]) < 0)
    # as in umap-learn, rho is the nearest *non-zero* distance: everything up to it weighs 1, and
    # when that alone exceeds log2(k) sigma shrinks to 0 and the rest weigh nothing
    np.testing.assert_allclose(w[1], [1.0, 1.0, 1.0, 0.0], atol=1e-12)


def test_pca_projection_round_trip(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(50, 8)).astype(np.float16)
    proj, coords = fit_projection(x, np.arange(30), method="pca", metric="euclidean", seed=0)
    proj.save(tmp_path / "p")
    again = Projection.load(tmp_path / "p")
    np.testing.assert_allclose(again.transform(x.astype(np.float32)), coords, atol=1e-9)
    # refit is deterministic, including the axis signs
    _, coords2 = fit_projection(x, np.arange(30), method="pca", metric="euclidean", seed=0)
    np.testing.assert_array_equal(coords, coords2)
    assert not list((tmp_path / "p").glob("*.pkl"))


def test_umap_projection_saved_as_arrays_places_points(tmp_path):
    rng = np.random.default_rng(3)
    centers = np.array([[8.0] * 6, [-8.0] * 6, [8.0, -8.0] * 3])
    labels = np.repeat([0, 1, 2], 30)
    x = (centers[labels] + rng.normal(size=(90, 6))).astype(np.float32)
    fit = np.flatnonzero(np.arange(90) % 5 != 0)
    proj, coords = fit_projection(x, fit, method="umap", metric="euclidean", seed=0, n_neighbors=10)
    proj.save(tmp_path / "u")
    assert sorted(p.name for p in (tmp_path / "u").iterdir()) == ["embedding.npy", "fit_rows.npy", "projection.json"]
    loaded = Projection.load(tmp_path / "u")
    held = np.flatnonzero(np.arange(90) % 5 == 0)
    placed = loaded.transform(x[held], x[loaded.fit_rows])
    np.testing.assert_allclose(placed, coords[held], atol=1e-9)
    # each held-out point lands closest to the centroid of its own cluster on the map
    cents = np.array([coords[fit][labels[fit] == c].mean(axis=0) for c in range(3)])
    nearest_cluster = np.argmin(((placed[:, None, :] - cents[None]) ** 2).sum(-1), axis=1)
    assert nearest_cluster.tolist() == labels[held].tolist()
    # and a refit with the same seed gives the same map
    _, coords2 = fit_projection(x, fit, method="umap", metric="euclidean", seed=0, n_neighbors=10)
    np.testing.assert_allclose(coords2, coords, atol=1e-6)
