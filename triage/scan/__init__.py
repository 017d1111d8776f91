"""``triage scan``: from a folder to rows, cases, the report and ``run.json``.

The folder is discovered and planned into cases (keeping the unchanged cases of
the previous run), the cases to score go through the engine, verdicts are made
per case and study, and the run writes its outputs under a lock, atomically,
ending with ``run.json``.
"""
