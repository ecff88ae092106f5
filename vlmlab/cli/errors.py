"""The one exception the `python -m vlmlab` commands raise for a bad command line or parameter: `main` prints its
one-line message and exits 2, and nothing has been started. Introduced in notebook 00.
"""


class UsageError(Exception):
    """A bad command line; the message is one line and nothing has been started."""
