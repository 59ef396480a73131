"""The one error type users see: it names the problem and the fix."""


class AtlasError(Exception):
    """A problem with the user's input or environment, phrased as problem + fix.

    The CLI prints the message alone (no traceback) and exits with status 2.
    """


class AtlasBusy(AtlasError):
    """The atlas file is held by another process (a writer, or readers while one writes);
    `atlas.access` waits its turn and raises this only when its patience runs out."""


def from_io_error(exc: BaseException) -> AtlasError | None:
    """A failed write (a full disk, a file-size limit) as an AtlasError, or None when `exc` is
    not one."""
    import errno

    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    full = getattr(exc, "errno", None) in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT) or any(
        s in text for s in ("No space left", "File too large", "Disk quota"))
    if full:
        return AtlasError(f"the disk is full ({text}); free space there or pass a --db on "
                          "another disk, then run the same command again: everything written "
                          "before is kept and the work resumes")
    if isinstance(exc, OSError) or type(exc).__name__ == "IOException":
        return AtlasError(f"could not read or write a file ({text}); check the path and its "
                          "permissions, then run the same command again")
    return None
