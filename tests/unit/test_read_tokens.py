"""Read-API tokens: several at once, a file re-read when it changes (rotation without a
refused moment), kept hashed, never logged."""

from __future__ import annotations

import json
import locale
import logging
import os
import sys
from pathlib import Path

import pytest

from service.config import ConfigError, load_settings
from service.daemon.read_tokens import ReadApiTokens, parse_tokens


def _replace(path: Path, text: str) -> None:
    """As a Kubernetes Secret volume does: a new file swapped in atomically."""
    fresh = path.with_suffix(".new")
    fresh.write_text(text)
    os.replace(fresh, path)


def test_every_configured_source_is_accepted(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("# rotated 2026-12\nfrom-file\n\n")
    settings = load_settings(
        read_api_token="producers-one", read_api_tokens=" a-1 , b-2,", read_api_tokens_file=file
    )
    tokens = ReadApiTokens.from_settings(settings)
    assert tokens.required
    for good in ("producers-one", "a-1", "b-2", "from-file"):
        assert tokens.accepts(good), good
    for bad in ("", "a-", "A-1", "from-file ", "# rotated 2026-12", "producers-one,a-1"):
        assert not tokens.accepts(bad), bad


def test_no_source_means_no_token_required() -> None:
    tokens = ReadApiTokens.from_settings(load_settings())
    assert not tokens.required and not tokens.accepts("anything")


def test_rotation_through_the_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """old alone, then old and new (both accepted: no producer refused while they roll),
    then new alone (the old one refused at once, without a restart)."""
    caplog.set_level(logging.INFO)
    file = tmp_path / "tokens"
    file.write_text("old-token-1\n")
    tokens = ReadApiTokens(file=file)
    assert tokens.accepts("old-token-1") and not tokens.accepts("new-token-2")
    _replace(file, "old-token-1\nnew-token-2\n")
    assert tokens.accepts("old-token-1") and tokens.accepts("new-token-2")
    _replace(file, "new-token-2\n")
    assert tokens.accepts("new-token-2") and not tokens.accepts("old-token-1")
    # Rewritten in place (another size): seen too.
    file.write_text("third-token-33\n")
    assert tokens.accepts("third-token-33") and not tokens.accepts("new-token-2")
    # An empty file lets nobody in; it does not open the API.
    _replace(file, "")
    assert tokens.required and not tokens.accepts("third-token-33") and not tokens.accepts("")
    text = caplog.text
    for secret in ("old-token-1", "new-token-2", "third-token-33"):
        assert secret not in text
    assert "read api tokens reloaded" in text


def test_a_file_gone_for_a_moment_keeps_the_tokens_read_last(tmp_path: Path) -> None:
    file = tmp_path / "tokens"
    file.write_text("kept\n")
    tokens = ReadApiTokens(file=file)
    file.unlink()
    assert tokens.accepts("kept") and not tokens.accepts("other")
    file.write_text("back\n")
    assert tokens.accepts("back") and not tokens.accepts("kept")


def test_an_unreadable_file_at_start_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^CONSUMERGEN_READ_API_TOKENS_FILE: cannot read"):
        ReadApiTokens(file=tmp_path / "missing")
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ReadApiTokens(file=binary)


def test_only_digests_are_kept(tmp_path: Path) -> None:
    tokens = ReadApiTokens(["plain-secret-token"])
    held = repr(vars(tokens))
    assert "plain-secret-token" not in held and b"plain-secret-token" not in held.encode()


def test_the_settings_hide_the_tokens() -> None:
    settings = load_settings(read_api_tokens="t-one,t-two", read_api_token="t-three")
    assert "t-one" not in repr(settings) and "t-three" not in repr(settings)


def test_file_syntax() -> None:
    assert parse_tokens(" a \n#c\n\n b\r\n") == ["a", "b"]


def _token_events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    found = []
    for line in caplog.text.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if "read api token" in str(event.get("event")):
            found.append({k: v for k, v in event.items() if k not in ("timestamp", "logger")})
    return found


def test_the_token_file_is_read_once_per_version_and_each_load_or_loss_logged_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Loaded (how many tokens, which setting), then only read again when it changes;
    a file that cannot be read is said once (why, how many tokens are kept), however
    many requests come meanwhile, and read again once it is back; never a token."""
    caplog.set_level(logging.INFO)
    setting = "CONSUMERGEN_READ_API_TOKENS_FILE"
    file = tmp_path / "tokens"
    file.write_text("one-token-1\ntwo-token-2\n")
    tokens = ReadApiTokens(file=file)
    for _ in range(3):
        assert tokens.accepts("one-token-1")
    assert _token_events(caplog) == [
        {"level": "info", "event": "read api tokens loaded", "setting": setting, "tokens": 2}
    ]
    caplog.clear()
    file.unlink()
    for _ in range(3):
        assert tokens.accepts("two-token-2")
    assert _token_events(caplog) == [
        {
            "level": "warning",
            "event": "read api token file unreadable; keeping the tokens read last",
            "setting": setting,
            "error": "No such file or directory",
            "tokens": 2,
        }
    ]
    caplog.clear()
    file.write_text("three-token-3\n")
    for _ in range(3):
        assert tokens.accepts("three-token-3") and not tokens.accepts("one-token-1")
    assert _token_events(caplog) == [
        {"level": "info", "event": "read api tokens reloaded", "setting": setting, "tokens": 1}
    ]
    caplog.clear()
    _replace(file, "")
    file.write_bytes(b"\xff\xfe")
    assert tokens.accepts("three-token-3")  # not UTF-8 now: the tokens read last are kept
    assert [e["error"] for e in _token_events(caplog)] == ["UnicodeDecodeError"]
    assert "token-" not in caplog.text


def test_a_token_file_unreadable_at_start_says_why_in_the_operators_words(
    tmp_path: Path,
) -> None:
    """The setting, the file and the reason: the system's own words for a file that
    cannot be opened, "not UTF-8 text" for one that is not text."""
    setting = "CONSUMERGEN_READ_API_TOKENS_FILE"
    missing = tmp_path / "missing"
    with pytest.raises(ConfigError) as raised:
        ReadApiTokens(file=missing)
    assert str(raised.value) == f"{setting}: cannot read {missing}: No such file or directory"
    binary = tmp_path / "binary"
    binary.write_bytes(b"\xff\xfe")
    with pytest.raises(ConfigError) as raised:
        ReadApiTokens(file=binary)
    assert str(raised.value) == f"{setting}: cannot read {binary}: not UTF-8 text"


def test_the_token_file_is_read_as_utf8_whatever_the_locale(tmp_path: Path) -> None:
    """A Secret's bytes are UTF-8; a host whose locale says ASCII (``LC_CTYPE=C``
    without Python's UTF-8 mode) must read the same token from them."""
    file = tmp_path / "tokens"
    file.write_bytes("jeton-été-1\n".encode())
    before = locale.setlocale(locale.LC_CTYPE)
    locale.setlocale(locale.LC_CTYPE, "C")
    try:
        if sys.flags.utf8_mode or locale.getencoding().lower() in ("utf-8", "utf8"):
            pytest.fail("the C locale here is UTF-8: this test cannot tell the encodings apart")
        tokens = ReadApiTokens(file=file)
        assert tokens.accepts("jeton-été-1") and not tokens.accepts("jeton-t-1")
    finally:
        locale.setlocale(locale.LC_CTYPE, before)
