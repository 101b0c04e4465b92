"""Outbound safety: which callback URLs the service will POST to.

A callback URL is a request to make the server open a connection of the caller's
choosing (server-side request forgery), so it is checked twice:
- at submit (`check_callback_url`): http(s) only, no credentials in the URL, a host that
  resolves, and every address it resolves to public;
- at every delivery (`resolve_public`): resolved again and the POST goes to the address
  just checked, so a name that later resolves to 127.0.0.1 or the cloud metadata
  service (DNS rebinding) is refused, not followed.
Private, loopback, link-local, multicast, reserved and unspecified addresses are
refused unless the host is named in `XMLX_WEBHOOK_ALLOWED_HOSTS`.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

from xmlx.errors import XmlxError
from xmlx.models import MAX_URL_LENGTH

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
NOT_ALLOWED = "webhook.url_not_allowed"


class WebhookUrlError(XmlxError):
    """A callback URL the service refuses to call (code `webhook.url_not_allowed`)."""


@dataclass(frozen=True)
class Target:
    """Where one POST goes: the URL as given, and the checked address to connect to."""

    url: str
    host: str
    address: str
    port: int
    scheme: str


def _refuse(reason: str) -> WebhookUrlError:
    return WebhookUrlError(NOT_ALLOWED, f"callback_url refused: {reason}")


def parse(url: str) -> SplitResult:
    if len(url) > MAX_URL_LENGTH:
        raise _refuse(f"longer than {MAX_URL_LENGTH} characters")
    if any(ord(char) <= 0x20 or ord(char) == 0x7F for char in url):
        raise _refuse("spaces and control characters must be percent-encoded")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a port out of range)
    except ValueError as exc:
        raise _refuse("not a URL") from exc
    if parts.scheme not in ("http", "https"):
        raise _refuse("only http and https URLs are called")
    if not parts.hostname:
        raise _refuse("the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise _refuse("credentials in the URL are not sent; sign-check the body instead")
    if parts.fragment:
        raise _refuse("a fragment is never sent to a server")
    return parts


def is_public(address: IpAddress) -> bool:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
        or not address.is_global
    )


def resolve_public(url: str, allowed_hosts: frozenset[str]) -> Target:
    """The address to POST `url` to, checked now; raises `WebhookUrlError`."""
    parts = parse(url)
    host = (parts.hostname or "").lower()
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _refuse(f"the host {host!r} does not resolve") from exc
    addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
    if not addresses:
        raise _refuse(f"the host {host!r} does not resolve")
    if host not in allowed_hosts:
        internal = [a for a in addresses if not is_public(a)]
        if internal:
            raise _refuse(
                f"the host {host!r} resolves to a private, loopback or reserved address "
                "(an operator can allow it in XMLX_WEBHOOK_ALLOWED_HOSTS)"
            )
    return Target(url, host, str(addresses[0]), port, parts.scheme)


def check_callback_url(url: str, allowed_hosts: frozenset[str]) -> str:
    """`url` if the service may call it, else `WebhookUrlError` (422 at the API)."""
    resolve_public(url, allowed_hosts)
    return url
