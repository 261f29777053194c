"""A job module whose import fails: every func in it is a LoadingError."""

import gloomd_wsjobs_test_module_that_does_not_exist  # noqa: F401


def run(job):
    job.data["result"] = "unreachable"
