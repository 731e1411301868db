"""Exceptions whose message is meant for the user: the CLI prints them without a traceback, exit 2 (usage,
setup) or 1 (the data has problems)."""


class CeladonError(Exception):
    """A problem the user can fix; the message says what and how."""

    exit_code = 2  # usage or setup


class DataProblems(CeladonError):
    """Rows of a manifest that cannot be used: the CLI prints every one, then a summary by kind, and exits 1."""

    exit_code = 1  # "the data has problems"

    def __init__(self, problems: list, what: str, hint: str = ""):
        self.problems = [p for p in problems if getattr(p, "severity", "error") == "error"]
        n = len(self.problems)
        hint = hint or "fix or remove these rows (`celadon data validate` lists them with the warnings)"
        super().__init__(f"{n} problem{'s' * (n != 1)} in {what}; nothing was written; {hint}")
