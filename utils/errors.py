"""The project's typed errors: library code raises these; a script's ``main`` prints one line.

Every error a user can cause and fix (a missing file, a malformed entry, a flag that does not fit
the run) derives from :class:`InputError`. Its message names the file (and the entry) and, where
there is one, the command or flag that fixes it. :func:`utils.cli.run_main` turns it into
``error: <message>`` on stderr and exit status 1, never a traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input a user can fix; the message names the file or flag and the fix."""


class CheckpointError(InputError):
    """A checkpoint that is missing, cut short, of the wrong kind or not ``weights_only``-loadable."""


class RunFolderError(InputError):
    """A run folder that lacks what the next stage needs (named with the command that makes it)."""
