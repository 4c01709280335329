"""The one exception type that means "the user asked for something wrong"."""


class UserError(Exception):
    """A mistake in the user's input: the CLI prints its message on one line and exits 2."""


def first_line(error: BaseException) -> str:
    """An error's first non-blank line, for one-line messages (submitit and drivers raise many-line ones)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__
