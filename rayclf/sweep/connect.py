"""Reach a Ray cluster at ``--address``: check the address first, then connect; every failure is one message.

``ray.init(address=…)`` on a wrong or unreachable address retries for a long time and ends in a
``ConnectionError`` traceback; on a cluster that uses token authentication (the default for clusters started
with ``ray start`` since Ray 2.59) a shell without the token fails the same way. Both become a ``UserError``
that says what failed and how to fix it.
"""

from __future__ import annotations

import logging
import os
import socket

from rayclf.schema import UserError

GCS_PORT = 6379
CLIENT_PORT = 10001
REACH_TIMEOUT_S = 5.0


def host_port(address: str) -> tuple[str, int] | None:
    """(host, port) an address points at; None for ``auto`` / ``local``, which Ray resolves itself."""
    if address in ("auto", "local"):
        return None
    client = address.startswith("ray://")
    rest = address.split("://", 1)[1] if "://" in address else address
    rest = rest.split("/", 1)[0]
    host, _, port = rest.rpartition(":") if ":" in rest else (rest, "", "")
    try:
        number = int(port) if port else (CLIENT_PORT if client else GCS_PORT)
    except ValueError:
        raise UserError(f"--address {address!r}: {port!r} is not a port number; use HOST:PORT, "
                        f"e.g. 10.0.0.5:{GCS_PORT}, or ray://HOST:{CLIENT_PORT}.") from None
    return host, number


def check_address(address: str) -> None:
    """Fail fast, with the fix, when nothing listens at the address."""
    target = host_port(address)
    if target is None:
        return
    try:
        with socket.create_connection(target, timeout=REACH_TIMEOUT_S):
            pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UserError(
            f"cannot reach a Ray cluster at --address {address} ({target[0]}:{target[1]}: {reason}). Check that "
            f"the head is running (`ray status` on it), that the port is the head's GCS port (default "
            f"{GCS_PORT}; {CLIENT_PORT} for ray://), and that this machine can reach it (firewall, VPN, or an "
            "SSH tunnel such as `ray attach cluster.yaml -p 6379`).") from None


def connect(address: str, verbose: bool = False) -> None:
    """``ray.init`` against a running cluster, with a clear message when it refuses us."""
    import ray

    check_address(address)
    try:
        ray.init(address=address, log_to_driver=verbose, logging_level=logging.INFO if verbose else logging.ERROR)
    except ConnectionError as exc:
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                " Clusters started with `ray start` use token authentication (Ray ≥ 2.59): export "
                "RAY_AUTH_MODE=token and the cluster's token (RAY_AUTH_TOKEN, or copy ~/.ray/auth_token from the "
                "head), then try again.")
        raise UserError(f"the Ray cluster at --address {address} answered but refused the connection "
                        f"({str(exc).splitlines()[0][:200]}).{hint}") from None
