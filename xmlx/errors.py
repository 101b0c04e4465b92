"""The kernel's error base: every failure the API or a worker must tell apart has a code.

Codes are stable and dotted (`storage.not_found`, `job.not_found`, `key.invalid`, ...):
the API turns them into problem+json answers, the workers decide on retries with
`transient` (a transient error may succeed when tried again; anything else will not).
"""

from __future__ import annotations


class XmlxError(Exception):
    """A kernel failure with a stable dotted `code` and a human `message`."""

    def __init__(self, code: str, message: str, *, transient: bool = False) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
