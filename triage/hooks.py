"""How a long run reports its progress and learns that it should stop.

``run_scan``, ``train_model`` and ``evaluate_model`` take one :class:`RunHooks`;
the command line fills it with a progress bar and a SIGINT/SIGTERM flag, a
library user with whatever it likes, or nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


def _never() -> bool:
    return False


def _ignore(*_: object) -> None:
    return None


@dataclass(frozen=True)
class RunHooks:
    """Callbacks of a run; each is optional.

    Attributes:
        should_stop: Polled between batches (and epochs); True stops the run as its command documents.
        on_start: Told once how many items (images, slices) the run will handle.
        advance: Told how many items were just handled.
        on_phase: ``scan`` only: ``"scanning"``, ``"writing"`` (the outputs are being replaced: from
            here on all of them become this run's), ``"written"`` and, when DICOM objects are sent,
            ``"sending"``.
        on_epoch: ``train`` only: each epoch's number (from 1) and its Keras logs.
    """

    should_stop: Callable[[], bool] = _never
    on_start: Callable[[int], None] = _ignore
    advance: Callable[[int], None] = _ignore
    on_phase: Callable[[str], None] = _ignore
    on_epoch: Callable[[int, dict[str, float]], None] = _ignore
