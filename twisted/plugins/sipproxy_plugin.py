from twisted.application.service import ServiceMaker

sipproxy = ServiceMaker(
    "sipproxy",
    "sipproxy.tap",
    "SIP registrar and stateful proxy (RFC 3261) with a live bindings page",
    "sipproxy",
)
