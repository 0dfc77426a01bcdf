"""Incremental server-sent-events parser that counts what it cannot understand instead of failing.

Fed raw bytes as they arrive (chunk boundaries anywhere, also inside a UTF-8 character); returns the
``data`` payload of every complete event. Lines that are not SSE (no known field) and bytes that are
not UTF-8 are counted in ``malformed_lines``; the caller counts payloads that are not JSON.
"""

from __future__ import annotations

_KNOWN_FIELDS = {"data", "event", "id", "retry"}


class SSEParser:
    def __init__(self, max_line_bytes: int = 1 << 22) -> None:
        self._buffer = b""
        self._data: list[str] = []
        self.malformed_lines = 0
        self.max_line_bytes = max_line_bytes

    def feed(self, chunk: bytes) -> list[str]:
        """Add bytes; return the data payloads of the events completed by them."""
        self._buffer += chunk
        events: list[str] = []
        while True:
            newline = self._buffer.find(b"\n")
            if newline < 0:
                if len(self._buffer) > self.max_line_bytes:  # a runaway line: drop it, count it
                    self._buffer = b""
                    self.malformed_lines += 1
                return events
            raw, self._buffer = self._buffer[:newline], self._buffer[newline + 1:]
            self._line(raw.rstrip(b"\r"), events)

    def close(self) -> list[str]:
        """End of stream: an unterminated last line and a pending event still count."""
        events: list[str] = []
        if self._buffer:
            self._line(self._buffer.rstrip(b"\r"), events)
            self._buffer = b""
        self._dispatch(events)
        return events

    def _line(self, raw: bytes, events: list[str]) -> None:
        if not raw:
            self._dispatch(events)
            return
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            self.malformed_lines += 1
            return
        if line.startswith(":"):  # comment / keep-alive
            return
        field, sep, value = line.partition(":")
        if not sep or field not in _KNOWN_FIELDS:
            self.malformed_lines += 1
            return
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)

    def _dispatch(self, events: list[str]) -> None:
        if self._data:
            events.append("\n".join(self._data))
            self._data = []
