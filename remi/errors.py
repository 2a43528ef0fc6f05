"""User-facing errors.

Anything a user can cause (a missing file, a malformed CSV, a split that names unknown users)
raises :class:`RemiError`; the CLI turns it into one line on stderr and exit status 2 instead of
a traceback. Bugs keep raising ordinary exceptions so they stay loud. A full disk is reported
the same way (:func:`disk_full`).
"""

from __future__ import annotations

import errno
import os


class RemiError(Exception):
    """A problem with the user's input or environment, reported as one line."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
# How native libraries that raise their own exceptions (FAISS, Arrow) report the same errno in their text.
DISK_FULL_TEXTS = (os.strerror(errno.ENOSPC), os.strerror(errno.EDQUOT))


def disk_full(exc: BaseException) -> str | None:
    """The one line a full disk (or an exhausted quota) is reported as, or None for any other error.

    A full disk is the environment, not a bug: every batch command (reindex, export, train,
    history load) reports it like a :class:`RemiError`, with the file it was writing when the
    error says, instead of a traceback. Looks through the exception chain, since a library may
    wrap the OSError.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS:
            where = f" (writing {seen.filename})" if seen.filename else ""
            return f"no space left on the disk{where}: {os.strerror(seen.errno)}; free some space and run it again"
        text = str(seen)
        if any(marker in text for marker in DISK_FULL_TEXTS):
            first = text.strip().splitlines()[0][:300] if text.strip() else type(seen).__name__
            return f"no space left on the disk: {first}; free some space and run it again"
        seen = seen.__cause__ or seen.__context__
    return None
