"""Labelled folders and what is measured on them: shared by train and evaluate.

Indexing a folder of class sub-folders, finding copies of one scan by content
(identical files, re-encoded, resized or annotated versions) so that a split
keeps each group on one side, the metrics with their confidence intervals, the
certified sensitivity bound, and how well probabilities are calibrated.
"""
