"""compute_pca, the scalers and the variance plot, checked against a PCA recomputed here from an SVD.

The expected values never call scikit-learn or the module under test: centre (and for the L2 scaler,
normalise and centre again), take the SVD, and read off directions, scores and variance ratios.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

from assistant_axis.pca import (
    L2MeanScaler,
    MeanScaler,
    components_for_threshold,
    compute_pca,
    plot_variance_explained,
)

TOL = 1e-4


def _data(n: int, d: int, seed: int = 0, layers: int | None = None) -> np.ndarray:
    """float32 data with clearly separated variances per direction (no ties, so PCs are unique up to sign)."""
    rng = np.random.default_rng(seed)
    shape = (n, d) if layers is None else (n, layers, d)
    scales = np.linspace(3.0, 0.3, d)
    return (rng.standard_normal(shape) * scales + rng.standard_normal(d) * 5).astype(np.float32)


def _reference_pca(x: np.ndarray, l2: bool = False) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(components, scores, variance ratio) from first principles, in float64."""
    x = x.astype(np.float64)
    z = x - x.mean(axis=0)
    if l2:
        z = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        z = z - z.mean(axis=0)  # PCA centres whatever it is given
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    return vt, z @ vt.T, s**2 / np.sum(s**2)


def _assert_matches(result: tuple, x: np.ndarray, l2: bool = False, k: int | None = None) -> None:
    """Compare the first ``k`` components (default all), allowing one sign flip per component."""
    transformed, ratio, n_components, pca, _ = result
    vt, scores, expected_ratio = _reference_pca(x, l2)
    k = len(expected_ratio) if k is None else k
    assert n_components == min(x.shape) == len(ratio)
    np.testing.assert_allclose(ratio, expected_ratio, atol=TOL)
    assert transformed.shape == (x.shape[0], n_components)
    for i in range(k):
        sign = np.sign(np.dot(pca.components_[i], vt[i]))
        assert sign != 0
        np.testing.assert_allclose(pca.components_[i] * sign, vt[i], atol=TOL)
        np.testing.assert_allclose(
            transformed[:, i] * sign, scores[:, i], atol=TOL * max(1.0, np.abs(scores[:, i]).max())
        )


# ---------------------------------------------------------------- compute_pca


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize("scaler_cls", [None, MeanScaler])
def test_2d_matches_svd_of_centred_data(kind, scaler_cls):
    x = _data(40, 16)
    inp = torch.from_numpy(x) if kind == "torch" else x
    result = compute_pca(inp, None, scaler=None if scaler_cls is None else scaler_cls(), verbose=False)
    _assert_matches(result, x)
    assert result[1].dtype == np.float32  # float32 in, float32 analysis


def test_variance_explained_is_per_component_not_cumulative():
    x = _data(30, 8)
    _, ratio, n_components, _, _ = compute_pca(x, None, verbose=False)
    assert n_components == 8
    assert np.isclose(ratio.sum(), 1.0, atol=1e-5)
    assert np.all(np.diff(ratio) <= 1e-7)  # decreasing, so not a cumulative curve
    assert ratio[-1] < 0.1


@pytest.mark.parametrize("layer", [2, -1, 0])
def test_3d_input_uses_the_given_layer(layer):
    x = _data(30, 12, seed=1, layers=4)
    result = compute_pca(torch.from_numpy(x), layer, scaler=MeanScaler(), verbose=False)
    _assert_matches(result, x[:, layer, :])


def test_3d_list_of_tensors_equals_stacked_tensor():
    x = _data(25, 10, seed=2, layers=3)
    stacked = compute_pca(torch.from_numpy(x), 1, verbose=False)
    listed = compute_pca([torch.from_numpy(row) for row in x], 1, verbose=False)
    np.testing.assert_allclose(listed[0], stacked[0], atol=1e-6)
    _assert_matches(listed, x[:, 1, :])


def test_l2_mean_scaler_pca_matches_normalised_recomputation():
    x = _data(50, 12, seed=3)
    result = compute_pca(torch.from_numpy(x), None, scaler=L2MeanScaler(), verbose=False)
    _assert_matches(result, x, l2=True)
    # and it really differs from plain centring (the normalisation is not a no-op here)
    plain = compute_pca(x, None, verbose=False)
    assert not np.allclose(plain[1], result[1], atol=1e-3)


def test_more_features_than_samples_keeps_n_components():
    x = _data(10, 32, seed=4)
    result = compute_pca(x, None, scaler=MeanScaler(), verbose=False)
    # centring leaves rank n-1: the last component carries no variance and has no defined direction
    _assert_matches(result, x, k=9)
    assert result[2] == 10
    assert result[1][-1] < 1e-6


def test_scaler_none_returns_no_scaler_and_sklearn_centres():
    x = _data(30, 6, seed=5)
    t_none, _, _, pca_none, fitted_none = compute_pca(x, None, scaler=None, verbose=False)
    t_mean, _, _, pca_mean, fitted_mean = compute_pca(x, None, scaler=MeanScaler(), verbose=False)
    assert fitted_none is None
    assert isinstance(fitted_mean, MeanScaler)
    np.testing.assert_allclose(fitted_mean.mean, x.astype(np.float64).mean(0), atol=TOL)
    np.testing.assert_allclose(pca_none.mean_, x.astype(np.float64).mean(0), atol=TOL)
    np.testing.assert_allclose(pca_mean.mean_, 0.0, atol=TOL)
    np.testing.assert_allclose(np.abs(t_none), np.abs(t_mean), atol=TOL * 10)


def test_duck_typed_and_callable_scalers():
    x = _data(20, 5, seed=6)

    class FitTransformOnly:
        def __init__(self):
            self.mean = None

        def fit(self, data):
            self.mean = data.mean(0)

        def transform(self, data):
            return data - self.mean

    obj = FitTransformOnly()
    result = compute_pca(x, None, scaler=obj, verbose=False)
    assert result[4] is obj and obj.mean is not None
    _assert_matches(result, x)
    result = compute_pca(x, None, scaler=lambda a: a * 2.0, verbose=False)
    assert result[4] is None
    _assert_matches(result, x * 2.0)
    with pytest.raises(TypeError):
        compute_pca(x, None, scaler=42, verbose=False)


def test_bfloat16_tensor_is_analysed_in_float32():
    x = torch.from_numpy(_data(20, 6, seed=7)).bfloat16()
    result = compute_pca(x, None, verbose=False)
    _assert_matches(result, x.float().numpy())


def test_bad_inputs():
    with pytest.raises(ValueError):
        compute_pca(_data(5, 4, layers=2), None, verbose=False)  # 3-D needs a layer
    with pytest.raises(ValueError):
        compute_pca(np.zeros(4, dtype=np.float32), None, verbose=False)
    with pytest.raises(ValueError):
        compute_pca(_data(1, 4), None, verbose=False)
    with pytest.raises(TypeError):
        compute_pca("not an array", None, verbose=False)


def test_verbose_prints_summary(capsys):
    x = _data(30, 8)
    _, ratio, _, _, _ = compute_pca(x, None, verbose=True)
    out = capsys.readouterr().out
    assert "8 components" in out
    k70 = int(np.argmax(np.cumsum(ratio) >= 0.7)) + 1
    assert f"Components for 70% of the variance: {k70}" in out
    compute_pca(x, None, verbose=False)
    assert capsys.readouterr().out == ""


def test_components_for_threshold():
    ratio = np.array([0.5, 0.25, 0.15, 0.1])
    assert components_for_threshold(ratio, 0.5) == 1
    assert components_for_threshold(ratio, 0.7) == 2
    assert components_for_threshold(ratio, 0.9) == 3
    assert components_for_threshold(ratio[:2], 0.9) is None


# ---------------------------------------------------------------- scalers


@pytest.mark.parametrize("cls", [MeanScaler, L2MeanScaler])
def test_scalers_follow_their_formulas_and_return_the_kind_given(cls):
    x = _data(12, 7, seed=8)
    mean = x.astype(np.float64).mean(0)
    expected = x - mean
    if cls is L2MeanScaler:
        expected = expected / np.linalg.norm(expected, axis=1, keepdims=True)
    out_np = cls().fit_transform(x)
    assert isinstance(out_np, np.ndarray)
    np.testing.assert_allclose(out_np, expected, atol=TOL)
    out_t = cls().fit_transform(torch.from_numpy(x))
    assert isinstance(out_t, torch.Tensor) and out_t.dtype == torch.float32
    np.testing.assert_allclose(out_t.numpy(), expected, atol=TOL)
    if cls is L2MeanScaler:
        np.testing.assert_allclose(np.linalg.norm(out_np, axis=1), 1.0, atol=TOL)


def test_l2_scaler_eps_guards_a_row_equal_to_the_mean():
    x = np.array([[1.0, 2.0], [3.0, 4.0], [2.0, 3.0]], dtype=np.float32)  # last row is the mean
    out = L2MeanScaler().fit_transform(x)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[2], 0.0)


@pytest.mark.parametrize("cls", [MeanScaler, L2MeanScaler])
def test_scaler_mean_of_3d_input_is_per_feature(cls):
    x = _data(6, 5, layers=3)
    scaler = cls().fit(torch.from_numpy(x))
    np.testing.assert_allclose(scaler.mean, x.astype(np.float64).mean(axis=(0, 1)), atol=TOL)


@pytest.mark.parametrize("cls", [MeanScaler, L2MeanScaler])
def test_state_dict_round_trip(cls):
    x, y = _data(20, 6, seed=9), _data(8, 6, seed=10)
    fitted = cls().fit(x)
    if cls is L2MeanScaler:
        fitted.eps = 0.5  # a non-default eps must travel too
    state = fitted.state_dict()
    assert isinstance(state["mean"], np.ndarray)
    restored = cls()
    restored.load_state_dict(state)
    np.testing.assert_array_equal(restored.transform(y), fitted.transform(y))
    if cls is L2MeanScaler:
        assert restored.eps == 0.5
    # a tensor mean in the state is accepted too
    from_tensor = cls()
    from_tensor.load_state_dict({**state, "mean": torch.from_numpy(state["mean"])})
    np.testing.assert_allclose(from_tensor.transform(y), fitted.transform(y), atol=1e-6)


@pytest.mark.parametrize("cls", [MeanScaler, L2MeanScaler])
def test_fit_keeps_an_existing_mean(cls):
    """Reference semantics: a preset, loaded or earlier-fitted mean is not replaced by fit()."""
    x, y = _data(20, 4, seed=11), _data(20, 4, seed=12) + 10
    preset = cls(mean=torch.zeros(4))
    preset.fit(y)
    np.testing.assert_array_equal(preset.mean, np.zeros(4))
    scaler = cls().fit(x)
    scaler.fit(y)
    np.testing.assert_allclose(scaler.mean, x.astype(np.float64).mean(0), atol=TOL)


def test_unfitted_scaler_raises():
    with pytest.raises(RuntimeError):
        MeanScaler().transform(np.zeros((2, 3)))
    with pytest.raises(RuntimeError):
        L2MeanScaler().transform(torch.zeros(2, 3))


def test_scalers_are_distinct_classes():
    assert not isinstance(L2MeanScaler(), MeanScaler)
    assert not isinstance(MeanScaler(), L2MeanScaler)


# ---------------------------------------------------------------- plot


def _curve_lines(fig: Figure) -> list:
    return [line for line in fig.axes[0].get_lines() if not line.get_label().startswith("_")]


def test_plot_single_array():
    ratio = np.array([0.5, 0.25, 0.15, 0.06, 0.04])
    fig = plot_variance_explained(ratio, title="T", subtitle="sub")
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    lines = _curve_lines(fig)
    assert len(lines) == 1  # the cumulative curve
    np.testing.assert_allclose(lines[0].get_ydata(), np.cumsum(ratio) * 100)
    assert len(ax.patches) == 5  # one bar per component
    np.testing.assert_allclose([p.get_height() for p in ax.patches], ratio * 100)
    thresholds = [line for line in ax.get_lines() if line.get_label().startswith("_threshold")]
    assert len(thresholds) == 4  # 70, 80, 90, 95 are all reached
    texts = [t.get_text() for t in ax.texts]
    assert "70% (2 dims)" in texts and "95% (4 dims)" in texts
    assert fig._suptitle.get_text() == "T" and ax.get_title() == "sub"


def test_plot_max_components_and_thresholds_off():
    ratio = torch.tensor([0.5, 0.25, 0.15, 0.06, 0.04])
    fig = plot_variance_explained(ratio, max_components=2, show_thresholds=True)
    ax = fig.axes[0]
    assert len(ax.patches) == 2
    np.testing.assert_allclose(_curve_lines(fig)[0].get_ydata(), [50, 75], atol=1e-4)
    assert [t.get_text() for t in ax.texts] == ["70% (2 dims)"]  # only thresholds the shown part reaches
    fig = plot_variance_explained(ratio.numpy(), show_thresholds=False)
    assert len(fig.axes[0].get_lines()) == 1 and not fig.axes[0].texts


def test_plot_dict_draws_one_curve_per_key():
    curves = {"layer 10": np.array([0.6, 0.3, 0.1]), "layer 15": np.array([0.4, 0.3, 0.2, 0.1]), "x": [1.0]}
    fig = plot_variance_explained(curves)
    lines = _curve_lines(fig)
    assert [line.get_label() for line in lines] == list(curves)
    np.testing.assert_allclose(lines[1].get_ydata(), [40, 70, 90, 100])
    assert not fig.axes[0].patches  # no bars when comparing curves
    fig.savefig(__import__("io").BytesIO(), format="png")  # renders on the Agg canvas


def test_plot_reference_result_dict_is_one_curve():
    fig = plot_variance_explained({"variance_explained": np.array([0.7, 0.3])})
    assert len(_curve_lines(fig)) == 1 and len(fig.axes[0].patches) == 2


def test_plot_rejects_empty_input():
    with pytest.raises(ValueError):
        plot_variance_explained(np.array([]))
    with pytest.raises(ValueError):
        plot_variance_explained({})
    with pytest.raises(ValueError):
        plot_variance_explained(np.array([1.0]), max_components=0)
