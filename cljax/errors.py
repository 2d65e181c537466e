"""The one exception type the CLI turns into a single clear error line."""


class CljaxError(Exception):
    """A user-facing problem: the message names what is wrong and how to fix it."""
