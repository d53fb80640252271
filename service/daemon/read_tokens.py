"""The bearer tokens the read API accepts: several at once, so that a token rotates
without a moment where producers holding the old or the new one are refused.

Where they come from: ``CONSUMERGEN_READ_API_TOKEN`` (the one producers send, accepted
too), ``CONSUMERGEN_READ_API_TOKENS`` (comma-separated) and
``CONSUMERGEN_READ_API_TOKENS_FILE`` (one a line, ``#`` comments), which is re-read
when it changes: a Kubernetes Secret volume swaps its files atomically, so a rotation
is "add the new token, roll the producers, remove the old one", with no restart.

Only SHA-256 digests are kept in memory; an offered token is hashed and compared with
every digest by ``hmac.compare_digest`` (no early exit), so the time taken says
nothing about how much of a token matched, or which one.  Neither a token nor a
digest is ever logged: the logs say how many tokens there are.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

import structlog

from service.config import ConfigError, Settings, env_name

log = structlog.get_logger(__name__)

#: What identifies a version of the token file: a replaced file (a new inode, as a
#: Secret volume's swap makes) or a rewritten one (mtime, size) is read again.
_Signature = tuple[int, int, int, int]


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def parse_tokens(text: str) -> list[str]:
    """Tokens of a file: one a line, blank lines and ``#`` comments skipped."""
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


class ReadApiTokens:
    """Which bearer tokens are accepted now; ``accepts`` is called for every request."""

    def __init__(self, fixed: Iterable[str] = (), file: Path | None = None) -> None:
        self._fixed = frozenset(_digest(token) for token in fixed if token)
        self._file = file
        self._from_file: frozenset[bytes] = frozenset()
        self._signature: _Signature | None = None
        if file is not None:
            try:
                self._reload(self._stat(file))
            except (OSError, UnicodeDecodeError) as exc:
                reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
                raise ConfigError(
                    f"{env_name('read_api_tokens_file')}: cannot read {file}: {reason or exc}"
                ) from None

    @classmethod
    def from_settings(cls, settings: Settings) -> ReadApiTokens:
        fixed: list[str] = []
        if settings.read_api_token is not None:
            fixed.append(settings.read_api_token.get_secret_value().strip())
        if settings.read_api_tokens is not None:
            listed = settings.read_api_tokens.get_secret_value().split(",")
            fixed.extend(token.strip() for token in listed)
        return cls(fixed, settings.read_api_tokens_file)

    @property
    def required(self) -> bool:
        """Whether a request needs a token at all (any source configured).  A token
        file that is empty now still requires one: then nobody is let in."""
        return bool(self._fixed) or self._file is not None

    def accepts(self, offered: str) -> bool:
        """True if ``offered`` is one of the tokens, compared in constant time."""
        self._refresh()
        given = _digest(offered)
        found = False
        for digest in (*self._fixed, *self._from_file):
            found |= hmac.compare_digest(given, digest)
        return found

    def _refresh(self) -> None:
        if self._file is None:
            return
        try:
            signature = self._stat(self._file)
            if signature != self._signature:
                self._reload(signature)
        except (OSError, UnicodeDecodeError) as exc:
            # Keep the tokens read last: a file that vanished for a moment must not
            # lock every producer out, nor let anyone in.
            if self._signature is not None:
                log.warning(
                    "read api token file unreadable; keeping the tokens read last",
                    setting=env_name("read_api_tokens_file"),
                    error=getattr(exc, "strerror", None) or type(exc).__name__,
                    tokens=len(self._from_file),
                )
                self._signature = None

    @staticmethod
    def _stat(path: Path) -> _Signature:
        info = os.stat(path)
        return (info.st_ino, info.st_dev, info.st_mtime_ns, info.st_size)

    def _reload(self, signature: _Signature) -> None:
        assert self._file is not None
        tokens = parse_tokens(self._file.read_text(encoding="utf-8"))
        first = self._signature is None and not self._from_file
        self._from_file = frozenset(_digest(token) for token in tokens)
        self._signature = signature
        log.info(
            "read api tokens loaded" if first else "read api tokens reloaded",
            setting=env_name("read_api_tokens_file"),
            tokens=len(self._from_file),
        )
