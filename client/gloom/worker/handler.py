"""Finding the user's handler from its path, and calling it the one way we promise.

A path is ``pkg.mod:attr`` where ``attr`` is a dotted chain.  When the chain
passes through a class (``pkg.mod:Class.method``), the handler is a *class
handler*: every job gets a fresh instance built from ``class_args`` /
``class_kwargs``, so no state leaks from one job to the next (EventMQ's rule).

Resolution happens once per pool process, in that process.  The supervisor
never imports user code itself: it starts the first pool process before it
connects to gloomd, and a path that does not resolve there is a startup
error (exit status 2), never a per-job surprise.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Handler",
    "HandlerError",
    "HandlerImportError",
    "HandlerNotFound",
    "HandlerSpec",
    "resolve",
]


class HandlerError(Exception):
    """The handler path cannot be turned into a callable."""


class HandlerNotFound(HandlerError):
    """The module or one of the attributes named by the path does not exist."""


class HandlerImportError(HandlerError):
    """The module exists but raised while being imported."""


@dataclass(frozen=True)
class HandlerSpec:
    """Everything a pool process needs to build the handler (it is pickled to it)."""

    path: str
    import_path: tuple[str, ...] = ()
    class_args: tuple[Any, ...] = ()
    class_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Handler:
    """A resolved handler: call `make()` per job to get the callable to run.

    `wants_job` says whether the callable takes the job context as a second
    argument; `is_async` whether it must run on trio.  Both are decided once
    here rather than per job.
    """

    spec: HandlerSpec
    target: Any  # a function, or the class of a class handler
    method: str | None
    wants_job: bool
    is_async: bool

    def make(self) -> Callable[..., Any]:
        if self.method is None:
            return self.target  # type: ignore[no-any-return]
        instance = self.target(*self.spec.class_args, **self.spec.class_kwargs)
        fn: Callable[..., Any] = getattr(instance, self.method)
        return fn


def split_path(path: str) -> tuple[str, list[str]]:
    module, sep, attrs = path.partition(":")
    if not sep or not module or not attrs or any(not part for part in attrs.split(".")):
        raise HandlerNotFound(
            f"handler path {path!r} must look like 'pkg.module:function'"
            " or 'pkg.module:Class.method'"
        )
    return module, attrs.split(".")


def _import(module: str, path: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        # Only "this very module (or a parent) is missing" means not found; a
        # missing dependency *inside* the module is an import failure.
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise HandlerNotFound(f"handler {path!r}: no module named {exc.name!r}") from None
        raise HandlerImportError(f"handler {path!r}: importing {module!r} failed: {exc!r}") from exc
    except BaseException as exc:
        raise HandlerImportError(f"handler {path!r}: importing {module!r} failed: {exc!r}") from exc


def resolve(spec: HandlerSpec) -> Handler:
    """Import and look up the handler; `HandlerError` says why it cannot be used."""
    module_name, attrs = split_path(spec.path)
    for entry in reversed(spec.import_path):
        if entry not in sys.path:
            sys.path.insert(0, entry)
    obj: Any = _import(module_name, spec.path)
    target: Any = None
    method_parts: list[str] = []
    for i, attr in enumerate(attrs):
        try:
            obj = getattr(obj, attr)
        except AttributeError:
            raise HandlerNotFound(
                f"handler {spec.path!r}: {'.'.join([module_name.rpartition('.')[2], *attrs[:i]])!r}"
                f" has no attribute {attr!r}"
            ) from None
        if inspect.isclass(obj) and i < len(attrs) - 1:
            target = obj
            method_parts = attrs[i + 1 :]
            break
    if target is not None:
        if len(method_parts) != 1:
            raise HandlerNotFound(f"handler {spec.path!r}: expected Class.method after the class")
        method = method_parts[0]
        fn = inspect.getattr_static(target, method, None)
        if fn is None:
            raise HandlerNotFound(
                f"handler {spec.path!r}: class {target.__name__!r} has no method {method!r}"
            )
        # Look at the function as it will be bound to an instance.
        probe = getattr(target, method)
        if not callable(probe):
            raise HandlerNotFound(
                f"handler {spec.path!r}: {target.__name__}.{method} is not callable"
            )
        if isinstance(fn, (staticmethod, classmethod)) or not inspect.isfunction(probe):
            call = probe
        else:
            call = _bound_view(probe)
        return Handler(spec, target, method, _wants_job(call), _is_async(call))
    if not callable(obj):
        raise HandlerNotFound(f"handler {spec.path!r} is not callable")
    if inspect.isclass(obj):
        raise HandlerNotFound(
            f"handler {spec.path!r} is a class; name a method: {spec.path}.method"
        )
    return Handler(spec, obj, None, _wants_job(obj), _is_async(obj))


def _bound_view(fn: Callable[..., Any]) -> Callable[..., Any]:
    """A stand-in with `fn`'s signature minus `self`, for arity checks only."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]

    def view(*args: Any, **kwargs: Any) -> Any:  # pragma: no cover - never called
        raise NotImplementedError

    view.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    view._is_async = _is_async(fn)  # type: ignore[attr-defined]
    return view


def _is_async(fn: Callable[..., Any]) -> bool:
    flagged = getattr(fn, "_is_async", None)
    if flagged is not None:
        return bool(flagged)
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        # Not a callability test (B004): an instance's async __call__ makes it async.
        getattr(fn, "__call__", None)  # noqa: B004
    )


def _wants_job(fn: Callable[..., Any]) -> bool:
    """True when the handler can be called as ``fn(body, job)``."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return False
    try:
        sig.bind(None, None)
    except TypeError:
        return False
    return True


def describe(handler: Handler) -> str:
    kind = "async " if handler.is_async else ""
    shape = "(body, job)" if handler.wants_job else "(body)"
    return f"{kind}{handler.spec.path}{shape}"
