"""A handler that is an instance is async when its ``__call__`` is.

`gloom.worker.handler._is_async` reads ``getattr(fn, "__call__", None)``; ruff's
B004 takes that for a callability test and would rewrite it to ``callable(fn)``,
which is always true here and would make every such handler sync.
"""

from __future__ import annotations

from typing import Any

from gloom.worker.handler import HandlerSpec, describe, resolve

from .workerjobs.support import TESTS_DIR


def spec(path: str, **kwargs: Any) -> HandlerSpec:
    return HandlerSpec(path, (TESTS_DIR,), **kwargs)


def test_an_instance_with_an_async_call_is_async() -> None:
    handler = resolve(spec("workerjobs.callables:async_instance"))
    assert handler.is_async and handler.wants_job
    assert describe(handler) == "async workerjobs.callables:async_instance(body, job)"


def test_an_instance_with_a_plain_call_is_not() -> None:
    handler = resolve(spec("workerjobs.callables:sync_instance"))
    assert not handler.is_async and not handler.wants_job
    assert describe(handler) == "workerjobs.callables:sync_instance(body)"
