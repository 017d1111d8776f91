"""Where a run may write: never in or around what it must not touch, never two outputs on one path."""

from __future__ import annotations

from pathlib import Path

from triage.errors import UsageError

# (what, the setting that names it, path) of one output; (what, path) of something to keep clear of.
Written = tuple[str, str, Path]
Protected = tuple[str, Path]


def check_writes(written: list[Written], protected: list[Protected]) -> None:
    """No output lies inside a protected path or holds one, no file output is a folder, no two meet.

    Checked on real paths (links followed), before anything is opened. A folder
    output (the heat-map folder, an evaluation folder) may hold nothing protected:
    it is replaced or cleaned as a whole.

    Raises:
        UsageError: one sentence naming the first clash.
    """
    resolved = [(what, option, path, path.resolve()) for what, option, path in written]
    keep = [(name, path.resolve()) for name, path in protected]
    for what, option, path, real in resolved:
        for name, kept in keep:
            if real.is_relative_to(kept):
                raise UsageError(f"{_sentence(what)} {path} would be written inside {name} {kept}.",
                                 option=option)
            if kept.is_relative_to(real):
                raise UsageError(f"{_sentence(what)} {path} would hold {name} {kept}: choose another place.",
                                 option=option)
        if real.is_dir() and not what.endswith("folder"):
            raise UsageError(f"{_sentence(what)} {path} is a folder.", option=option)
    for i, (what, option, path, real) in enumerate(resolved):
        for other, other_option, _, other_real in resolved[i + 1:]:
            if real == other_real or real.is_relative_to(other_real) or other_real.is_relative_to(real):
                blamed = other_option if option == "out" else option  # the path named on its own
                raise UsageError(f"{_sentence(what)} and {other} would both be written at {path}.",
                                 option=blamed)


def _sentence(text: str) -> str:
    return text[:1].upper() + text[1:]
