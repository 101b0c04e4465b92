"""Errors raised by xmlcore.

Every error carries a stable, machine-readable ``code`` (dotted, lower case) so the
service can store it per item and clients can branch on it; the message is for people.
Codes are part of the public contract: never rename one, add a new one instead.
"""

from __future__ import annotations


class XmlcoreError(Exception):
    """Base class: ``code`` is stable, ``message`` explains, ``line`` locates (manifests)."""

    default_code = "xmlcore.error"

    def __init__(self, code: str | None, message: str, *, line: int | None = None) -> None:
        self.code = code or self.default_code
        self.message = message
        self.line = line
        where = f" (line {line})" if line is not None else ""
        super().__init__(f"[{self.code}]{where} {message}")

    def to_dict(self) -> dict[str, object]:
        """JSON-friendly form: ``{"code", "message", "line"}``."""
        return {"code": self.code, "message": self.message, "line": self.line}


class ManifestError(XmlcoreError):
    """A label manifest (CSV or JSONL) cannot be read."""

    default_code = "manifest.invalid"


class ImageError(XmlcoreError):
    """An image cannot be decoded safely (corrupt, truncated, too large, unsupported)."""

    default_code = "image.invalid"


class ConfigError(XmlcoreError, ValueError):
    """A hyper-parameter or argument is out of its domain."""

    default_code = "config.invalid"


class ModelError(XmlcoreError):
    """A model artifact or its weights cannot be built, loaded or used."""

    default_code = "model.invalid"


class ExplainError(XmlcoreError, ValueError):
    """An explanation request cannot be answered (unknown target, bad sizes, ...)."""

    default_code = "explain.invalid"
