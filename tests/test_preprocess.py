"""Preprocessing: Keras's bilinear resize, reproduced exactly without a full-size float copy."""

from __future__ import annotations

import numpy as np
import pytest

from triage.model.preprocess import display_copy, resize_for_model


@pytest.mark.parametrize("height, width", [(300, 500), (100, 90), (32, 32), (1000, 37), (7, 900)])
def test_resize_equals_tensorflow_bilinear_bit_for_bit(height: int, width: int) -> None:
    import tensorflow as tf

    pixels = np.random.default_rng(height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    ours = resize_for_model(pixels, 64)
    reference = tf.image.resize(pixels.astype(np.float32), (64, 64), method="bilinear").numpy()
    assert ours.dtype == np.float32 and ours.shape == (64, 64, 3)
    np.testing.assert_array_equal(ours, reference)


def test_resize_of_a_huge_image_makes_no_full_size_float_copy() -> None:
    import tracemalloc

    pixels = np.full((8000, 8000, 3), 7, dtype=np.uint8)  # 192 MB; a float32 copy would be 768 MB
    tracemalloc.start()
    try:
        out = resize_for_model(pixels, 256)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.all(out == 7.0)
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MB allocated"


def test_display_copy_keeps_aspect_and_caps_the_side() -> None:
    big = np.zeros((3000, 1500, 3), dtype=np.uint8)
    assert display_copy(big).shape == (1024, 512, 3)
    small = np.zeros((300, 200, 3), dtype=np.uint8)
    assert display_copy(small) is small


def test_decode_budget_lets_a_huge_image_decode_alone() -> None:
    """Reservations larger than the budget never overlap; small ones share it."""
    import threading
    import time

    from triage.engine.predictor import DecodeBudget

    budget = DecodeBudget(100)
    inside, most = [0], [0]
    lock = threading.Lock()

    def decode(size: int) -> None:
        with budget.reserve(size):
            with lock:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.05)
            with lock:
                inside[0] -= 1

    def run(sizes: list[int]) -> int:
        most[0] = 0
        threads = [threading.Thread(target=decode, args=(s,)) for s in sizes]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return most[0]

    assert run([10_000] * 4) == 1  # huge: one at a time
    assert run([10] * 4) == 4  # small: all at once
