"""TVM RPC: run and time artifacts on a board (`python -m tvm.exec.rpc_server` there).

    session = connect("192.168.1.20:9090")                  # straight to the board's server
    session = connect("tracker-host:9190", key="rasp4b")     # through an RPC tracker, by device key
    model = runtime.load("model.arm.artifact", remote=session)
"""

from __future__ import annotations

from frontends.errors import CompileError


def parse_address(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise CompileError(f"--rpc {address!r}: expected HOST:PORT, e.g. 192.168.1.20:9090")
    return host, int(port)


def connect(address: str, key: str | None = None, timeout: float = 60.0):
    """An RPC session: to the server at HOST:PORT, or, with `key`, through the tracker there."""
    from tvm import rpc

    host, port = parse_address(address)
    try:
        if key is None:
            return rpc.connect(host, port, session_timeout=0)
        return rpc.connect_tracker(host, port).request(key, session_timeout=0, max_retry=3)
    except Exception as err:
        via = f"tracker {address} (key {key!r})" if key else f"RPC server {address}"
        raise CompileError(f"cannot reach the {via}: {str(err).strip().splitlines()[-1]}") from None
