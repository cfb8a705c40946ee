"""The digits-few target (``privaudit.fixtures.digits_few``): a model that copies only its duplicated members.

The tests check the training set's construction. The recipe's outcome (every exposed member copied, almost
no single one) is tested on ``digits-dup`` (tests/test_digits_dup.py), which trains the same recipe with the
repeats written as member files; one build serves both."""

from __future__ import annotations

import numpy as np
import pytest

from privaudit.fixtures.digits_few import FewDigitsConfig, exposed_names, training_set


def test_training_set_repeats_only_the_exposed_members():
    members = np.repeat(np.arange(10, dtype=np.uint8), 64).reshape(10, 8, 8)  # member i: all pixels i
    cfg = FewDigitsConfig(n_members=10, n_exposed=3, duplicates=5)
    train = training_set(members, cfg)
    assert len(train) == 10 + 3 * 4
    counts = [int((train == m).all(axis=(1, 2)).sum()) for m in members]
    assert counts == [5, 5, 5] + [1] * 7
    assert exposed_names(cfg) == ["members_0000.png", "members_0001.png", "members_0002.png"]


def test_training_set_rejects_more_exposed_than_members():
    with pytest.raises(ValueError, match="n_exposed"):
        training_set(np.zeros((2, 8, 8), np.uint8), FewDigitsConfig(n_members=2, n_exposed=3))
