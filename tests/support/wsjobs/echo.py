"""pykit's test_job_echo, minus the sleep: copies ``echo`` into ``result`` and returns."""

import os  # noqa: F401  (bait: "echo.os.system" must not resolve)


def run(job):
    job.data["result"] = job.data.get("echo")
    job.data["foo"] = "80%"
