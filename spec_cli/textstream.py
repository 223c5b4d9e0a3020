"""Turns token pieces (bytes) into text that is safe to print, and finds stop strings.

A token can end in the middle of a UTF-8 character, and a stop string can span
several tokens, so text is released only when it can no longer change: bytes of
an unfinished character and a tail that could still grow into a stop string are
held back.

Each character remembers the origin its token was fed with (for showing which
text came from accepted drafts); `last_spans` splits the last release into runs
of one origin.
"""

from __future__ import annotations

from collections.abc import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self._pending = b""  # bytes not yet decodable
        self._text = ""  # decoded text not yet released
        self._origins: list = []  # the origin of each character of _text
        self.last_spans: list[tuple[str, object]] = []  # the last release, in runs of one origin
        self.released = ""  # everything released so far
        self.stopped = False

    def feed(self, piece: bytes, origin: object = None) -> str:
        """Add one token's bytes; return the text that can be shown now."""
        self.last_spans = []
        if self.stopped:
            return ""
        before = len(self._text)
        self._pending += piece
        try:
            self._text += self._pending.decode("utf-8")
            self._pending = b""
        except UnicodeDecodeError as e:
            # keep an incomplete trailing character; replace genuinely invalid bytes
            if e.start >= len(self._pending) - 3 and e.reason == "unexpected end of data":
                self._text += self._pending[: e.start].decode("utf-8")
                self._pending = self._pending[e.start :]
            else:
                self._text += self._pending.decode("utf-8", errors="replace")
                self._pending = b""
        self._origins.extend([origin] * (len(self._text) - before))
        for s in self.stop:
            i = self._text.find(s)
            if i >= 0:
                self.stopped = True
                self._text = self._text[:i]
                return self._release(i)
        return self._release(len(self._text) - self._holdback())

    def _release(self, n: int) -> str:
        out, self._text = self._text[:n], self._text[n:]
        origins, self._origins = self._origins[:n], self._origins[n:]
        spans: list[tuple[str, object]] = []
        start = 0
        for i in range(1, n + 1):
            if i == n or origins[i] != origins[start]:
                spans.append((out[start:i], origins[start]))
                start = i
        self.last_spans = spans
        self.released += out
        return out

    def _holdback(self) -> int:
        """Length of the longest tail of the pending text that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(self._text)), best, -1):
                if self._text.endswith(s[:k]):
                    best = k
                    break
        return best

    def flush(self) -> str:
        """At the end of generation: release whatever is held back."""
        self.last_spans = []
        if self.stopped:
            return ""
        tail = self._pending.decode("utf-8", errors="replace")
        self._text += tail
        self._origins.extend([self._origins[-1] if self._origins else None] * len(tail))
        self._pending = b""
        return self._release(len(self._text))
