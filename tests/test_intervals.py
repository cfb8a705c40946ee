"""Intervals on the real null control: exact, wider intervals must keep the null scan at "low"."""

from __future__ import annotations

import pytest


def _intervals_have_width(results: dict) -> None:
    for p in results["plugins"]:
        for key, m in p["metrics"].items():
            if m.get("ci") is not None and m["value"] is not None:
                lo, hi = m["ci"]
                assert lo <= m["value"] <= hi and hi > lo, (p["name"], key, m)


def test_null_scan_stays_low_and_intervals_have_width(null_scan):
    assert null_scan["verdict"]["level"] == "low", null_scan["verdict"]["reasons"]
    _intervals_have_width(null_scan)


@pytest.mark.slow
def test_null_control_with_every_attack_never_reaches_high(all_attacks_null_scan):
    # pia flags 5 of 64 null members above every one of 128 holdout scores: "medium" (TPR interval above
    # 1%), with the former bootstrap interval (0.031 to 0.22) as with the exact one; nothing reaches high
    assert all_attacks_null_scan["verdict"]["level"] in ("low", "medium"), all_attacks_null_scan["verdict"]["reasons"]
    _intervals_have_width(all_attacks_null_scan)
