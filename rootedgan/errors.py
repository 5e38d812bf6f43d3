"""Error types whose message is meant for the user: what was wrong and what to do about it."""

from __future__ import annotations


def printable(text: object) -> str:
    """``text`` with control characters escaped (``\\x1b``, ``\\n``, ...): names read from files and zips
    are printed with it, so a crafted name cannot move the cursor or rewrite the terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def one_line(err: BaseException, limit: int = 300) -> str:
    """``err``'s message on one line (whitespace runs collapsed), cut at ``limit`` characters."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[:limit] + "..."


class UserError(Exception):
    """A problem the user can fix (bad path, bad file, bad option). The CLI prints only the message."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded: unknown/corrupt/truncated format or refused content."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle that references a global outside the allow-list (it would run code if unpickled)."""


class DownloadError(UserError, OSError):
    """A network file could not be fetched (offline, bad URL, checksum mismatch)."""


class SettingError(UserError, ValueError):
    """A setting that cannot work: a loss, a section of the model settings, a value out of range."""
