"""Capping configs: calibration percentiles, our file format and the reference layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from assistant_axis.axis import unit
from assistant_axis.capping import (
    CappingConfig,
    calibrate,
    default_windows,
    experiment_id,
    load_capping_config,
    parse_experiment_id,
)


@pytest.fixture()
def grid():
    gen = torch.Generator().manual_seed(0)
    axis = torch.randn(8, 16, generator=gen)
    proj = torch.randn(200, 8, generator=gen) * 3 + 1
    return axis, proj, calibrate(proj, axis, [(2, 5), (4, 8)], [0.01, 0.25, 0.5, 0.75], model="toy")


def test_calibration_matches_numpy_percentiles(grid):
    axis, proj, cfg = grid
    assert [e.id for e in cfg.experiments][:2] == ["layers_2:5-p0.01", "layers_2:5-p0.25"]
    exp = cfg.get("layers_4:8-p0.25")
    assert exp.layers == [4, 5, 6, 7]
    for cap in exp.caps:
        # p0.25 in the role-ward frame = floor at the 75th percentile of Assistant projections
        assert cap.floor == pytest.approx(np.percentile(proj[:, cap.layer].numpy(), 75))
        assert torch.allclose(cap.vector, unit(axis[cap.layer]))
    low = cfg.get("layers_2:5-p0.75").caps[0].floor
    high = cfg.get("layers_2:5-p0.01").caps[0].floor
    assert low < high


def test_our_format_round_trip(grid, tmp_path):
    _, _, cfg = grid
    cfg.recommended = "layers_2:5-p0.25"
    cfg.save(tmp_path / "capping.safetensors")
    back = CappingConfig.load(tmp_path / "capping.safetensors")
    assert back.model == "toy" and back.recommended == "layers_2:5-p0.25"
    assert [e.id for e in back.experiments] == [e.id for e in cfg.experiments]
    for a, b in zip(cfg.experiments, back.experiments):
        for x, y in zip(a.caps, b.caps):
            assert x.layer == y.layer and x.floor == pytest.approx(y.floor) and torch.allclose(x.vector, y.vector)


def test_reference_layout_round_trip(grid, tmp_path):
    _, _, cfg = grid
    path = tmp_path / "capping_config.pt"
    cfg.save_reference(path)
    raw = torch.load(path, weights_only=True)  # the reference layout, loadable without unpickling code
    assert set(raw) == {"vectors", "experiments", "first_token"} and raw["first_token"] == "skip"
    ref = load_capping_config(path)  # the reference call: the same dict, checked and loaded safely
    assert type(ref) is dict and [e["id"] for e in ref["experiments"]] == [e["id"] for e in raw["experiments"]]
    name = raw["experiments"][0]["interventions"][0]["vector"]
    assert torch.equal(ref["vectors"][name]["vector"], raw["vectors"][name]["vector"])
    cap = cfg.experiments[0].caps[0]
    assert raw["vectors"][name]["layer"] == cap.layer
    # role-ward vector and ceiling: u = -v, cap = -tau
    assert torch.allclose(raw["vectors"][name]["vector"], -cap.vector)
    assert raw["experiments"][0]["interventions"][0]["cap"] == pytest.approx(-cap.floor)
    back = CappingConfig.load(path)
    assert back.cap_first_token is False
    for a, b in zip(cfg.experiments, back.experiments):
        assert a.id == b.id
        for x, y in zip(a.caps, b.caps):
            assert x.layer == y.layer and x.floor == pytest.approx(y.floor) and torch.allclose(x.vector, y.vector, atol=1e-6)


def test_reference_file_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "bad.pt"
    torch.save({"vectors": {}, "experiments": [Evil()]}, path)
    with pytest.raises(ValueError, match="weights_only"):
        load_capping_config(path)


def test_bad_reference_dict_names_the_problem():
    with pytest.raises(ValueError, match="names vector 'nope'"):
        CappingConfig.from_reference({"vectors": {}, "experiments": [{"id": "x", "interventions": [{"vector": "nope", "cap": 1.0}]}]})


def test_experiment_ids_and_windows():
    assert experiment_id(46, 54, 0.25) == "layers_46:54-p0.25"
    assert parse_experiment_id("layers_46:54-p0.25") == (46, 54, 0.25)
    with pytest.raises(ValueError):
        parse_experiment_id("46-54")
    windows = default_windows(30)
    assert all(0 <= a < b <= 30 for a, b in windows) and len(windows) == 3
    with pytest.raises(ValueError, match="does not fit"):
        calibrate(np.zeros((3, 4)), torch.ones(4, 2), [(2, 9)], [0.5])
