"""A handler module whose own dependency is missing (not the module itself)."""

import gloom_no_such_dependency  # noqa: F401


def f(body):
    return body
