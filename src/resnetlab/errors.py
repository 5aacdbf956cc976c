"""The one exception type that means "the user asked for something we cannot do".

The CLI prints a UserError as a single line and exits non-zero; anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: path, value, data or checkpoint.

    The message says what is wrong and what to do about it, in one line.
    """
