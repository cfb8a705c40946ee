"""Intervals on the real null control: wider, exact intervals must keep the null scan at "low"."""

from __future__ import annotations

import pytest


@pytest.mark.slow
def test_null_control_stays_low_with_every_attack_and_intervals_have_width(all_attacks_null_scan, null_scan):
    for results in (all_attacks_null_scan, null_scan):
        assert results["verdict"]["level"] == "low", results["verdict"]["reasons"]
        for p in results["plugins"]:
            for key, m in p["metrics"].items():
                if m.get("ci") is not None and m["value"] is not None and key != "frechet_distance_real_baseline":
                    lo, hi = m["ci"]
                    assert lo <= m["value"] <= hi and hi > lo, (p["name"], key, m)
