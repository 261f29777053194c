"""Handlers that are instances of a class with ``__call__`` (not functions)."""

from __future__ import annotations

from typing import Any


class AsyncCall:
    async def __call__(self, body: Any, job: Any) -> Any:
        return body


class SyncCall:
    def __call__(self, body: Any) -> Any:
        return body


async_instance = AsyncCall()
sync_instance = SyncCall()
