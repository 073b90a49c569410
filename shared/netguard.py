"""Which addresses genq may connect to on a client's or a provider's word: output downloads
and webhook deliveries resolve the host, check every address, and connect to the checked one."""

from __future__ import annotations

import asyncio
import contextvars
import ipaddress
import socket
from dataclasses import dataclass
from typing import Any

import httpx
from aiohttp.abc import AbstractResolver, ResolveResult

from shared.errors import AddressBlocked

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


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


async def resolve_checked(host: str, port: int, allowed_hosts: list[str],
                          what: str = "output") -> Resolved:
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
        except (socket.gaierror, UnicodeError) as exc:
            raise AddressBlocked(f"cannot resolve {what} host {host!r}: {exc}") from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
        if not addresses:
            raise AddressBlocked(f"{what} host {host!r} has no address")
    if host not in allowed_hosts:
        for address in addresses:
            if not is_public(address):
                raise AddressBlocked(
                    f"{what} host {host!r} resolves to a non-public address ({address})"
                )
    return Resolved(host, addresses[0])


def default_port(url: httpx.URL) -> int:
    """The URL's port, or its scheme's."""
    return url.port or (443 if url.scheme == "https" else 80)


def pinned_request(client: httpx.AsyncClient, method: str, url: httpx.URL, target: Resolved,
                   **kwargs: Any) -> httpx.Request:
    """A request to ``url`` that connects to the checked address (no second resolution, so a
    DNS answer that changes in between cannot redirect it); Host and TLS SNI still name the
    real host."""
    pinned = url.copy_with(host=str(target.address))
    headers = {**kwargs.pop("headers", {}), "Host": url.netloc.decode("ascii")}
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(method, pinned, headers=headers, extensions=extensions,
                                **kwargs)


#: The address the current task checked, for :class:`PinnedResolver`.
_pinned: contextvars.ContextVar[Resolved | None] = contextvars.ContextVar("pinned", default=None)


def pin(target: Resolved) -> None:
    """Make ``target`` the address the current task's next connection to its host goes to."""
    _pinned.set(target)


class PinnedResolver(AbstractResolver):
    """An aiohttp resolver that answers only with the address the calling task checked and
    pinned (:func:`pin`), so a connection goes to it and nowhere else (no second resolution: a
    DNS answer that changes in between cannot redirect it), while the URL keeps the real host
    for the Host header, TLS SNI and the certificate's check. A host the task did not check is
    refused."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        target = _pinned.get()
        if target is None or target.host != host.lower().rstrip("."):
            raise OSError(f"no checked address for host {host!r}")
        return [ResolveResult(
            hostname=host, host=str(target.address), port=port,
            family=socket.AF_INET6 if target.address.version == 6 else socket.AF_INET,
            proto=0, flags=socket.AI_NUMERICHOST)]

    async def close(self) -> None:
        """Nothing to release."""
