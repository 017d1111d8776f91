"""triage: batch triage of brain MRI images for tumours with a VGG19 classifier."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("triage")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

RESEARCH_NOTICE = "Research use only, not a diagnostic device."
