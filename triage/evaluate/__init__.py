"""``triage evaluate``: a model's metrics on a labelled folder.

Every image is scored as a scan scores it (same predictor, batch size and
precision); images that are copies of training images are counted apart, and
the metrics come with their intervals and n.
"""
