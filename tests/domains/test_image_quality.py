"""The image-quality benchmark's scorer (benchmarks/image_quality.py): its maths against closed forms, and
that it ranks held-out real digits above noise and above digits of the wrong class."""

import math

import numpy as np
import pytest

from benchmarks.image_quality import HELD_OUT, Scorer, class_entropy, frechet_distance, split


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    cov = a @ a.T + np.eye(4)
    mu = rng.normal(size=4)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # equal covariances: only the means' squared distance is left
    assert frechet_distance(mu, cov, mu + 2.0, cov) == pytest.approx(4 * 4.0, rel=1e-8)
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    d1, d2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    assert frechet_distance(np.zeros(2), d1, np.zeros(2), d2) == pytest.approx((1 - 3) ** 2 + (2 - 1) ** 2)


def test_class_entropy():
    assert class_entropy(np.arange(1000) % 10) == pytest.approx(math.log(10))
    assert class_entropy(np.full(50, 3)) == 0.0
    assert class_entropy(np.array([0, 0, 1, 1])) == pytest.approx(math.log(2))


def test_split_is_fixed_stratified_and_disjoint():
    y = np.repeat(np.arange(10), 180)
    tr, te = split(y)
    tr2, te2 = split(y)
    assert np.array_equal(tr, tr2) and np.array_equal(te, te2)
    assert len(te) == HELD_OUT and not set(tr) & set(te)
    assert np.bincount(y[te]).min() == HELD_OUT // 10


def test_scorer_ranks_real_digits_above_noise_and_wrong_labels():
    s = Scorer()
    assert s.test_accuracy > 0.9
    rng = np.random.default_rng(0)
    real = s.score(s.x_train[rng.choice(len(s.x_train), 300, replace=False)], None)
    noise = s.score(rng.uniform(0, 1, (300, s.x_test.shape[1])))
    assert real["frechet_pca"] < noise["frechet_pca"] / 5
    assert real["max_prob"] > noise["max_prob"] + 0.2
    assert real["class_entropy"] > noise["class_entropy"]
    right = s.score(s.x_test, s.y_test)["label_accuracy"]
    wrong = s.score(s.x_test, (s.y_test + 1) % 10)["label_accuracy"]
    assert right > 0.9 and wrong < 0.1
