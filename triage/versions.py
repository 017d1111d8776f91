"""Versions of the tool and of the libraries that decide its numbers."""

from __future__ import annotations

import platform

from triage import __version__


def library_versions() -> dict[str, str]:
    """Versions of the tool and the libraries that decide its numbers."""
    from importlib.metadata import PackageNotFoundError, version

    import tensorflow as tf

    # tensorflow ships as several distributions (tensorflow, tensorflow-cpu, ...): ask the module.
    found = {"triage": __version__, "python": platform.python_version(), "tensorflow": tf.__version__}
    for name in ("keras", "numpy", "opencv-python-headless", "pillow", "pydicom",
                 "weasyprint", "jinja2", "highdicom", "pynetdicom"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            continue
    return found
