"""Load a real grpcio client puts on the test app: outcomes counted, never raised."""

from __future__ import annotations

import collections
import time
from typing import Any, Callable

import grpc


def settle(future: Any, outcomes: collections.Counter[str]) -> None:
    """Wait for one call and count how it ended: "ok", "CANCELLED" or "<CODE>: <details>"."""
    try:
        future.result()
    except grpc.RpcError as error:
        outcomes[f"{error.code().name}: {error.details()}"] += 1
    except grpc.FutureCancelledError:
        outcomes["CANCELLED"] += 1
    else:
        outcomes["ok"] += 1


def given_up_calls(
    channel: grpc.Channel, count: int, in_flight: int = 50
) -> collections.Counter[str]:
    """`count` Slow calls the client gives up on while the handler still works on them
    (deadlines, and every tenth cancelled): each ends with a stream reset."""
    outcomes: collections.Counter[str] = collections.Counter()
    slow = channel.unary_unary("/test.Test/Slow")
    pending: collections.deque[Any] = collections.deque()
    for i in range(count):
        if i % 10 == 0:
            future = slow.future(b"30", timeout=30)
            time.sleep(0.02)  # the request reaches the server before the cancel
            future.cancel()
        else:
            future = slow.future(b"30", timeout=0.3)
        pending.append(future)
        if len(pending) == in_flight:
            settle(pending.popleft(), outcomes)
    for future in pending:
        settle(future, outcomes)
    return outcomes


def echo_calls(
    channel: grpc.Channel,
    count: int,
    in_flight: int = 50,
    every: tuple[int, Callable[[], None]] | None = None,
) -> collections.Counter[str]:
    """`count` Echo calls, `in_flight` at a time, on one channel: how they ended.
    With `every` = (n, look), `look()` runs after every n-th call is made."""
    outcomes: collections.Counter[str] = collections.Counter()
    echo = channel.unary_unary("/test.Test/Echo")
    pending: collections.deque[Any] = collections.deque()
    for i in range(count):
        pending.append(echo.future(b"%d" % i, timeout=30))
        if len(pending) == in_flight:
            settle(pending.popleft(), outcomes)
        if every is not None and i % every[0] == every[0] - 1:
            every[1]()
    for future in pending:
        settle(future, outcomes)
    return outcomes
