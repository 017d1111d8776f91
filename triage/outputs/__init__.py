"""Writing what a run produces without ever leaving a half-written file.

The lowest room: atomic writes (temporary file, fsync, rename) and the
per-folder lock that keeps two runs from writing the same outputs. It knows
nothing of images, models or reports.
"""
