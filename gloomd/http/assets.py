"""The status page's files, served from the package (no CDN, no build step).

They are read once when the service is built, so serving one is a dict
lookup; they hold no data (the page fetches everything from /api), which is
why they are served without the token: the page must load to ask for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from typing import Final

__all__ = ["PAGE_HEADERS", "Asset", "load_assets"]

#: The page's files by URL path.
_FILES: Final = {
    "/": ("index.html", b"text/html; charset=utf-8"),
    "/app.css": ("app.css", b"text/css; charset=utf-8"),
    "/app.js": ("app.js", b"text/javascript; charset=utf-8"),
}

#: The page loads nothing but its own files and talks only to its own origin;
#: it may not be framed (clickjacking of the kick and delete buttons).
PAGE_HEADERS: Final = (
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        b"connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: bytes


def load_assets() -> dict[str, Asset]:
    """Read the page's files from gloomd/http/static/ (a wheel ships them)."""
    folder = resources.files(__package__ or "gloomd.http").joinpath("static")
    return {
        path: Asset(folder.joinpath(name).read_bytes(), content_type)
        for path, (name, content_type) in _FILES.items()
    }
