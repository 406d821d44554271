"""N5: statuses only move forward, whatever order the reports arrive in."""

import itertools

import pytest

from notifier.domain.delivery import advance
from notifier.domain.model import MessageState as S


@pytest.mark.parametrize("current, reported, expected", [
    (S.SENT, S.DELIVERED, S.DELIVERED), (S.SENT, S.READ, S.READ), (S.DELIVERED, S.SENT, None),
    (S.READ, S.DELIVERED, None), (S.READ, S.READ, None), (S.SENT, S.FAILED, S.FAILED),
    (S.DELIVERED, S.FAILED, None), (S.FAILED, S.DELIVERED, None), (S.WITHDRAWN, S.SENT, None),
])
def test_N5_statuses_move_forward_only(current, reported, expected):
    assert advance(current, reported) is expected


@pytest.mark.parametrize("order", list(itertools.permutations([S.SENT, S.DELIVERED, S.READ])))
def test_N5_any_arrival_order_ends_in_the_furthest_status(order):
    state = S.SENT
    for reported in order + order:  # and every report twice
        state = advance(state, reported) or state
    assert state is S.READ
