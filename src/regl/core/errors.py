"""The one error type a user should ever see: a single line naming the key or file at fault."""


class ReglError(Exception):
    """A problem with the user's input (params, files, sources), reported as one line, exit code 2."""
