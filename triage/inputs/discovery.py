"""Every file under the input folder, with a status for the ones that must not be read.

Hidden, system and special files, and links that leave the folder, are listed
with a CSV status and never opened; the rest are only stat'ed here.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from triage.errors import Stopped, UsageError

# Files that operating systems and file managers leave behind; never images.
JUNK_NAMES: frozenset[str] = frozenset({
    ".DS_Store", ".localized", "Icon\r", "Thumbs.db", "ehthumbs.db", "ehthumbs_vista.db",
    "desktop.ini", "Desktop.ini", "$RECYCLE.BIN",
})
# Windows treats names case-insensitively, so "THUMBS.DB" is junk too.
_JUNK_FOLDED = frozenset(name.casefold() for name in JUNK_NAMES)
# Folders that operating systems keep for deleted files and indexes; never entered.
JUNK_FOLDERS: frozenset[str] = frozenset({"$RECYCLE.BIN", ".Trashes", "System Volume Information"})
_JUNK_FOLDERS_FOLDED = frozenset(name.casefold() for name in JUNK_FOLDERS)
_SPECIAL_FILE_KINDS = {
    stat.S_IFIFO: "a named pipe", stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
}


@dataclass(frozen=True)
class FoundFile:
    """One entry found under the input folder.

    Attributes:
        relpath: Path relative to the input folder, with ``/`` separators, as
            :func:`display_path` writes it.
        path: Absolute path to open; for an accepted symlink, its resolved target.
        status: ``None`` when the file is to be read, else its CSV status.
        reason: Human reason when ``status`` is set.
        size: ``st_size`` of the (target) file when ``status`` is ``None``.
        mtime_ns: ``st_mtime_ns`` of the (target) file when ``status`` is ``None``.
    """

    relpath: str
    path: Path
    status: str | None
    reason: str = ""
    size: int | None = None
    mtime_ns: int | None = None


def discover(root: Path, should_stop: Callable[[], bool] | None = None) -> Iterator[FoundFile]:
    """Walk ``root`` recursively and list every file found, sorted by relpath.

    Directory symlinks are not followed (so a walk cannot loop); hidden and
    system folders are not entered but listed, one ``skipped`` row each.
    Nothing is opened: files are only stat'ed.

    Args:
        root: The input folder.
        should_stop: Polled for each folder listed; True stops with :class:`~triage.errors.Stopped`.

    Returns:
        An iterator over one :class:`FoundFile` per entry, in ``relpath`` order.

    Raises:
        UsageError: ``root`` is not a folder that can be listed.
        Stopped: a stop was asked for.
    """
    base = Path(os.path.abspath(root))
    if not base.is_dir():
        raise UsageError(f"The input folder {root} does not exist or is not a folder.")
    real_root = base.resolve()
    rows: list[FoundFile] = []
    pending: list[tuple[Path, str]] = [(base, "")]  # a stack, not recursion: trees can be deep
    while pending:
        if should_stop is not None and should_stop():
            raise Stopped("the scan was stopped while it listed the files; no output was changed")
        folder, prefix = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError as err:
            if not prefix:
                raise UsageError(
                    f"The input folder {root} cannot be listed: {err.strerror}.") from err
            rows.append(FoundFile(prefix[:-1], folder, "unreadable",
                                  f"folder could not be listed ({err.strerror})"))
            continue
        for entry in entries:
            relpath = prefix + display_path(entry.name)
            if not entry.is_dir(follow_symlinks=False):
                rows.append(_classify(entry, relpath, folder / entry.name, real_root))
            elif reason := _skipped_folder(entry.name):
                rows.append(FoundFile(relpath, folder / entry.name, "skipped", reason))
            else:
                pending.append((folder / entry.name, relpath + "/"))
    # One sort of the full relpaths gives the exact string order that CSV rows
    # are sorted by ("a-b" < "a/b"), which a per-level name sort would not.
    return iter(sorted(rows, key=lambda row: row.relpath))


# What cannot be written as text: a byte that is not UTF-8 (read as a lone surrogate) and
# control characters (line breaks among them; a tab is text).
_UNWRITABLE = "[\udc80-\udcff\x00-\x08\x0a-\x1f\x7f]"
# A run of backslashes that a reader would take as the start of an escape.
_BEFORE_ESCAPE = re.compile(rf"(\\+)(?=x[0-9a-f]{{2}}|{_UNWRITABLE})")


def display_path(name: str | bytes) -> str:
    """A file name (or relative path) as text that is unique and maps back to its bytes.

    Text is written as it is (``C:\\scans\\brain.png`` keeps its backslashes).
    Only what cannot be written as text is escaped, as ``\\xHH`` (two lower-case
    hex digits): a byte that is not part of valid UTF-8, and a control character
    (a line break; a tab is kept). So that an escape is never ambiguous, the
    backslashes right before something that reads as one (an escape, or a
    literal ``x`` and two lower-case hex digits) are doubled: ``scan\\xff.jpg``
    is the byte 0xff, ``scan\\\\xff.jpg`` a name spelled with a backslash.
    :func:`path_bytes` is the inverse.
    """
    text = os.fsencode(name).decode("utf-8", "surrogateescape")
    text = _BEFORE_ESCAPE.sub(lambda match: match.group(1) * 2, text)
    return re.sub(_UNWRITABLE, _escape, text)


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code - 0xDC00 if code >= 0xDC00 else code:02x}"


def path_bytes(text: str) -> bytes:
    """The bytes of the name or path that :func:`display_path` wrote as ``text``.

    Before ``x`` and two lower-case hex digits, an odd run of backslashes ends
    in an escape and an even one does not; each pair stands for one backslash.
    """
    def unescape(match: re.Match[bytes]) -> bytes:
        run, digits = match.group(1), match.group(2)
        literal = b"\\" * (len(run) // 2)
        return literal + (bytes([int(digits, 16)]) if len(run) % 2 else b"x" + digits)

    return re.sub(rb"(\\+)x([0-9a-f]{2})", unescape, text.encode("utf-8"))


def _skipped_folder(name: str) -> str:
    """Why a folder is not entered; empty when it is."""
    if name.casefold() in _JUNK_FOLDERS_FOLDED:
        return "system folder, not entered"
    if name.startswith("."):
        return "hidden folder, not read"
    return ""


def _classify(entry: os.DirEntry[str], relpath: str, path: Path, real_root: Path) -> FoundFile:
    """The row for one non-directory entry (a directory symlink included)."""
    name = entry.name
    if name.casefold() in _JUNK_FOLDED:
        return FoundFile(relpath, path, "skipped", "system file, not read")
    if name.startswith("._"):
        return FoundFile(relpath, path, "skipped", "macOS metadata file (._*), not read")
    if name.startswith("."):
        return FoundFile(relpath, path, "skipped", "hidden file, not read")
    if entry.is_symlink():
        return _classify_link(relpath, path, real_root)
    try:
        info = entry.stat(follow_symlinks=False)
    except OSError as err:
        return FoundFile(relpath, path, "unreadable", f"could not stat the file ({err.strerror})")
    return _by_mode(relpath, path, info, "")


def _classify_link(relpath: str, path: Path, real_root: Path) -> FoundFile:
    """The row for a symlink: read only when it resolves to a regular file inside the root."""
    try:
        target = Path(os.path.realpath(path, strict=True))
        info = os.stat(target)
    except OSError as err:  # dangling (ENOENT) or a loop (ELOOP)
        return FoundFile(relpath, path, "link_broken", f"symbolic link is broken ({err.strerror})")
    if not target.is_relative_to(real_root):
        what = "folder" if stat.S_ISDIR(info.st_mode) else "file"
        return FoundFile(relpath, path, "link_outside",
                         f"symbolic link to a {what} outside the input folder, not read")
    if stat.S_ISDIR(info.st_mode):
        return FoundFile(relpath, path, "skipped", "symbolic link to a folder, not followed")
    # Open the checked target, not the link, which could be changed in between.
    return _by_mode(relpath, target, info, "symbolic link to ")


def _by_mode(relpath: str, path: Path, info: os.stat_result, prefix: str) -> FoundFile:
    if stat.S_ISREG(info.st_mode):
        return FoundFile(relpath, path, None, size=info.st_size, mtime_ns=info.st_mtime_ns)
    # Opening a fifo or a device could block or never end, so these are not read.
    kind = _SPECIAL_FILE_KINDS.get(stat.S_IFMT(info.st_mode), "a special file")
    return FoundFile(relpath, path, "unsupported", f"{prefix}{kind}, not a regular file")
