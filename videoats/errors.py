"""The one exception type a user ever sees: the CLI prints it as a single line and exits non-zero."""


class VideoATSError(Exception):
    """A problem with the user's input (file, config, checkpoint, option), said in one line.

    The message should say what is wrong, where, and what to do about it.
    """
