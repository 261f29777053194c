"""Jobs that raise, to check the explicit JobFailedError frame."""


def raises(job):
    raise ValueError("the job failed on purpose")


async def raises_async(job):
    raise KeyError("missing")
