"""Where DICOM results go: the DICOM folder, and the archive they are sent to (``HOST:PORT``, AE titles)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from triage import settings
from triage.errors import UsageError

_AE_TITLE_LENGTH = 16


@dataclass(frozen=True)
class Peer:
    """A DICOM storage SCP: its address, its AE title, and the AE title this tool calls from."""

    host: str
    port: int
    called_ae: str
    calling_ae: str = settings.CALLING_AE

    def __str__(self) -> str:
        return f"{self.called_ae}@{self.host}:{self.port}"

    @classmethod
    def parse(cls, address: str, called_ae: str | None, calling_ae: str | None = None) -> "Peer":
        """``HOST:PORT`` and the AE titles, checked.

        Raises:
            UsageError: a malformed address or AE title, or no called AE title.
        """
        host, _, port = address.rpartition(":")
        host = host.strip("[]")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise UsageError(f"The archive must be given as HOST:PORT (a port from 1 to 65535), "
                             f"got {address!r}.", option="send")
        if not called_ae:
            raise UsageError("Sending needs the archive's AE title.", option="called_ae")
        return cls(host, int(port), _ae_title(called_ae, "called_ae"),
                   _ae_title(calling_ae or settings.CALLING_AE, "calling_ae"))


def _ae_title(title: str, option: str) -> str:
    """An AE title: 1 to 16 characters of printable ASCII, no backslash, not only spaces."""
    text = title.strip()
    printable = text.isascii() and text.isprintable() and "\\" not in text
    if not text or len(text) > _AE_TITLE_LENGTH or not printable:
        raise UsageError(f"An AE title has 1 to 16 printable ASCII characters and no backslash, "
                         f"got {title!r}.", option=option)
    return text


@dataclass(frozen=True)
class DicomOptions:
    """``folder``: where the objects go (None: no objects); ``peer``: where they are sent (None: nowhere)."""

    folder: Path | None = None
    peer: Peer | None = None

    def validate(self) -> None:
        if self.peer is not None and self.folder is None:
            raise UsageError("Sending needs a DICOM folder to write the objects in first.",
                             option="dicom_out")
