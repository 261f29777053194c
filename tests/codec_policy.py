"""Whether gloomd's JSON codec already applies issue 18's decoding policy.

The websocket service decodes with ``gloomd.jsoncodec.loads``, the same codec
as the Gloom ports.  That codec is being hardened on another branch to refuse
lone surrogates and numbers that do not round-trip (``1e400``) on every path,
including its exact fallback for long integers.  Tests that can only pass with
the hardened codec are skipped until it is here, and run by themselves once it
is: no marker to remove at the merge.
"""

from __future__ import annotations

from gloomd import jsoncodec

# A 19+ digit integer sends the payload down the codec's exact (stdlib) path,
# which today accepts both values.
LONG_INT = "1234567890123456789012"
SURROGATE_PAYLOAD = '{"ident": %s, "func": "echo.run", "echo": "\\ud800"}' % LONG_INT
INFINITE_PAYLOAD = '{"ident": %s, "func": "echo.run", "echo": 1e400}' % LONG_INT


def rejects(payload: str) -> bool:
    try:
        jsoncodec.loads(payload.encode())
    except jsoncodec.DecodeError:
        return True
    return False


HARDENED = rejects(SURROGATE_PAYLOAD) and rejects(INFINITE_PAYLOAD)
NEEDS_HARDENED_CODEC = "needs jsoncodec's hardened decoding policy (issue 18, core branch)"
