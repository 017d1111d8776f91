"""What a scan found, as frozen records, and the CSV tables written from them.

One row per file or slice, one verdict per case and per study, the model's facts
as a run reports them, and ``run.json``'s record; the CSVs, the report and
``run.json`` are all rendered from these, so they cannot disagree.
"""
