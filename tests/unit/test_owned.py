"""The owner's bookkeeping: pipe-instance names, and that its dispatch tables are total."""

from __future__ import annotations

import typing

from hypothesis import given
from hypothesis import strategies as st

from ringpipe.core.control_frames import Frame, PartyFrame
from ringpipe.core.rendezvous import Action
from ringpipe.mesh import owned, worker_pipes


@given(st.integers(min_value=0, max_value=1 << 70))
def test_an_epoch_is_the_time_in_base_36_whatever_the_previous_one(now_us: int) -> None:
    for ns in (now_us * 1000, now_us * 1000 + 999, (now_us + 1) * 1000):
        value = ns // 1000
        expected = ""
        while value:
            value, digit = divmod(value, 36)
            expected = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + expected
        assert owned.new_epoch(ns) == expected


def test_epochs_sort_by_time_and_differ_per_microsecond() -> None:
    start = 1_796_000_000_000_000_000  # 2026, in ns
    epochs = [owned.new_epoch(start + i * 997_000) for i in range(5000)]
    assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
    assert len(owned.new_epoch()) == 10


def test_the_owner_carries_out_every_action_and_routes_every_frame() -> None:
    assert set(worker_pipes._ACTION_HANDLERS) == set(typing.get_args(Action))
    frames = set(typing.get_args(Frame))
    assert set(worker_pipes._FRAME_HANDLERS) | set(typing.get_args(PartyFrame)) == frames
    assert not set(worker_pipes._FRAME_HANDLERS) & set(typing.get_args(PartyFrame))
