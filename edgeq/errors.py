"""The one error type users see."""

from __future__ import annotations


class EdgeqError(Exception):
    """A problem with the user's input, stated in one line.

    The message names the node, file or option at fault and says what to do. The CLI prints it
    as a single line and exits with code 2; it never shows a traceback unless ``--debug`` is given.
    """
