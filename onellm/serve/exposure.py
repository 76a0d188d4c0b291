"""Who can reach the server, from the address it is bound to: on loopback only this
machine's users (a key is advised, since any local program or a browser page could call
it); beyond loopback anyone on the network, so a key is required."""

from __future__ import annotations

import ipaddress

from onellm.errors import OneLLMError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


def is_loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a name other than localhost: it may resolve anywhere
        return False


def allowed_hosts(host: str) -> frozenset[str] | None:
    """The names a request's Host header may carry for a server bound to `host`: the
    loopback names and `host` itself. None (any) for every address (0.0.0.0, ::), where
    clients use whatever name reaches the machine and the required key does the guarding."""
    if host in WILDCARDS:
        return None
    return LOOPBACK_NAMES | {host.strip("[]").lower()}


def check_exposure(host: str, api_key: str | None) -> str | None:
    """Refuse (OneLLMError) to serve beyond loopback without a key; on loopback without
    one, the warning to print."""
    if api_key:
        return None
    if not is_loopback(host):
        raise OneLLMError(
            f"--host {host or '0.0.0.0'} serves other machines: give --api-key KEY (or set "
            "ONELLM_API_KEY) so that only clients holding it are answered"
        )
    return (
        f"serving on {host} without --api-key: any program or web page on this machine can "
        "use the server (its Host and Origin checks stop other sites' pages, not local programs)"
    )
