"""User-facing errors.

Anything a user can cause (a missing file, a malformed CSV, a split that names unknown users)
raises :class:`RemiError`; the CLI turns it into one line on stderr and exit status 2 instead of
a traceback. Bugs keep raising ordinary exceptions so they stay loud.
"""


class RemiError(Exception):
    """A problem with the user's input or environment, reported as one line."""
