"""The one exception type that means "the user asked for something we cannot do".

The CLI prints a UserError as a single line and exits non-zero; anything else is
a bug and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input: path, value, data or checkpoint.

    The message says what is wrong and what to do about it, in one line.
    """


def need_extra(module: str, extra: str, purpose: str):
    """``module`` imported, or one line naming the optional extra that installs it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{purpose} needs the {module} package: pip install 'resnetlab[{extra}]'") from None
