"""Which addresses an output download may connect to."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass

from shared.errors import GenqError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class AddressBlocked(GenqError):
    """The output URL points at a private, loopback, link-local or reserved address."""

    code = "output_address_blocked"


def is_public(address: IPAddress) -> bool:
    """True for globally routable unicast addresses only."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return is_public(address.ipv4_mapped)
    return not (
        address.is_private or address.is_loopback or address.is_link_local
        or address.is_reserved or address.is_multicast or address.is_unspecified
        or not address.is_global
    )


@dataclass(frozen=True)
class Resolved:
    """A host and the one address the download will connect to."""

    host: str
    address: IPAddress


async def resolve_checked(host: str, port: int, allowed_hosts: list[str]) -> Resolved:
    """Resolve ``host``; refuse it if ANY of its addresses is not public (unless allowlisted).

    Checking every address (not just the first) stops a name that mixes a public and a
    private record; connecting to the checked address (not resolving again) stops rebinding.
    """
    host = host.lower().rstrip(".")
    try:
        literal: IPAddress | None = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        literal = None
    if literal is not None:
        addresses: list[IPAddress] = [literal]
    else:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise AddressBlocked(f"cannot resolve output host {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise AddressBlocked(f"output host {host!r} has no address")
    if host not in allowed_hosts:
        for address in addresses:
            if not is_public(address):
                raise AddressBlocked(
                    f"output host {host!r} resolves to a non-public address ({address})"
                )
    return Resolved(host, addresses[0])
