"""Stopping a training the way a killed process or Ctrl-C would: right after the first epoch's last.pt is on
disk. Shared by the resume tests of the loop, the run folder and the localiser folds."""
from __future__ import annotations

import pytest

import src.training.loop as loop


class Killed(Exception):
    """Raised where the process would have died."""


def stopped_after_first_epoch(monkeypatch, train) -> None:
    """Call ``train()`` with every save of last.pt followed by :class:`Killed`; the files written up to then stay."""
    real_save = loop.save_checkpoint

    def save_then_die(path, **content):
        real_save(path, **content)
        if path.name == "last.pt":
            raise Killed

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(Killed):
        train()
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
