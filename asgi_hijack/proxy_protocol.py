"""The PROXY protocol (v1 and v2): the original client's address, from an L4 load balancer.

A layer-4 balancer (HAProxy ``mode tcp`` with ``send-proxy`` or ``send-proxy-v2``, an AWS NLB)
opens its own TCP connection to the server, which therefore sees the balancer's address. With
the PROXY protocol the balancer writes one header first, naming the client and the address the
client connected to; v2 adds TLVs (ALPN, authority, TLS details when TLS ends at the balancer).

The rules, as the protocol classes apply them when ``proxy_protocol`` is not ``"off"``:

- The header comes before any HTTP byte and is read by :class:`HeaderReader`, which stands in
  for the protocol until the header is complete; only then does the protocol see the connection
  (``connection_made``), through a :class:`ProxiedTransport` whose ``peername`` is the client's.
  The header never reaches a parser or the pending buffer.
- Only peers in ``proxy_trusted`` may send it. An untrusted peer, a missing, malformed or too
  long header, or none within the head timeout: the connection is closed without a reply, and
  one line is logged (none for a peer that closes without sending a byte: a TCP health check).
- ``LOCAL`` (a balancer's health check) is accepted: the connection's own addresses are used.
- Over TLS it cannot work (the header would come before the handshake, which asyncio does below
  the protocol): :func:`refuse_tls` logs that once, and every connection is refused.

:class:`HeaderParser` is sans-I/O: it is fed bytes and returns the :class:`ProxyHeader` once
it is complete, whatever the segmentation. The format is haproxy.org's ``proxy-protocol.txt``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import socket
import struct
import weakref
from typing import Any, NamedTuple

__all__ = [
    "MODES",
    "HeaderParser",
    "HeaderReader",
    "ProxiedTransport",
    "ProxyHeader",
    "ProxyHeaderError",
    "ProxySSL",
    "crc32c",
    "intercept",
    "refuse_tls",
    "trusted_networks",
]

MODES = ("off", "v1", "v2", "any")
"""Values of ``proxy_protocol`` (``ASGI_HIJACK_PROXY_PROTOCOL``)."""

V1_PREFIX = b"PROXY "
V1_MAX = 107  # the longest v1 line, CRLF included
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_MAX_PAYLOAD = 4096
"""Longest v2 address and TLV block accepted (the format allows 65535); a longer one is refused
from its first 16 bytes, before it is buffered."""

_logger = logging.getLogger("uvicorn.error")


class ProxyHeaderError(ValueError):
    """The bytes are not an acceptable PROXY header; the message says why."""


class ProxySSL(NamedTuple):
    """The v2 ``PP2_TYPE_SSL`` TLV: how the client connected to the balancer over TLS."""

    client_ssl: bool
    """The client connected over TLS (``PP2_CLIENT_SSL``)."""
    client_cert: bool
    """The client presented a certificate on this connection or an earlier one of its session."""
    verified: bool
    """The client's certificate was verified (``verify`` is 0)."""
    version: str | None = None
    cipher: str | None = None
    sig_alg: str | None = None
    key_alg: str | None = None
    cn: str | None = None
    """Common name of the client certificate's subject."""


class ProxyHeader(NamedTuple):
    """One PROXY header (``http.connection["proxy"]``, ``ConnectionInfo.proxy``; see docs/spec.md).

    Immutable, and a named tuple (one per connection is made cheaply); compare it by field.
    """

    version: int
    """1 or 2."""
    command: str
    """``"PROXY"`` (relayed for a client) or ``"LOCAL"`` (the balancer's own, e.g. a health check)."""
    source: tuple[str, int] | None
    """The client's address; None for LOCAL, v1 UNKNOWN, or an unspecified or unix family."""
    destination: tuple[str, int] | None
    """The address the client connected to (the balancer's front)."""
    tlvs: tuple[tuple[int, bytes], ...] = ()
    """Every v2 TLV, ``(type, value)``, in order."""
    alpn: bytes | None = None
    authority: str | None = None
    """The host name the client asked for (TLS SNI at the balancer)."""
    unique_id: bytes | None = None
    ssl: ProxySSL | None = None
    peer: tuple[str, int] | None = None
    """The balancer: the TCP peer that sent the header (set by the server, not parsed)."""


def crc32c(data: bytes, crc: int = 0) -> int:
    """CRC-32C (Castagnoli), as ``PP2_TYPE_CRC32C`` checksums the header."""
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _crc_entry(index: int) -> int:
    for _ in range(8):
        index = (index >> 1) ^ 0x82F63B78 if index & 1 else index >> 1
    return index


_CRC32C_TABLE = tuple(_crc_entry(index) for index in range(256))

# v2 address families: (size of the address block, socket family of its addresses or None)
_V2_FAMILIES = {0x00: (0, None), 0x11: (12, socket.AF_INET), 0x21: (36, socket.AF_INET6), 0x31: (216, None)}
_V2_DATAGRAM = {0x12, 0x22, 0x32}
_TLV_ALPN, _TLV_AUTHORITY, _TLV_CRC32C, _TLV_UNIQUE_ID, _TLV_SSL = 0x01, 0x02, 0x03, 0x05, 0x20
_SSL_SUB = {0x21: "version", 0x22: "cn", 0x23: "cipher", 0x24: "sig_alg", 0x25: "key_alg"}


_PREFIXES = {"v1": (V1_PREFIX,), "v2": (V2_SIGNATURE,), "any": (V1_PREFIX, V2_SIGNATURE)}


class HeaderParser:
    """Sans-I/O reader of one PROXY header: ``feed()`` bytes until it returns the header.

    ``mode`` is ``"v1"``, ``"v2"`` or ``"any"``. ``feed`` returns None while more bytes are
    needed and raises :class:`ProxyHeaderError` as soon as the bytes cannot be an acceptable
    header. After the header, :attr:`rest` holds the bytes that followed it.
    """

    def __init__(self, mode: str) -> None:
        if mode not in _PREFIXES:
            raise ValueError(f"PROXY protocol mode {mode!r}: use one of 'v1', 'v2', 'any'")
        self.prefixes = _PREFIXES[mode]
        self.buffer = b""
        self.rest = b""

    def feed(self, data: bytes) -> ProxyHeader | None:
        buffer = self.buffer = self.buffer + data
        for prefix in self.prefixes:
            if buffer[: len(prefix)] == prefix[: len(buffer)]:
                break
        else:
            raise ProxyHeaderError(f"no PROXY header: the connection starts with {bytes(buffer[:16])!r}")
        if len(buffer) < len(prefix):
            return None
        parsed = _parse_v1(buffer) if prefix is V1_PREFIX else _parse_v2(buffer)
        if parsed is None:
            return None
        header, end = parsed
        self.rest = buffer[end:]
        self.buffer = b""
        return header


def _parse_v1(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    end = buffer.find(b"\r\n", 0, V1_MAX)
    if end < 0:
        if len(buffer) >= V1_MAX or b"\n" in buffer:
            raise ProxyHeaderError(f"PROXY v1 line not ended by CRLF within {V1_MAX} bytes")
        return None
    fields = buffer[:end].split(b" ")
    if fields[1] == b"UNKNOWN":
        return ProxyHeader(1, "PROXY", None, None), end + 2
    if len(fields) != 6 or fields[1] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError(f"malformed PROXY v1 line {buffer[:end]!r}")
    family = socket.AF_INET if fields[1] == b"TCP4" else socket.AF_INET6
    source = _v1_address(fields[2], fields[4], family)
    destination = _v1_address(fields[3], fields[5], family)
    return ProxyHeader(1, "PROXY", source, destination), end + 2


def _v1_address(host: bytes, port: bytes, family: socket.AddressFamily) -> tuple[str, int]:
    try:  # inet_pton: the C parser, strict (no leading zeros, no IPv6 zone)
        packed = socket.inet_pton(family, host.decode("ascii"))
    except (UnicodeDecodeError, OSError, ValueError):
        version = 4 if family == socket.AF_INET else 6
        raise ProxyHeaderError(f"PROXY v1 address {host!r} is not an IPv{version} address") from None
    if not port.isdigit() or (port[:1] == b"0" and port != b"0") or int(port) > 65535:
        raise ProxyHeaderError(f"PROXY v1 port {port!r} is not a number from 0 to 65535")
    return socket.inet_ntop(family, packed), int(port)


def _parse_v2(buffer: bytes) -> tuple[ProxyHeader, int] | None:
    if len(buffer) < 16:
        return None
    version_command, family, length = struct.unpack_from("!BBH", buffer, 12)
    if version_command >> 4 != 2 or version_command & 0x0F > 1:
        raise ProxyHeaderError(f"PROXY v2 version/command byte {version_command:#04x} is not 0x20 or 0x21")
    if length > V2_MAX_PAYLOAD:
        raise ProxyHeaderError(f"PROXY v2 header of {length} bytes is longer than {V2_MAX_PAYLOAD}")
    if len(buffer) < 16 + length:
        return None
    block = buffer[16 : 16 + length]
    if version_command & 0x0F == 0:  # LOCAL: the block, family included, is ignored
        return ProxyHeader(2, "LOCAL", None, None), 16 + length
    if family in _V2_DATAGRAM:
        raise ProxyHeaderError(f"PROXY v2 family {family:#04x} is a datagram family; this is a stream")
    if family not in _V2_FAMILIES:
        raise ProxyHeaderError(f"PROXY v2 address family {family:#04x} is unknown")
    size, address_family = _V2_FAMILIES[family]
    if length < size:
        raise ProxyHeaderError(f"PROXY v2 address block of {length} bytes is shorter than {size}")
    source = destination = None
    if address_family is not None:
        width = (size - 4) // 2
        source_port, destination_port = struct.unpack_from("!HH", block, 2 * width)
        source = (socket.inet_ntop(address_family, block[:width]), source_port)
        destination = (socket.inet_ntop(address_family, block[width : 2 * width]), destination_port)
    tlvs = _tlvs(block, size)
    fields: dict[str, Any] = {}
    for kind, at, value in tlvs:
        if kind == _TLV_ALPN:
            fields["alpn"] = value
        elif kind == _TLV_AUTHORITY:
            fields["authority"] = _text(value, "authority")
        elif kind == _TLV_UNIQUE_ID:
            fields["unique_id"] = value
        elif kind == _TLV_SSL:
            fields["ssl"] = _ssl(value)
        elif kind == _TLV_CRC32C:
            _check_crc(buffer[: 16 + length], 16 + at, value)
    found = tuple((kind, value) for kind, _, value in tlvs)
    return ProxyHeader(2, "PROXY", source, destination, found, **fields), 16 + length


def _tlvs(block: bytes, offset: int) -> list[tuple[int, int, bytes]]:
    """``(type, offset of the value, value)`` of each TLV from ``offset`` to the end of ``block``."""
    found = []
    while offset < len(block):
        if len(block) - offset < 3:
            raise ProxyHeaderError("PROXY v2 TLV cut short: fewer than 3 bytes left for its type and length")
        kind, size = struct.unpack_from("!BH", block, offset)
        offset += 3
        if len(block) - offset < size:
            raise ProxyHeaderError(f"PROXY v2 TLV {kind:#04x} of {size} bytes overruns the header")
        found.append((kind, offset, bytes(block[offset : offset + size])))
        offset += size
    return found


def _text(value: bytes, what: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ProxyHeaderError(f"PROXY v2 {what} TLV is not UTF-8") from None


def _ssl(value: bytes) -> ProxySSL:
    if len(value) < 5:
        raise ProxyHeaderError("PROXY v2 SSL TLV shorter than its 5-byte client/verify fields")
    client, verify = struct.unpack_from("!BI", value)
    names = {_SSL_SUB[kind]: _text(text, _SSL_SUB[kind]) for kind, _, text in _tlvs(value, 5) if kind in _SSL_SUB}
    return ProxySSL(client_ssl=bool(client & 0x01), client_cert=bool(client & 0x06), verified=verify == 0, **names)


def _check_crc(header: bytes, at: int, value: bytes) -> None:
    if len(value) != 4:
        raise ProxyHeaderError("PROXY v2 CRC32C TLV is not 4 bytes")
    # The checksum covers the whole header with its own field zeroed.
    if crc32c(header[:at] + b"\0\0\0\0" + header[at + 4 :]) != int.from_bytes(value, "big"):
        raise ProxyHeaderError("PROXY v2 header fails its CRC32C checksum")


# -- trust ----------------------------------------------------------------------------------
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
"""A trusted network of ``proxy_trusted``."""


@functools.lru_cache(maxsize=64)
def trusted_networks(trusted: str | tuple[str, ...]) -> tuple[tuple[Network, ...], bool, bool]:
    """Parse ``proxy_trusted``: ``(networks, everyone, unix)``.

    Addresses and CIDRs separated by commas or spaces (or a tuple of them); ``*`` trusts every
    peer, ``unix`` peers on unix sockets.
    """
    words = trusted.replace(",", " ").split() if isinstance(trusted, str) else list(trusted)
    networks = []
    for word in words:
        if word in ("*", "unix"):
            continue
        try:
            networks.append(ipaddress.ip_network(word, strict=False))
        except ValueError:
            raise ValueError(
                f"proxy_trusted / ASGI_HIJACK_PROXY_TRUSTED: {word!r} is not an IP address or CIDR "
                "(for example ASGI_HIJACK_PROXY_TRUSTED=127.0.0.1,10.0.0.0/8; * trusts every peer)"
            ) from None
    return tuple(networks), "*" in words, "unix" in words


def _is_trusted(peer: Any, trusted: str | tuple[str, ...]) -> bool:
    """Whether ``peer`` (a peer name, or ``"unix"`` for any unix socket peer) may send the header."""
    if peer == "unix":
        _, everyone, unix = trusted_networks(trusted)
        return everyone or unix
    return _trusted_host(peer[0], trusted)


@functools.lru_cache(maxsize=1024)
def _trusted_host(host: str, trusted: str | tuple[str, ...]) -> bool:
    """Whether ``host`` is trusted, cached: a server sees the same few balancers again and again."""
    networks, everyone, _ = trusted_networks(trusted)
    address = ipaddress.ip_address(host.split("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return everyone or any(address in network for network in networks)


# -- the server side -------------------------------------------------------------------------
_PASSED_ON = (
    "abort",
    "can_write_eof",
    "close",
    "get_protocol",
    "get_write_buffer_limits",
    "get_write_buffer_size",
    "is_closing",
    "is_reading",
    "pause_reading",
    "resume_reading",
    "set_protocol",
    "set_write_buffer_limits",
    "write",
    "write_eof",
    "writelines",
)


class ProxiedTransport(asyncio.Transport):
    """The connection's transport, as seen through its PROXY header.

    ``get_extra_info("peername")`` and the ``getpeername()`` of ``get_extra_info("socket")``
    are the client's address from the header (unless it names none, as LOCAL); the balancer's
    is ``get_extra_info("proxy").peer``. Everything else is the connection's own, and the
    methods are the transport's own bound methods: no cost per call.
    """

    def __init__(self, transport: asyncio.Transport, header: ProxyHeader) -> None:
        super().__init__()
        self.transport = transport
        self.header = header
        for name in _PASSED_ON:
            setattr(self, name, getattr(transport, name))

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "proxy":
            return self.header
        if self.header.source is not None:
            if name == "peername":
                return self.header.source
            if name == "socket":  # uvicorn takes scope["client"] from socket.getpeername()
                return _ProxiedSocket(self.transport.get_extra_info("socket"), self.header.source)
        return self.transport.get_extra_info(name, default)


class _ProxiedSocket:
    """The connection's socket, except that ``getpeername()`` is the client's address from the header."""

    def __init__(self, sock: Any, client: tuple[str, int]) -> None:
        self._sock = sock
        self._client = client

    def getpeername(self) -> tuple[str, int]:
        return self._client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class HeaderReader(asyncio.Protocol):
    """The connection's protocol until its PROXY header is read; then it hands over to ``protocol``."""

    def __init__(self, protocol: Any, transport: asyncio.Transport, mode: str, timeout: float) -> None:
        self.protocol = protocol
        self.transport = transport
        self.parser = HeaderParser(mode)
        self.timer = asyncio.get_running_loop().call_later(timeout, self.refuse, f"no PROXY header within {timeout} s")

    def data_received(self, data: bytes) -> None:
        try:
            header = self.parser.feed(data)
        except ProxyHeaderError as exc:
            self.refuse(str(exc))
            return
        if header is None:
            return
        self.timer.cancel()
        transport = self.transport
        peer = transport.get_extra_info("peername")
        proxied = ProxiedTransport(transport, header._replace(peer=peer if isinstance(peer, tuple) else None))
        transport.set_protocol(self.protocol)
        self.protocol.connection_made(proxied)
        if self.parser.rest and not transport.is_closing():
            self.protocol.data_received(self.parser.rest)

    def eof_received(self) -> None:
        # A peer that closes without sending a byte (a TCP health check, a port scan) is not logged.
        self.refuse("the peer closed before the end of its PROXY header" if self.parser.buffer else None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.timer.cancel()

    def refuse(self, reason: str | None) -> None:
        """Close without a reply, and log ``reason`` (one line) unless it is None."""
        self.timer.cancel()
        transport = self.transport
        if transport.is_closing():
            return
        if reason is not None:
            _logger.warning(
                "PROXY protocol: connection from %s refused: %s. Closed without a reply (proxy_protocol=%r, "
                "proxy_trusted=%r; the balancer sends the header with HAProxy's send-proxy-v2, see docs/deploy.md).",
                transport.get_extra_info("peername") or "a unix socket",
                reason,
                self.protocol.proxy_protocol,
                self.protocol.proxy_trusted,
            )
        transport.close()


_tls_reported: weakref.WeakSet[Any] = weakref.WeakSet()
"""Server configurations whose TLS refusal was logged."""


def refuse_tls(protocol: Any) -> None:
    """Log, once per server, that the PROXY protocol cannot work on this TLS server.

    Called when a connection is accepted (before the TLS handshake): a balancer's PROXY
    header then fails the handshake, and a handshake that succeeds is refused by
    :func:`intercept`.
    """
    if protocol.config not in _tls_reported:
        _tls_reported.add(protocol.config)
        _logger.error(
            "PROXY protocol (proxy_protocol=%r) cannot be used with --ssl-keyfile: the PROXY header comes "
            "before the TLS handshake, which asyncio performs below the protocol class, so every connection "
            "is refused. Terminate TLS at the balancer (HAProxy: bind ... ssl crt), or set "
            "ASGI_HIJACK_PROXY_PROTOCOL=off.",
            protocol.proxy_protocol,
        )


def intercept(protocol: Any, transport: asyncio.Transport, mode: str, trusted: str | tuple[str, ...]) -> bool:
    """Put a :class:`HeaderReader` in front of ``protocol``, unless the header was already read.

    Returns True if ``protocol.connection_made`` must wait (it is called again, with a
    :class:`ProxiedTransport`, once the header is read) or the connection was refused.
    """
    if isinstance(transport, ProxiedTransport):  # the header is read: zttp dispatching to HTTP/1.1 or HTTP/2
        return False
    reader = HeaderReader(protocol, transport, mode, protocol.head_timeout)
    transport.set_protocol(reader)  # the reader has the connection now, refused or not
    if transport.get_extra_info("sslcontext") is not None:
        reader.refuse(None)  # said by refuse_tls()
        return True
    sock = transport.get_extra_info("socket")
    peer = "unix" if sock is not None and sock.family == socket.AF_UNIX else transport.get_extra_info("peername")
    if not peer:  # reset before it was accepted: nobody to log
        reader.refuse(None)
    elif not _is_trusted(peer, trusted):
        reader.refuse("not a trusted balancer (if it is one, add its address to ASGI_HIJACK_PROXY_TRUSTED)")
    return True


def validate(mode: str, trusted: str | tuple[str, ...], where: str) -> None:
    """Raise ValueError, naming ``where``, unless ``mode`` and ``trusted`` are valid settings."""
    if mode not in MODES:
        raise ValueError(f"{where}: proxy_protocol={mode!r} is not one of {', '.join(MODES)}")
    trusted_networks(trusted)
