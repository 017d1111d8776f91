"""Preprocessing: Keras's bilinear resize, reproduced exactly without a full-size float copy."""

from __future__ import annotations

import sys
import threading
import time

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


def _blocked(thread: threading.Thread) -> bool:
    """Whether ``thread`` is waiting in a threading.Condition (it leaves only when notified)."""
    frame = sys._current_frames().get(thread.ident)  # type: ignore[arg-type]
    while frame is not None:
        if frame.f_code.co_name == "wait" and frame.f_code.co_filename == threading.__file__:
            return True
        frame = frame.f_back
    return False


def _reserve_in_thread(budget: object, size: int) -> tuple[threading.Thread, threading.Event,
                                                             threading.Event]:
    """A thread that reserves ``size``, sets ``inside``, and holds until ``release`` is set."""
    inside, release = threading.Event(), threading.Event()

    def hold() -> None:
        with budget.reserve(size):  # type: ignore[attr-defined]
            inside.set()
            release.wait(30)

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    return thread, inside, release


def _inside_or_blocked(thread: threading.Thread, inside: threading.Event) -> bool:
    """Wait until the thread holds its reservation (True) or waits for one (False)."""
    while not inside.is_set() and not _blocked(thread):
        time.sleep(0.001)
    return inside.is_set()


def test_decode_budget_lets_a_huge_image_decode_alone() -> None:
    """A reservation larger than the budget waits for every other holder and blocks every other."""
    from triage.engine.predictor import DecodeBudget

    budget = DecodeBudget(100)
    small, small_inside, small_release = _reserve_in_thread(budget, 10)
    assert _inside_or_blocked(small, small_inside)
    huge, huge_inside, huge_release = _reserve_in_thread(budget, 10_000)
    assert not _inside_or_blocked(huge, huge_inside)  # waits for the small one to finish
    small_release.set()
    assert huge_inside.wait(30)
    other, other_inside, other_release = _reserve_in_thread(budget, 10_000)
    late, late_inside, late_release = _reserve_in_thread(budget, 1)
    assert not _inside_or_blocked(other, other_inside)  # one huge image at a time
    assert not _inside_or_blocked(late, late_inside)  # nothing else while it decodes
    for release in (huge_release, other_release, late_release):
        release.set()
    assert other_inside.wait(30) and late_inside.wait(30)


def test_decode_budget_lets_small_images_decode_together() -> None:
    """Reservations that fit the budget together are all held at once."""
    from triage.engine.predictor import DecodeBudget

    budget = DecodeBudget(100)
    together = threading.Barrier(4, timeout=30)  # broken (an error) unless all 4 hold at once

    def decode() -> None:
        with budget.reserve(25):
            together.wait()

    threads = [threading.Thread(target=decode) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert together.n_waiting == 0 and not together.broken
