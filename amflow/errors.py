"""Expected failures: bad input, missing files, a stage that cannot go on.

The message must name the file or key and say how to fix it; the CLI prints it without a traceback.
"""


class AmflowError(RuntimeError):
    """An error the user can fix; its message says what and how."""
