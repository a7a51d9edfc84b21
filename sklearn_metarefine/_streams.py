"""The command line's own streams: text a terminal's encoding lacks is
escaped, and stderr's failures do not stop the work."""

import os


class Escaping:
    """A text stream that escapes what its encoding lacks (the è of a file's
    name on an ASCII terminal) instead of failing on it: the summary failed
    once every file was written, and a message naming such a file failed."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text):
        try:
            return self._stream.write(text)
        except UnicodeEncodeError:
            encoding = getattr(self._stream, "encoding", None) or "ascii"
            escaped = text.encode(encoding, "backslashreplace").decode(encoding)
            self._stream.write(escaped)
            return len(text)

    def flush(self):
        self._stream.flush()

    def __getattr__(self, name):  # isatty, encoding, fileno, ...
        return getattr(self._stream, name)


class Unfailing(Escaping):
    """stderr whose writes fail only when its reader left: a full disk under
    a log (``2>log``) or a closed stderr (``2>&-``) stopped fit and score at
    their first progress line, with nothing written. Progress, warnings and
    messages on stderr are not the command's work; a reader that leaves
    (``2>&1 | head``) stops it, as it stops other commands."""

    def __init__(self, stream):
        super().__init__(open(os.devnull, "w") if stream is None else stream)

    def write(self, text):
        try:
            return super().write(text)
        except BrokenPipeError:
            raise
        except (OSError, ValueError):  # full, or closed under Python
            return len(text)

    def flush(self):
        try:
            super().flush()
        except BrokenPipeError:
            raise
        except (OSError, ValueError):
            pass
