"""HTTP's floor for ``benchmarks/serving.py``: uvicorn, run as ``closedloop serve`` runs
it (no access log, the same switch interval, frozen GC), answering every ``POST`` with a
fixed JSON body after reading the request's: no validation, no lookup, no model, no log.
What a request costs here is what any Python ASGI service pays on this machine.

    python benchmarks/_http_floor.py PORT ANSWER_JSON
"""

from __future__ import annotations

import gc
import sys

import uvicorn

from closedloop.serving.api import SWITCH_INTERVAL_S


def make_app(answer: bytes):
    head = {
        "type": "http.response.start",
        "status": 200,
        "headers": [(b"content-type", b"application/json"),
                    (b"content-length", str(len(answer)).encode())],
    }  # fmt: skip
    body = {"type": "http.response.body", "body": answer}

    async def app(scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        more = True
        while more:  # the whole request body, as /predict reads it
            message = await receive()
            more = message.get("more_body", False)
        await send(head)
        await send(body)

    return app


if __name__ == "__main__":
    port, answer = int(sys.argv[1]), sys.argv[2].encode()
    gc.collect()
    gc.freeze()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    uvicorn.run(make_app(answer), host="127.0.0.1", port=port, log_level="warning",
                access_log=False, lifespan="off")  # fmt: skip
