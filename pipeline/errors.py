"""The error for bad input and bad settings: one line, naming the path or value and the fix."""


class PipelineError(Exception):
    """Shown to the user as ``error: <message>`` with no traceback."""
