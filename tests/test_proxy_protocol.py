"""asgi_hijack.proxy_protocol without sockets: the sans-I/O header parser, trust and the settings.

The server side, on real uvicorn servers and behind a real HAProxy, is in
``test_proxy_protocol_server.py`` and ``test_proxy_protocol_haproxy.py``.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from asgi_hijack.proxy_protocol import (
    V2_MAX_PAYLOAD,
    HeaderParser,
    ProxyHeader,
    ProxyHeaderError,
    ProxySSL,
    _is_trusted,
    crc32c,
    trusted_networks,
)
from tests.helpers import ROOT, proxy_header, with_settings

CLIENT4, FRONT4 = ("203.0.113.7", 51234), ("192.0.2.1", 443)
CLIENT6, FRONT6 = ("2001:db8::7", 51234), ("2001:db8::1", 443)


def parse(data: bytes, mode: str = "any") -> tuple[ProxyHeader, bytes]:
    parser = HeaderParser(mode)
    header = parser.feed(data)
    assert header is not None, data
    return header, parser.rest


def refused(data: bytes, mode: str = "any") -> str:
    with pytest.raises(ProxyHeaderError) as caught:
        HeaderParser(mode).feed(data)
    return str(caught.value)


# -- v1 ---------------------------------------------------------------------------------------------


def test_v1_tcp4_and_the_bytes_after_it() -> None:
    header, rest = parse(proxy_header(1, CLIENT4, FRONT4) + b"GET / HTTP/1.1\r\n")
    assert header == ProxyHeader(1, "PROXY", CLIENT4, FRONT4)
    assert rest == b"GET / HTTP/1.1\r\n"


def test_v1_tcp6_and_unknown() -> None:
    assert parse(proxy_header(1, CLIENT6, FRONT6))[0].source == CLIENT6
    assert parse(b"PROXY UNKNOWN\r\n")[0] == ProxyHeader(1, "PROXY", None, None)
    assert parse(b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n")[0].source is None  # addresses ignored


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234\r\n", "malformed"),
        (b"PROXY TCP5 203.0.113.7 192.0.2.1 51234 443\r\n", "malformed"),
        (b"PROXY TCP4  203.0.113.7 192.0.2.1 51234 443\r\n", "malformed"),
        (b"PROXY TCP4 2001:db8::7 192.0.2.1 51234 443\r\n", "not an IPv4 address"),
        (b"PROXY TCP6 203.0.113.7 2001:db8::1 51234 443\r\n", "not an IPv6 address"),
        (b"PROXY TCP6 fe80::1%eth0 2001:db8::1 51234 443\r\n", "not an IPv6 address"),
        (b"PROXY TCP4 203.0.113.07 192.0.2.1 51234 443\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 example.com 192.0.2.1 51234 443\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 203.0.113.\xff 192.0.2.1 51234 443\r\n", "not an IPv4 address"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 65536 443\r\n", "0 to 65535"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 0443 443\r\n", "0 to 65535"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 -1 443\r\n", "0 to 65535"),
        (b"PROXY TCP4 203.0.113.7 192.0.2.1 51234 443\n", "CRLF"),
        (b"PROXY " + b"x" * 101, "within 107 bytes"),
    ],
)
def test_v1_malformed_lines_are_refused(line: bytes, reason: str) -> None:
    assert reason in refused(line)


def test_v1_longest_line_is_accepted() -> None:
    source, destination = ("ffff:" * 7 + "fffe", 65535), ("ffff:" * 7 + "ffff", 65535)
    line = proxy_header(1, source, destination)
    assert len(line) == 104  # the longest TCP6 line; UNKNOWN lines may pad up to 107
    assert parse(line)[0].source == source
    padded = b"PROXY UNKNOWN " + b"x" * 91 + b"\r\n"
    assert len(padded) == 107 and parse(padded)[0].source is None


# -- v2 ---------------------------------------------------------------------------------------------


def test_v2_tcp4_tcp6_and_the_bytes_after_it() -> None:
    header, rest = parse(proxy_header(2, CLIENT4, FRONT4) + b"\x16\x03")
    assert (header.version, header.command, header.source, header.destination, rest) == (
        2,
        "PROXY",
        CLIENT4,
        FRONT4,
        b"\x16\x03",
    )
    assert parse(proxy_header(2, CLIENT6, FRONT6))[0].source == CLIENT6


def test_v2_local_ignores_its_address_block() -> None:
    header, rest = parse(proxy_header(2) + b"GET")
    assert header == ProxyHeader(2, "LOCAL", None, None) and rest == b"GET"
    local_with_block = bytearray(proxy_header(2, CLIENT4, FRONT4))
    local_with_block[12] = 0x20
    assert parse(bytes(local_with_block))[0] == ProxyHeader(2, "LOCAL", None, None)


def test_v2_unspecified_and_unix_families_name_no_address() -> None:
    unspec = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x00, 0)
    assert parse(unspec)[0].source is None
    unix = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x31, 216) + b"/run/client".ljust(216, b"\0")
    assert parse(unix)[0].source is None


def test_v2_tlvs_alpn_authority_unique_id_and_ssl() -> None:
    ssl = struct.pack("!BI", 0x07, 0) + b"".join(
        struct.pack("!BH", kind, len(value)) + value
        for kind, value in [(0x21, b"TLSv1.3"), (0x22, b"alice"), (0x23, b"TLS_AES_128_GCM_SHA256")]
    )
    tlvs = [(0x01, b"h2"), (0x02, b"api.example.com"), (0x05, b"id-1"), (0x04, b"\0\0"), (0x20, ssl), (0xE0, b"x")]
    header, _ = parse(proxy_header(2, CLIENT4, FRONT4, tlvs=tlvs))
    assert header.alpn == b"h2" and header.authority == "api.example.com" and header.unique_id == b"id-1"
    assert header.ssl == ProxySSL(
        client_ssl=True, client_cert=True, verified=True, version="TLSv1.3", cipher="TLS_AES_128_GCM_SHA256", cn="alice"
    )
    assert header.tlvs == tuple(tlvs)  # every TLV is kept, unknown ones included


def test_v2_ssl_not_verified_and_without_client_certificate() -> None:
    header, _ = parse(proxy_header(2, CLIENT4, FRONT4, tlvs=[(0x20, struct.pack("!BI", 0x01, 1))]))
    assert header.ssl == ProxySSL(client_ssl=True, client_cert=False, verified=False)


def test_crc32c_known_value_and_the_v2_checksum() -> None:
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value (RFC 3720)
    unsigned = proxy_header(2, CLIENT4, FRONT4, tlvs=[(0x03, b"\0\0\0\0"), (0x01, b"h2")])
    signed = unsigned.replace(b"\x03\x00\x04\0\0\0\0", b"\x03\x00\x04" + crc32c(unsigned).to_bytes(4, "big"))
    assert parse(signed)[0].alpn == b"h2"
    assert "CRC32C" in refused(signed[:-1] + b"3")


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x11, 0x11, 12), "version/command"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x22, 0x11, 12), "version/command"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x12, 12) + bytes(12), "datagram"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x41, 0), "unknown"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, 8) + bytes(8), "shorter than 12"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, 14) + bytes(14), "cut short"),
        (b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, 16) + bytes(12) + b"\x01\x00\x09x", "overruns"),
        (proxy_header(2, CLIENT4, FRONT4, tlvs=[(0x02, b"\xff")]), "not UTF-8"),
        (proxy_header(2, CLIENT4, FRONT4, tlvs=[(0x20, b"\x01")]), "SSL TLV"),
        (proxy_header(2, CLIENT4, FRONT4, tlvs=[(0x03, b"\0")]), "not 4 bytes"),
    ],
)
def test_v2_malformed_headers_are_refused(data: bytes, reason: str) -> None:
    assert reason in refused(data)


def test_v2_too_long_is_refused_from_its_fixed_part() -> None:
    """The declared length is checked before the block arrives: no buffering of a huge header."""
    fixed = b"\r\n\r\n\x00\r\nQUIT\n" + struct.pack("!BBH", 0x21, 0x11, V2_MAX_PAYLOAD + 1)
    assert HeaderParser("v2").feed(fixed[:-1]) is None
    assert "longer than" in refused(fixed)


# -- which headers a mode accepts, and how early a non-header is refused ---------------------------


@pytest.mark.parametrize(
    ("mode", "version", "accepted"),
    [("v1", 1, True), ("v1", 2, False), ("v2", 1, False), ("v2", 2, True), ("any", 1, True), ("any", 2, True)],
)
def test_modes(mode: str, version: int, accepted: bool) -> None:
    data = proxy_header(version, CLIENT4, FRONT4)
    if accepted:
        assert parse(data, mode)[0].version == version
    else:
        assert "no PROXY header" in refused(data, mode)


@pytest.mark.parametrize("first", [b"G", b"\x16", b"PRI", b"\r\n\r\n\x01"])
def test_a_connection_without_the_header_is_refused_at_its_first_wrong_byte(first: bytes) -> None:
    assert "no PROXY header" in refused(first)


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="'v3'"):
        HeaderParser("v3")


# -- properties ---------------------------------------------------------------------------------------

addresses4 = st.tuples(st.ip_addresses(v=4).map(str), st.integers(0, 65535))
addresses6 = st.tuples(st.ip_addresses(v=6).map(str), st.integers(0, 65535))
tlv_lists = st.lists(st.tuples(st.sampled_from([0x01, 0x04, 0x05, 0xE0]), st.binary(max_size=40)), max_size=4)


@st.composite
def headers(draw: st.DrawFn) -> tuple[bytes, tuple[str, int] | None]:
    version = draw(st.sampled_from([1, 2]))
    family = draw(st.sampled_from([addresses4, addresses6]))
    source = draw(st.none() | family)
    destination = draw(family)
    tlvs = draw(tlv_lists) if version == 2 and source is not None else []
    return proxy_header(version, source, destination, tlvs=tlvs), source


@given(headers(), st.binary(max_size=64), st.lists(st.integers(0, 300), max_size=8))
def test_any_segmentation_gives_the_same_header_and_rest(
    header: tuple[bytes, tuple[str, int] | None], after: bytes, cuts: list[int]
) -> None:
    data, source = header
    whole, rest = parse(data + after)
    assert (whole.source is None) == (source is None)
    if whole.source is not None and source is not None:  # one address, written by inet_ntop
        assert (ipaddress.ip_address(whole.source[0]), whole.source[1]) == (ipaddress.ip_address(source[0]), source[1])
    assert rest == after
    stream = data + after
    points = sorted({min(cut, len(stream)) for cut in cuts} | {0, len(stream)})
    parser = HeaderParser("any")
    for start, end in itertools.pairwise(points):
        result = parser.feed(stream[start:end])
        if end < len(data):
            assert result is None  # incomplete: nothing yet, no error
            continue
        assert result == whole  # returned by the segment that completes it
        assert parser.rest == stream[len(data) : end]
        break


@given(headers(), st.integers(0, 120), st.binary(min_size=1, max_size=4))
def test_mutated_headers_are_parsed_or_refused_never_crash(
    header: tuple[bytes, tuple[str, int] | None], at: int, junk: bytes
) -> None:
    data, _ = header
    at = min(at, len(data))
    for mutated in (data[:at] + junk + data[at + len(junk) :], data[:at] + junk + data[at:], data[:at]):
        try:
            result = HeaderParser("any").feed(mutated)
        except ProxyHeaderError:
            continue
        assert result is None or isinstance(result, ProxyHeader)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_are_parsed_or_refused_never_crash(data: bytes) -> None:
    try:
        result = HeaderParser("any").feed(data)
    except ProxyHeaderError:
        return
    assert result is None or isinstance(result, ProxyHeader)


# -- trust and settings -----------------------------------------------------------------------------


def test_trusted_addresses_and_networks() -> None:
    trusted = "127.0.0.1, 10.0.0.0/8 ::1"
    assert _is_trusted(("127.0.0.1", 1), trusted) and _is_trusted(("10.9.8.7", 1), trusted)
    assert _is_trusted(("::ffff:10.1.1.1", 1, 0, 0), trusted)  # IPv4-mapped, as a dual-stack socket reports it
    assert _is_trusted(("::1", 1, 0, 0), trusted)
    assert not _is_trusted(("127.0.0.2", 1), trusted) and not _is_trusted(("11.0.0.1", 1), trusted)
    assert not _is_trusted("unix", trusted) and _is_trusted("unix", "unix") and _is_trusted("unix", "*")
    assert _is_trusted(("198.51.100.1", 1), "*") and _is_trusted(("10.0.0.1", 1), ("10.0.0.0/8",))


def test_a_wrong_trusted_entry_says_what_to_write() -> None:
    with pytest.raises(ValueError, match=r"'10\.0\.0\.0/33' is not an IP address or CIDR.*ASGI_HIJACK_PROXY_TRUSTED="):
        trusted_networks("127.0.0.1,10.0.0.0/33")


@pytest.mark.parametrize("parser", ["h11", "httptools", "zttp"])
def test_subclass_settings_are_checked_when_the_class_is_made(parser: str) -> None:
    with pytest.raises(ValueError, match="proxy_protocol='yes' is not one of off, v1, v2, any"):
        with_settings(parser, proxy_protocol="yes")
    with pytest.raises(ValueError, match=r"'lb\.internal' is not an IP address or CIDR"):
        with_settings(parser, proxy_protocol="v2", proxy_trusted="lb.internal")
    assert with_settings(parser, proxy_protocol="v2", proxy_trusted=("10.0.0.0/8",)).proxy_protocol == "v2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("ASGI_HIJACK_PROXY_PROTOCOL", "v3", "ASGI_HIJACK_PROXY_PROTOCOL='v3' is not one of off, v1, v2, any"),
        ("ASGI_HIJACK_PROXY_TRUSTED", "10.0.0.0/8,lb", "'lb' is not an IP address or CIDR"),
    ],
)
def test_a_wrong_environment_setting_fails_at_import(variable: str, value: str, message: str) -> None:
    env = {**os.environ, variable: value}
    done = subprocess.run(
        [sys.executable, "-c", "from asgi_hijack import H11HijackProtocol"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0 and message in done.stderr, done.stderr


def test_environment_settings_are_the_class_defaults() -> None:
    env = {**os.environ, "ASGI_HIJACK_PROXY_PROTOCOL": "V2", "ASGI_HIJACK_PROXY_TRUSTED": "10.0.0.0/8"}
    code = "import asgi_hijack as a; c = a.ZttpHijackProtocol; print(c.proxy_protocol, c.proxy_trusted)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["v2", "10.0.0.0/8"]
