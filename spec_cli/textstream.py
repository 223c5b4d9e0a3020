"""Turns token pieces (bytes) into text that is safe to print, and finds stop strings.

A token can end in the middle of a UTF-8 character, and a stop string can span
several tokens, so text is released only when it can no longer change: bytes of
an unfinished character and a tail that could still grow into a stop string are
held back.
"""

from __future__ import annotations

from typing import Sequence


class TextStream:
    def __init__(self, stop: Sequence[str] = ()):
        self.stop = [s for s in stop if s]
        self._pending = b""  # bytes not yet decodable
        self._text = ""  # decoded text not yet released
        self.released = ""  # everything released so far
        self.stopped = False

    def feed(self, piece: bytes) -> str:
        """Add one token's bytes; return the text that can be shown now."""
        if self.stopped:
            return ""
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
        for s in self.stop:
            i = self._text.find(s)
            if i >= 0:
                self.stopped = True
                out = self._text[:i]
                self._text = ""
                self.released += out
                return out
        hold = self._holdback()
        out = self._text[: len(self._text) - hold]
        self._text = self._text[len(self._text) - hold :]
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
        if self.stopped:
            return ""
        out = self._text + self._pending.decode("utf-8", errors="replace")
        self._text, self._pending = "", b""
        self.released += out
        return out
