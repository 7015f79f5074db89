"""Allocation arithmetic on made-up sets: what a ratio and a MACs target each keep of the removal steps."""

from types import SimpleNamespace

import pytest

from yolo_nexp.pruning import allocation as alloc

WIDTHS = [[10, 8, 6, 4]]  # one linked set of one group, three removal steps
ORDER = alloc.uniform_order(WIDTHS)
CUT = {10: 0.0, 8: 0.1, 6: 0.28, 4: 0.5}  # conv MACs cut at each width of the set


class FakeMacs:
    """Stands in for MacsModel: the MACs cut is a table of the set's width."""

    def cut(self, groups, kept):
        return CUT[kept[0]]


SETS = [[SimpleNamespace(size=10)]]


@pytest.mark.parametrize(
    "target,steps",
    [
        (0.04, 0),  # nearer no cut (0) than the first step (0.1)
        (0.15, 1),  # nearer 0.1 (under the target) than 0.28: the nearest, not the first that reaches it
        (0.2, 2),  # nearer 0.28 than 0.1
        (0.45, 3),
        (0.9, 3),  # beyond the last step: all of them
    ],
)
def test_macs_target_keeps_the_nearest_prefix(target, steps):
    assert ORDER == [(0, 8), (0, 6), (0, 4)]
    assert alloc.steps_for_macs(SETS, WIDTHS, ORDER, target, FakeMacs()) == steps


@pytest.mark.parametrize("ratio,steps", [(0.0, 0), (0.19, 0), (0.2, 1), (0.5, 2), (0.59, 2), (0.6, 3)])
def test_ratio_keeps_the_longest_prefix_within_it(ratio, steps):
    for allocation in ("uniform", "global"):
        assert alloc.steps_for_ratio(SETS, WIDTHS, ORDER, ratio, allocation) == steps


def test_widths_after_steps():
    assert [alloc.widths_after(WIDTHS, ORDER, n) for n in range(4)] == [[10], [8], [6], [4]]
