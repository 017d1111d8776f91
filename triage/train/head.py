"""Fitting the dense head on kept backbone features (every epoch, fold and threshold choice)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from triage.errors import Stopped
from triage.model.network import HeadConfig

if TYPE_CHECKING:
    from triage.train.config import TrainConfig


def fit_head(features: np.ndarray, labels: np.ndarray, config: "TrainConfig",
             validation: tuple[np.ndarray, np.ndarray] | None = None,
             on_epoch: Callable[[int, dict[str, float]], None] | None = None,
             should_stop: Callable[[], bool] = lambda: False,
             ) -> tuple[Any, dict[str, list[float]]]:
    """The thesis's head (Adam, binary cross-entropy) fitted with ``config``'s settings and seed.

    Raises:
        Stopped: ``should_stop`` said stop at the end of an epoch.
    """
    import keras

    from triage.model.network import build_head

    keras.utils.set_random_seed(config.seed)
    head = build_head(features.shape[1], HeadConfig(config.l2, config.dropout))
    head.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                 loss="binary_crossentropy", metrics=["accuracy"])

    def epoch_end(epoch: int, logs: dict[str, float] | None) -> None:
        if on_epoch is not None:
            on_epoch(epoch + 1, dict(logs or {}))
        if should_stop():
            raise Stopped("training was stopped; no model was written")

    history = head.fit(features, labels.astype(np.float32), batch_size=config.batch_size,
                       epochs=config.epochs, validation_data=validation, shuffle=True, verbose=0,
                       callbacks=[keras.callbacks.LambdaCallback(on_epoch_end=epoch_end)])
    return head, {k: [float(v) for v in vs] for k, vs in history.history.items()}


def predict_head(head: Any, features: np.ndarray) -> np.ndarray:
    return np.asarray(head.predict(features, batch_size=256, verbose=0), dtype=np.float64).ravel()
