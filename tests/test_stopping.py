"""A stop asked for by a signal holds even when the exception the handler raised was swallowed
(studio/stopping.py): the next block's check raises it again."""

from __future__ import annotations

import pytest

from studio import stopping


def test_a_requested_stop_is_raised_at_the_next_check(monkeypatch):
    monkeypatch.setattr(stopping, "_requested", [])
    stopping.check()                                   # nothing asked: nothing happens
    stopping.request(143)
    stopping.request(130)                              # the first stop asked for decides the status
    with pytest.raises(SystemExit) as stop:
        stopping.check()
    assert stop.value.code == 143
