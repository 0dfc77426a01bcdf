"""One exception type so that every reader reports bad checkpoints the same way."""


class FormatError(ValueError):
    """A checkpoint, config or tensor does not follow the format; the message names what and where."""
