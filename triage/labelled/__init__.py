"""Labelled folders and what is measured on them: shared by train and evaluate.

Indexing a folder of class sub-folders, finding copies of one scan by content
(identical files, re-encoded, resized or annotated versions) so that a split
keeps each group on one side, and the metrics with their confidence intervals.
"""
