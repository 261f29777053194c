"""The shared token, as daemon and client both read it.

The token is a shared secret: whoever holds it may submit and take jobs.  The
daemon and the client must agree on how it is read (the first line of a file,
or an environment variable, surrounding white space stripped, never empty) and
on how it is compared (in constant time, so a stranger cannot recover it byte
by byte from response times); both live here, once.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from . import environ as _environ

__all__ = ["ENV_TOKEN", "TokenError", "load_token", "token_matches"]

ENV_TOKEN = _environ.TOKEN


class TokenError(ValueError):
    """The configured token cannot be used (empty, or the file is unreadable)."""


def load_token(
    token_file: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> str | None:
    """The token in force: `token_file` wins over `GLOOMD_TOKEN`; None means off.

    (`GLOOM_TOKEN`, the old spelling, is read when `GLOOMD_TOKEN` is not set,
    with a warning: `gloomwire.environ`.)

    The token is the file's first line with surrounding whitespace stripped.
    An empty token is refused rather than taken to mean "no auth": a typo in
    a secret file must not silently open the daemon.
    """
    env = os.environ if environ is None else environ
    if token_file is not None:
        try:
            text = Path(token_file).read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenError(f"cannot read token file {token_file}: {exc.strerror}") from None
        lines = text.splitlines()
        token = lines[0].strip() if lines else ""
        if not token:
            raise TokenError(f"token file {token_file} is empty")
        return token
    value = _environ.lookup(ENV_TOKEN, env)
    if value is not None:
        token = value.strip()
        if not token:
            raise TokenError(f"{ENV_TOKEN} is set but empty")
        return token
    return None


def token_matches(given: object, token: str) -> bool:
    """Constant-time comparison; anything but a string never matches."""
    if type(given) is not str:
        return False
    try:
        return hmac.compare_digest(given.encode("utf-8"), token.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not our token
        return False
