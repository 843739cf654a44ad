"""The error every cache problem raises: one line that names the file and the fix."""


class CacheError(Exception):
    """A cache that cannot be used as asked; the message says why and what to do."""
