"""One exception type for problems the user can fix; the CLI prints it as a single line."""


class CeladonError(Exception):
    """A user-facing error: the message names the file/row/field and says what to do."""
