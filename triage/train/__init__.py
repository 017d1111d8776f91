"""``triage train``: the thesis's recipe on features kept from one backbone pass.

Index the labelled folder, extract (and cache) the pooled backbone features once
per image, split with copy groups kept whole, fit the head on the features,
decide the calibration map and the threshold (fixed, or certified to give a
target sensitivity) on out-of-fold predictions of the training part, and write
the model folder and its card atomically.
"""
