"""Errors a user can act on. The CLI prints their message on one line and exits non-zero."""


class SpecError(Exception):
    """Something the user can fix: a missing file, a bad option, an incompatible pair."""

    exit_code = 2
