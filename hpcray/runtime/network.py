"""The head's address on the right network (high-speed interface first), IPv6 bracketed."""

from __future__ import annotations

import ipaddress
import socket

import psutil

from hpcray import env
from hpcray.errors import BootstrapError


def interface_address(interface: str) -> str:
    addrs = psutil.net_if_addrs().get(interface)
    if not addrs:
        raise BootstrapError(
            f"network interface {interface!r} not found on {socket.gethostname()}; "
            f"available: {', '.join(sorted(psutil.net_if_addrs()))}")
    v4 = [a.address for a in addrs if a.family == socket.AF_INET]
    v6 = [a.address.split("%")[0] for a in addrs if a.family == socket.AF_INET6
          and not ipaddress.IPv6Address(a.address.split("%")[0]).is_link_local]
    if v4:
        return v4[0]
    if v6:
        return v6[0]
    raise BootstrapError(f"interface {interface!r} has no usable IPv4 or IPv6 address")


def resolve(host: str) -> str:
    try:
        return str(socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)[0][4][0])
    except socket.gaierror as exc:
        raise BootstrapError(f"cannot resolve {host!r}: {exc}") from None


def node_address(interface: str | None, address_format: str | None, host: str,
                 source: str | None = None) -> str:
    """This node's address, from what the site profile names as its source (`source`:
    'interface', 'host_format' or 'hostname'). Without one, an interface beats the host name
    format, which beats the host name's own address. Polaris names 'host_format': ALCF's Ray
    recipe uses the <host>.hsn.cm.polaris.alcf.anl.gov names, and its bond0 interface no
    longer carries worker-to-head traffic."""
    if source is None:
        source = "interface" if interface else "host_format" if address_format else "hostname"
    if source == "interface" and interface:
        return interface_address(interface)
    if source == "host_format" and address_format:
        return resolve(address_format.format(host=host.split(".")[0]))
    return resolve(host)


def host_port(address: str, port: int) -> str:
    """``addr:port`` with IPv6 literals in brackets."""
    try:
        if isinstance(ipaddress.ip_address(address), ipaddress.IPv6Address):
            return f"[{address}]:{port}"
    except ValueError:
        pass
    return f"{address}:{port}"

NODE_IP_ENV = env.NODE_IP  # exported by the node agent to everything Ray starts there
