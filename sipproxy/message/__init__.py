"""The SIP message layer: bytes <-> Request/Response, standard library only (RFC 3261 §7, §19, §20, §25)."""

from sipproxy.message.errors import ParseError
from sipproxy.message.framing import KEEPALIVE, FramingError, KeepAlive, StreamFramer
from sipproxy.message.headers import Header, canonical_key, split_commas
from sipproxy.message.message import Message, Request, Response
from sipproxy.message.parser import parse_message
from sipproxy.message.responses import REASON_PHRASES, make_response, response_bytes
from sipproxy.message.uri import URI, AbsoluteURI, SipURI, format_host, is_ip_address, parse_uri
from sipproxy.message.values import (
    MAGIC_COOKIE,
    CSeq,
    NameAddr,
    Via,
    parse_cseq,
    parse_name_addr,
    parse_via,
)

__all__ = [
    "AbsoluteURI",
    "CSeq",
    "FramingError",
    "Header",
    "KEEPALIVE",
    "KeepAlive",
    "MAGIC_COOKIE",
    "Message",
    "NameAddr",
    "ParseError",
    "REASON_PHRASES",
    "Request",
    "Response",
    "SipURI",
    "StreamFramer",
    "URI",
    "Via",
    "canonical_key",
    "format_host",
    "is_ip_address",
    "make_response",
    "response_bytes",
    "parse_cseq",
    "parse_message",
    "parse_name_addr",
    "parse_uri",
    "parse_via",
    "split_commas",
]
