"""The one error type users see: it names the problem and the fix."""


class AtlasError(Exception):
    """A problem with the user's input or environment, phrased as problem + fix.

    The CLI prints the message alone (no traceback) and exits with status 2.
    """
