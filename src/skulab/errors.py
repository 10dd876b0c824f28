"""User-facing errors: printed as one line with exit code 2, never as a traceback."""

import functools
import sys


class SkulabError(Exception):
    """Bad input (params, data files, CLI args) that the user can fix."""


def exit_on_user_error(func):
    """Run `func`; turn a SkulabError into one stderr line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except SkulabError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(2) from None

    return wrapper
