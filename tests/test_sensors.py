"""Sensor specs are data: bands, units, statistics and standardisation."""

from __future__ import annotations

import json

import pytest
import torch

from s12mae.sensors import get_sensor, list_sensors, load_stats, write_stats


def test_sentinel_band_lists():
    l1c, l2a, s1 = get_sensor("s2_l1c"), get_sensor("s2_l2a"), get_sensor("s1_grd")
    assert l1c.band_names == ["B01", "B02", "B03", "B04", "B05", "B06", "B07", "B08", "B8A", "B09", "B10", "B11", "B12"]
    assert l2a.band_names == [b for b in l1c.band_names if b != "B10"]
    assert s1.band_names == ["VV", "VH"] and s1.units == "dB"
    assert {b.resolution_m for b in l1c.bands} == {10, 20, 60}
    assert l1c.dn_scale == 1e-4
    assert {"s2_l1c", "s2_l2a", "s1_grd", "s1_rtc", "dem"} <= set(list_sensors())


def test_standardisation_round_trip_and_nodata():
    spec = get_sensor("s2_l1c")
    dn = torch.randint(1, 5000, (2, 13, 4, 4))
    dn[0, 3, 1, 1] = 0
    units = spec.to_units(dn)
    assert torch.isnan(units[0, 3, 1, 1]) and units[1, 0, 0, 0] == dn[1, 0, 0, 0] * 1e-4
    z = spec.normalize(units)
    torch.testing.assert_close(spec.denormalize(z), units, equal_nan=True)
    mean = spec.stats["B04"].mean
    assert torch.isclose(spec.normalize(torch.full((13, 1, 1), mean))[3], torch.zeros(1)).all()
    with pytest.raises(ValueError, match="expects 13 channels"):
        spec.normalize(torch.zeros(12, 4, 4))


def test_user_statistics_override_defaults_and_bad_files_are_named(tmp_path):
    path = tmp_path / "stats.json"
    write_stats(path, {"s1_grd": {"bands": {"VV": {"mean": -10.0, "std": 4.0}, "VH": {"mean": -17.0, "std": 5.0}}}})
    assert get_sensor("s1_grd", path).stats["VV"].mean == -10.0
    assert get_sensor("s2_l1c", path).stats == get_sensor("s2_l1c").stats  # falls back
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"s1_grd": {"bands": {"VV": {"mean": 1.0}}}}))
    with pytest.raises(ValueError, match="bad.json: not a valid statistics file"):
        load_stats(bad)
    with pytest.raises(ValueError, match="statistics file not found"):
        get_sensor("s1_grd", tmp_path / "missing.json")
    with pytest.raises(KeyError, match="unknown sensor"):
        get_sensor("landsat9")


def test_sensor_roles_are_data():
    from s12mae.sensors import layout_sensors, sensors_of_family

    assert sensors_of_family("s2") == ["s2_l1c", "s2_l2a"]
    assert sensors_of_family("s1") == ["s1_grd", "s1_rtc"]
    assert get_sensor("s2_l2a").baseline_offset and not get_sensor("s1_grd").baseline_offset
    assert layout_sensors("ssl4eo") == {"s2c": "s2_l1c", "s2a": "s2_l2a", "s1": "s1_grd"}
    with pytest.raises(KeyError, match="nolayout"):
        layout_sensors("nolayout")


def test_statistics_files_are_read_once_and_reread_when_rewritten(tmp_path, monkeypatch):
    import json

    from s12mae import sensors

    path = tmp_path / "stats.json"
    bands = {b: {"mean": 0.0, "std": 1.0} for b in get_sensor("s1_grd").band_names}
    path.write_text(json.dumps({"s1_grd": {"bands": bands}}))
    sensors._load_stats_cached.cache_clear()
    reads = []
    real = sensors.json.loads
    monkeypatch.setattr(sensors.json, "loads", lambda t: reads.append(1) or real(t))
    for _ in range(5):
        get_sensor("s1_grd", path)
    assert len(reads) == 2  # the user file once, the shipped defaults once
    bands["VV"]["mean"] = 3.0
    path.write_text(json.dumps({"s1_grd": {"bands": bands}}) + "   ")
    assert get_sensor("s1_grd", path).stats["VV"].mean == 3.0
