"""PHI-S standardization: the Hadamard matrices, exact mergeable second moments in the cache, the transform
against an independent formulation, and a student trained with it whose adapters answer in teacher space."""

import numpy as np
import pytest
import torch

from radio.normalize import PhiS, RunningMoments, TargetStats, hadamard

REGISTRY_WIDTHS = [16, 24, 32, 256, 384, 512, 768, 1024, 1152, 1280, 1536]


@pytest.mark.parametrize("n", [1, 2, 4, 12, 20, *REGISTRY_WIDTHS])
def test_hadamard_is_orthonormal_with_equal_magnitudes(n):
    H = hadamard(n)
    assert H.shape == (n, n)
    np.testing.assert_allclose(H @ H.T, np.eye(n), atol=1e-12)
    np.testing.assert_allclose(np.abs(H), 1 / np.sqrt(n), rtol=1e-12)


@pytest.mark.parametrize("n", [3, 6, 28])
def test_width_without_a_hadamard_matrix_says_what_to_do(n):
    with pytest.raises(ValueError, match=f"order {n}.*standardize=channel"):
        hadamard(n)


def _correlated(n, c, seed=0):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((c, c)) * np.linspace(3.0, 0.05, c)  # very unequal variances, correlated channels
    return rng.standard_normal((n, c)) @ A.T + rng.standard_normal(c) * 4


def test_moments_merge_in_any_order_equals_numpy():
    x = _correlated(3000, 12)
    whole = RunningMoments().update(x)
    parts = [RunningMoments().update(x[i : i + n]) for i, n in ((0, 7), (7, 1000), (1007, 1993))]
    merged = RunningMoments()
    for p in (parts[2], parts[0], parts[1]):
        merged.merge(RunningMoments.from_dict(p.to_dict()))  # through the shard footer's encoding
    ref = np.cov(x, rowvar=False, ddof=0)
    for m in (whole, merged):
        assert m.count == 3000
        np.testing.assert_allclose(m.mean, x.mean(0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m.cov, ref, rtol=2e-6, atol=2e-6 * np.abs(ref).max())
    with pytest.raises(ValueError, match="second moments"):
        RunningMoments.from_dict({"count": 3, "mean": [0.0], "m2": [1.0]})


def test_phis_against_an_independent_formulation():
    """The paper's properties, checked with other means than the implementation uses (SVD of the data
    rather than eigh of the covariance): every output dimension has unit variance (the Hadamard's job: a
    plain PCA rotation leaves the eigenvalues unequal), the outputs are decorrelated up to the isotropic
    scale, and inner products are the centered inputs' divided by trace(cov) / C (an orthogonal map times
    one scalar keeps the teacher's geometry)."""
    x = _correlated(4000, 16, seed=1)
    p = PhiS.fit(x.mean(0), np.cov(x, rowvar=False, ddof=0))
    st = TargetStats([0.0] * 16, [1.0] * 16, phis_features=p)
    y = st.normalize_features(torch.from_numpy(x)).numpy()
    centered = x - x.mean(0)
    sv = np.linalg.svd(centered, compute_uv=False)
    sigma2 = (sv**2).sum() / len(x) / 16  # trace(cov) / C from the singular values
    np.testing.assert_allclose(p.scale**2, sigma2, rtol=1e-10)
    np.testing.assert_allclose(y.var(0), np.ones(16), rtol=1e-8)
    np.testing.assert_allclose(y[:50] @ y[:50].T, centered[:50] @ centered[:50].T / sigma2, rtol=1e-8, atol=1e-8)
    # per-channel standardization, by contrast, changes the geometry
    ch = centered / centered.std(0)
    assert not np.allclose(ch[:50] @ ch[:50].T, centered[:50] @ centered[:50].T / sigma2, rtol=1e-2)
    # the inverse, after a trip through the checkpoint's JSON form
    back = TargetStats.from_dict(st.to_dict())
    assert back.standardize == "phis"
    np.testing.assert_allclose(back.denormalize_features(torch.from_numpy(y)).numpy(), x, atol=1e-9)


def test_cache_second_moments_are_exact_and_trainer_exports_teacher_space(tmp_path):
    """A cache's merged second moments equal numpy's covariance of every stored target; a student trained
    with standardize=phis carries the PHI-S maps, and its adapters' outputs come back in teacher space."""
    from pipelines.config import load_config
    from pipelines.synthetic import make_synthetic_cache
    from pipelines.train import TrainJobConfig, train
    from radio import load_student
    from radio.cache import CacheReader, decode_features

    cache = tmp_path / "c"
    make_synthetic_cache(
        cache, limit=12, views=2, per_shard=4, teachers={"syn-a": (8, 12, (4, 4)), "syn-b": (None, 16, (4, 4))}
    )
    reader = CacheReader(str(cache), ["syn-a", "syn-b"])
    rows = [b.teachers["syn-a"] for u in range(reader.manifest.units) for b in reader.iter_unit(u, batch_rows=64)]
    feats = np.concatenate([decode_features(r).numpy().reshape(-1, 12) for r in rows]).astype(np.float64)
    f, s = reader.merged_moments("syn-a")
    np.testing.assert_allclose(f.cov, np.cov(feats, rowvar=False, ddof=0), rtol=1e-5, atol=1e-6)
    assert s is not None and s.count == 24

    out = tmp_path / "run"
    args = [
        f"cache={cache}",
        f"output={out}",
        "teachers=[syn-a,syn-b]",
        "student.patch_size=8",
        "student.depth=2",
        "loader.batch_size=8",
        "loader.num_workers=0",
        "mlflow.enabled=false",
        "max_steps=3",
        "standardize=phis",
    ]
    result = train(load_config(TrainJobConfig, None, args))
    model = load_student(result["student"])
    assert {t: st.standardize for t, st in model.stats.items()} == {"syn-a": "phis", "syn-b": "phis"}
    st = model.stats["syn-a"]
    z = torch.randn(2, 4, 4, 12)
    torch.testing.assert_close(st.normalize_features(st.denormalize_features(z)), z, atol=1e-5, rtol=1e-5)
    x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        pred = model.predict(x)
        raw = model.model(x)["syn-a"]  # the heads' standardized outputs, as trained
    p = st.phis_features
    want = (raw["features"].double() * p.scale) @ torch.from_numpy(p.rotation) + torch.from_numpy(
        p.mean
    )  # the inverse, written out
    torch.testing.assert_close(pred.adapters["syn-a"]["features"].double(), want, atol=1e-4, rtol=1e-4)
    assert pred.adapters["syn-a"]["summary"].shape == (2, 8) and "summary" not in pred.adapters["syn-b"]


def test_phis_is_refused_for_online_teachers(tmp_path):
    from pipelines.config import ConfigError, load_config
    from pipelines.train import TrainJobConfig, validate

    with pytest.raises(
        ConfigError, match="override .standardize=phis.: .standardize. must be channel when teachers run online"
    ):
        load_config(
            TrainJobConfig,
            None,
            [f"output={tmp_path / 'o'}", "teachers=[tiny-clip]", "online={tiny-clip: {}}", "standardize=phis"],
            validate=validate,
        )
