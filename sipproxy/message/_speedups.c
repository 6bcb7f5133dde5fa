/* sipproxy.message._speedups: the everyday SIP message, parsed in C.
 *
 *     parse(data: bytes) -> Request | Response | None
 *
 *     name_addr(text: str) -> NameAddr | None, sip_uri(text: str) -> SipURI | None
 *
 * This is an accelerator for the short path of sipproxy/message/parser.py,
 * not a second parser.  It takes the messages that path calls everyday --
 * CRLF line ends, printable headers (UTF-8 only in free text: values, the
 * reason phrase, quoted strings), no folding, every Via, From, To, CSeq and
 * Request-URI in its plain form (the *_COMMON regexes of uri.py and
 * values.py) -- and builds exactly the objects the Python code builds for
 * them.  For anything else it returns None and parser.py runs the Python
 * parser, which stays the reference: it alone decides that a message is bad
 * and raises ParseError.  So this file never rejects anything; when in doubt
 * it defers.  tests/test_message_speedups.py holds the two to the same
 * results on the RFC 4475 messages and on random and mutated ones.
 *
 * Safety: the input is read through explicit (pointer, length) spans that
 * never leave the bytes object, nothing is written but freshly created
 * Python objects, and every check is done before the first object is built,
 * so a deferral leaves nothing behind.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <string.h>

/* The start line and MAX_HEADERS (parser.py) header lines. */
#define MAX_HEADERS 256
#define MAX_LINES (MAX_HEADERS + 1)
/* More Vias than this in one message: the Python parser takes it. */
#define MAX_VIAS 32

#define DEFER Py_RETURN_NONE

typedef struct {
    const char *p;
    Py_ssize_t n;
} Span;

static int
span_is(Span s, const char *lit)
{
    size_t n = strlen(lit);
    return (size_t)s.n == n && memcmp(s.p, lit, n) == 0;
}

static int
span_ieq(Span s, const char *lower)
{
    size_t n = strlen(lower);
    if ((size_t)s.n != n)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        if (c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        if (c != (unsigned char)lower[i])
            return 0;
    }
    return 1;
}

/* ---- character classes (RFC 3261 §25.1, as the Python regexes spell them) ---- */

static unsigned char TOKEN_C[256];    /* token */
static unsigned char DOMAIN_C[256];   /* alphanum "-" "." (hostname and IPv4) */
static unsigned char ALNUM_C[256];
static unsigned char USER_C[256];     /* user-unreserved and unreserved, no escapes */
static unsigned char PARAM_C[256];    /* paramchar, no escapes */
static unsigned char PLAIN_C[256];    /* a plain header-parameter value: [^;"\s] */
static unsigned char INNER_C[256];    /* a URI inside <>: [^<>\s"] */
static unsigned char TEXT_C[256];     /* what a header line may hold here: printable ASCII and HT */
static unsigned char QUOTED_C[256];   /* inside a quoted parameter value: TEXT8_C but " and \ */
static unsigned char TEXT8_C[256];    /* TEXT_C and the bytes of UTF-8 sequences (checked separately) */

#define ALNUM "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

static void
fill(unsigned char *table, const char *chars)
{
    for (; *chars; chars++)
        table[(unsigned char)*chars] = 1;
}

static void
fill_printable_except(unsigned char *table, const char *except)
{
    for (int c = 0x21; c < 0x7f; c++)
        table[c] = strchr(except, c) == NULL;
}

static void
init_tables(void)
{
    fill(TOKEN_C, ALNUM "-.!%*_+`'~");
    fill(DOMAIN_C, ALNUM "-.");
    fill(ALNUM_C, ALNUM);
    fill(USER_C, ALNUM "-_.!~*'()&=+$,;?/");
    fill(PARAM_C, ALNUM "-_.!~*'()[]/:&+$");
    /* The header holds printable ASCII and HT only (checked first): \s is SP and HT. */
    fill_printable_except(PLAIN_C, ";\"");
    fill_printable_except(INNER_C, "<>\"");
    fill_printable_except(TEXT_C, "");
    TEXT_C[' '] = TEXT_C['\t'] = 1;
    memcpy(TEXT8_C, TEXT_C, sizeof TEXT8_C);
    for (int c = 0x80; c < 0x100; c++)
        TEXT8_C[c] = 1;
    memcpy(QUOTED_C, TEXT8_C, sizeof QUOTED_C);
    QUOTED_C['"'] = QUOTED_C['\\'] = 0;
}

static const char *
scan(const char *p, const char *end, const unsigned char *table)
{
    while (p < end && table[(unsigned char)*p])
        p++;
    return p;
}

/* ---- what setup() hands over: the classes and their slots ---- */

/* Each field is a __slots__ member of an ordinary Python class: setup() reads
 * where its member descriptor keeps it, and put() stores there, as the
 * descriptor's own __set__ would on an object of exactly that class. */
typedef struct {
    PyObject *descr;
    Py_ssize_t offset;
} Slot;

static PyTypeObject *HeaderT, *RequestT, *ResponseT, *ViaT, *NameAddrT, *SipURIT, *CSeqT;
static Slot H_key, H_name, H_value, H_raw;
static Slot M_headers, M_body, M_cache;
static Slot R_method, R_uri_text, R_uri;
static Slot S_status, S_reason;
static Slot V_transport, V_host, V_port, V_params, V_protocol;
static Slot N_uri, N_display, N_params;
static Slot U_scheme, U_host, U_user, U_password, U_port, U_params, U_headers;
static Slot C_seq, C_method;

/* Interned strings the objects share. */
static PyObject *S_via, *S_from, *S_to, *S_cseq, *S_sip, *S_sip20, *S_empty, *S_UDP, *S_TCP;

static int ready = 0;

/* obj.<slot> = value on a new object of the slot's class; steals the reference to value
 * (NULL: an error is already set). */
static int
put(PyObject *obj, Slot *slot, PyObject *value)
{
    if (value == NULL)
        return -1;
    PyObject **field = (PyObject **)((char *)obj + slot->offset);
    PyObject *old = *field;
    *field = value;
    Py_XDECREF(old);
    return 0;
}

static PyObject *
alloc(PyTypeObject *type)
{
    return type->tp_alloc(type, 0);
}

static PyObject *
str_of(Span s)
{
    /* Only ever called on printable ASCII (checked when the lines were split). */
    PyObject *u = PyUnicode_New(s.n, 127);
    if (u != NULL && s.n)
        memcpy(PyUnicode_1BYTE_DATA(u), s.p, (size_t)s.n);
    return u;
}

/* Parameter names every message carries, interned: no new string and no hashing for them. */
static const char *const COMMON_NAMES[] = {"branch", "tag", "rport", "received", "lr", "transport", "maddr",
                                           "ttl", "expires", "q", "user", "method"};
#define N_COMMON (sizeof COMMON_NAMES / sizeof COMMON_NAMES[0])
static PyObject *common_names[N_COMMON];

/* Free text (a header's value and line, a reason phrase, a display name, a quoted parameter):
 * UTF-8 when the message has bytes past ASCII (the whole head was checked to be valid UTF-8,
 * and these spans are cut at ASCII bytes), else ASCII as str_of. */
static PyObject *
text_of(Span s, int utf8)
{
    return utf8 ? PyUnicode_DecodeUTF8(s.p, s.n, NULL) : str_of(s);
}

/* An ASCII span as a new str with the letters from..from+25 moved by shift (to lower or upper case). */
static PyObject *
cased_of(Span s, unsigned char from, int shift)
{
    PyObject *u = PyUnicode_New(s.n, 127);
    if (u == NULL)
        return NULL;
    Py_UCS1 *out = PyUnicode_1BYTE_DATA(u);
    for (Py_ssize_t i = 0; i < s.n; i++) {
        unsigned char c = (unsigned char)s.p[i];
        out[i] = (c >= from && c <= from + 25) ? (Py_UCS1)(c + shift) : c;
    }
    return u;
}

static PyObject *
lower_of(Span s)
{
    for (size_t i = 0; i < N_COMMON; i++) {
        if (span_ieq(s, COMMON_NAMES[i]) && common_names[i] != NULL)
            return Py_NewRef(common_names[i]);
    }
    return cased_of(s, 'A', 'a' - 'A');
}

/* ---- header names: the spellings parser.py knows, name -> (name, key) ---- */

#define NAME_TABLE 2048 /* a power of two, well above twice the spellings */

typedef struct {
    char *bytes;
    Py_ssize_t n;
    PyObject *name; /* the spelling as a str: Header.name when written this way */
    PyObject *key;  /* canonical_key(spelling) */
} Name;

static Name names[NAME_TABLE];

static size_t
name_hash(const char *p, Py_ssize_t n, int lower)
{
    size_t h = 2166136261u;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (lower && c >= 'A' && c <= 'Z')
            c += 'a' - 'A';
        h = (h ^ c) * 16777619u;
    }
    return h;
}

/* The entry spelled exactly so, or with lower set, the one spelled as its lower-case form. */
static Name *
find_name(const char *p, Py_ssize_t n, int lower)
{
    size_t i = name_hash(p, n, lower) & (NAME_TABLE - 1);
    for (; names[i].bytes != NULL; i = (i + 1) & (NAME_TABLE - 1)) {
        Name *e = &names[i];
        if (e->n != n)
            continue;
        if (!lower) {
            if (memcmp(e->bytes, p, (size_t)n) == 0)
                return e;
        }
        else if (span_ieq((Span){p, n}, e->bytes)) {
            return e;
        }
    }
    return NULL;
}

static int
add_name(PyObject *spelling, PyObject *key)
{
    Py_ssize_t n;
    const char *p = PyUnicode_AsUTF8AndSize(spelling, &n);
    if (p == NULL)
        return -1;
    if (!PyUnicode_IS_ASCII(spelling) || !PyUnicode_IS_ASCII(key)) {
        PyErr_SetString(PyExc_ValueError, "header names are ASCII");
        return -1;
    }
    if (find_name(p, n, 0) != NULL)
        return 0;
    size_t i = name_hash(p, n, 0) & (NAME_TABLE - 1);
    size_t used = 0;
    while (names[i].bytes != NULL) {
        i = (i + 1) & (NAME_TABLE - 1);
        if (++used > NAME_TABLE / 2) {
            PyErr_SetString(PyExc_ValueError, "too many header spellings");
            return -1;
        }
    }
    char *copy = PyMem_Malloc((size_t)n + 1);
    if (copy == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    memcpy(copy, p, (size_t)n + 1);
    Py_INCREF(spelling);
    Py_INCREF(key);
    PyUnicode_InternInPlace(&key);
    names[i] = (Name){copy, n, spelling, key};
    return 0;
}

/* ---- the plain forms of the typed values ---- */

/* §25.1 hostname or IPv4address, as uri.DOMAIN: labels of alphanum and "-", neither
 * first nor last "-", joined by "."; one trailing "." allowed.  s holds DOMAIN_C only. */
static int
is_domain(Span s)
{
    Py_ssize_t n = s.n;
    if (n > 0 && s.p[n - 1] == '.')
        n--;
    if (n == 0)
        return 0;
    Py_ssize_t start = 0;
    for (Py_ssize_t i = 0; i <= n; i++) {
        if (i == n || s.p[i] == '.') {
            if (i == start || !ALNUM_C[(unsigned char)s.p[start]] || !ALNUM_C[(unsigned char)s.p[i - 1]])
                return 0;
            start = i + 1;
        }
    }
    return 1;
}

/* A host and an optional ":port" (1-5 digits, at most 65535); port -1 when absent. */
static int
read_hostport(const char **pp, const char *end, Span *host, long *port)
{
    const char *p = *pp;
    const char *h = scan(p, end, DOMAIN_C);
    *host = (Span){p, h - p};
    if (!is_domain(*host))
        return 0;
    p = h;
    *port = -1;
    if (p < end && *p == ':') {
        const char *digits = ++p;
        long value = 0;
        while (p < end && *p >= '0' && *p <= '9' && p - digits < 6)
            value = value * 10 + (*p++ - '0');
        if (p == digits || p - digits > 5 || value > 65535)
            return 0;
        *port = value;
    }
    *pp = p;
    return 1;
}

typedef struct {
    Span name;
    Span value;
    int has_value;
} Param;

/* The three kinds of parameter list the plain forms have. */
enum ParamKind {
    P_VIA,    /* token names, [^;"\s] values (values._PLAIN_PARAMS) */
    P_URI,    /* paramchar names and values, no escapes (uri._SIP_COMMON) */
    P_HEADER, /* a name-addr's: P_VIA's, or a quoted string without escapes, kept with its quotes
               * (headers.split_params, as for ;+sip.instance="<urn:...>") */
};

/* The next ";name[=value]" before end: 1 and p advanced, 0 at the end, -1 when not plain. */
static int
next_param(const char **pp, const char *end, enum ParamKind kind, Param *out)
{
    const char *p = *pp;
    if (p == end)
        return 0;
    if (*p != ';')
        return -1;
    const char *s = ++p;
    p = scan(p, end, kind == P_URI ? PARAM_C : TOKEN_C);
    if (p == s)
        return -1;
    out->name = (Span){s, p - s};
    out->has_value = 0;
    if (p < end && *p == '=') {
        s = ++p;
        if (kind == P_HEADER && p < end && *p == '"') {
            p = scan(p + 1, end, QUOTED_C);
            if (p == end || *p != '"')
                return -1; /* an escape, a control character or no closing quote */
            p++;
        }
        else {
            p = scan(p, end, kind == P_URI ? PARAM_C : PLAIN_C);
            if (p == s)
                return -1;
        }
        out->value = (Span){s, p - s};
        out->has_value = 1;
    }
    if (p < end && *p != ';')
        return -1;
    *pp = p;
    return 1;
}

static int
plain_params(Span s, enum ParamKind kind)
{
    const char *p = s.p, *end = s.p + s.n;
    Param param;
    int r;
    while ((r = next_param(&p, end, kind, &param)) == 1)
        ;
    return r == 0;
}

/* 1 to max_len ASCII digits (max_len <= 18), at most limit. */
static int
all_digits(Span s, Py_ssize_t max_len, long long limit, long long *value)
{
    if (s.n == 0 || s.n > max_len)
        return 0;
    long long v = 0;
    for (Py_ssize_t i = 0; i < s.n; i++) {
        if (s.p[i] < '0' || s.p[i] > '9')
            return 0;
        v = v * 10 + (s.p[i] - '0');
    }
    if (v > limit)
        return 0;
    *value = v;
    return 1;
}

typedef struct {
    int has_user;
    Span user, host, params;
    long port;
} Uri;

/* uri._SIP_COMMON after "sip:": [user@]host[:port][;params], nothing else. */
static int
read_sip_uri(Span text, Uri *uri)
{
    if (text.n < 4 || memcmp(text.p, "sip:", 4) != 0)
        return 0;
    const char *p = text.p + 4, *end = text.p + text.n;
    const char *at = memchr(p, '@', (size_t)(end - p));
    uri->has_user = at != NULL;
    if (at != NULL) {
        uri->user = (Span){p, at - p};
        if (at == p || scan(p, at, USER_C) != at)
            return 0;
        p = at + 1;
    }
    if (!read_hostport(&p, end, &uri->host, &uri->port))
        return 0;
    uri->params = (Span){p, end - p};
    return plain_params(uri->params, P_URI);
}

typedef struct {
    int has_display;
    Span display, params;
    Uri uri;
} Addr;

/* values._NAME_ADDR_COMMON: ["quoted" |token words ]<sip-uri>;params */
static int
read_bracketed(Span text, Addr *addr)
{
    const char *p = text.p, *end = text.p + text.n;
    addr->has_display = 0;
    if (p < end && *p == '"') {
        const char *q = p + 1;
        while (q < end && *q != '"' && *q != '\\')
            q++;
        if (q == end || *q != '"')
            return 0;
        addr->has_display = 1;
        addr->display = (Span){p + 1, q - p - 1};
        p = q + 1;
        if (p < end && *p == ' ')
            p++;
    }
    else if (p < end && TOKEN_C[(unsigned char)*p]) {
        const char *start = p;
        for (;;) {
            p = scan(p, end, TOKEN_C);
            addr->display = (Span){start, p - start};
            if (p + 1 < end && *p == ' ' && TOKEN_C[(unsigned char)p[1]])
                p++;
            else
                break;
        }
        addr->has_display = 1;
        if (p < end && *p == ' ')
            p++;
    }
    if (p == end || *p != '<')
        return 0;
    const char *inner = ++p;
    p = scan(p, end, INNER_C);
    if (p == inner || p == end || *p != '>')
        return 0;
    if (!read_sip_uri((Span){inner, p - inner}, &addr->uri))
        return 0;
    addr->params = (Span){p + 1, end - p - 1};
    return plain_params(addr->params, P_HEADER);
}

/* A From/To value: the plain name-addr, or an addr-spec as values._parse_name_addr reads one
 * (no "<" before the first ";", which ends the URI; no "," or "?" in it) with plain parameters. */
static int
read_name_addr(Span text, Addr *addr)
{
    if (read_bracketed(text, addr))
        return 1;
    if (text.n == 0 || text.p[0] == '"')
        return 0;
    const char *end = text.p + text.n;
    const char *semi = memchr(text.p, ';', (size_t)text.n);
    if (semi == NULL)
        semi = end;
    Span uri = {text.p, semi - text.p};
    if (memchr(uri.p, '<', (size_t)uri.n) || memchr(uri.p, ',', (size_t)uri.n) || memchr(uri.p, '?', (size_t)uri.n))
        return 0;
    if (!read_sip_uri(uri, &addr->uri))
        return 0;
    addr->has_display = 0;
    addr->params = (Span){semi, end - semi};
    return plain_params(addr->params, P_HEADER);
}

typedef struct {
    Span transport, host, params;
    long port;
} ViaV;

/* values._VIA_COMMON and _check_via_params: SIP/2.0/TRANSPORT host[:port];params */
static int
read_via(Span text, ViaV *via)
{
    const char *p = text.p, *end = text.p + text.n;
    if (text.n < 8 || memcmp(p, "SIP/2.0/", 8) != 0)
        return 0;
    p += 8;
    const char *t = p;
    while (p < end && ((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z')))
        p++;
    if (p == t || p == end || *p != ' ')
        return 0;
    via->transport = (Span){t, p - t};
    p++;
    if (!read_hostport(&p, end, &via->host, &via->port))
        return 0;
    via->params = (Span){p, end - p};
    Param param;
    int r;
    long long number;
    while ((r = next_param(&p, end, P_VIA, &param)) == 1) {
        if (!param.has_value) {
            /* flags that need a value (a repeated name could still fix it: the Python parser decides) */
            if (span_ieq(param.name, "branch") || span_ieq(param.name, "received") ||
                span_ieq(param.name, "maddr") || span_ieq(param.name, "ttl"))
                return 0;
        }
        else if (span_ieq(param.name, "ttl")) {
            if (!all_digits(param.value, 3, 255, &number))
                return 0;
        }
        else if (span_ieq(param.name, "rport")) {
            if (!all_digits(param.value, 5, 65535, &number))
                return 0;
        }
    }
    return r == 0;
}

/* values._CSEQ_COMMON: digits SP token, the number at most 2**31-1. */
static int
read_cseq(Span text, long long *seq, Span *method)
{
    const char *sp = memchr(text.p, ' ', (size_t)text.n);
    if (sp == NULL)
        return 0;
    if (!all_digits((Span){text.p, sp - text.p}, 10, 2147483647LL, seq))
        return 0;
    *method = (Span){sp + 1, text.p + text.n - sp - 1};
    return method->n > 0 && scan(method->p, method->p + method->n, TOKEN_C) == method->p + method->n;
}

/* ---- building the objects ---- */

static PyObject *
make_params(Span text, enum ParamKind kind, int utf8)
{
    PyObject *params = PyDict_New();
    if (params == NULL)
        return NULL;
    const char *p = text.p, *end = text.p + text.n;
    Param param;
    while (next_param(&p, end, kind, &param) == 1) {
        PyObject *name = lower_of(param.name);
        PyObject *value = param.has_value ? text_of(param.value, utf8) : Py_NewRef(Py_None);
        int r = (name && value) ? PyDict_SetItem(params, name, value) : -1;
        Py_XDECREF(name);
        Py_XDECREF(value);
        if (r < 0) {
            Py_DECREF(params);
            return NULL;
        }
    }
    return params;
}

static PyObject *
port_of(long port)
{
    return port < 0 ? Py_NewRef(Py_None) : PyLong_FromLong(port);
}

static PyObject *
make_uri(const Uri *u)
{
    PyObject *uri = alloc(SipURIT);
    if (uri == NULL)
        return NULL;
    if (put(uri, &U_scheme, Py_NewRef(S_sip)) < 0 || put(uri, &U_host, str_of(u->host)) < 0 ||
        put(uri, &U_user, u->has_user ? str_of(u->user) : Py_NewRef(Py_None)) < 0 ||
        put(uri, &U_password, Py_NewRef(Py_None)) < 0 || put(uri, &U_port, port_of(u->port)) < 0 ||
        put(uri, &U_params, make_params(u->params, P_URI, 0)) < 0 || put(uri, &U_headers, Py_NewRef(S_empty)) < 0) {
        Py_DECREF(uri);
        return NULL;
    }
    return uri;
}

static PyObject *
make_name_addr(const Addr *a, int utf8)
{
    PyObject *addr = alloc(NameAddrT);
    if (addr == NULL)
        return NULL;
    if (put(addr, &N_uri, make_uri(&a->uri)) < 0 ||
        put(addr, &N_display, a->has_display ? text_of(a->display, utf8) : Py_NewRef(Py_None)) < 0 ||
        put(addr, &N_params, make_params(a->params, P_HEADER, utf8)) < 0) {
        Py_DECREF(addr);
        return NULL;
    }
    return addr;
}

static PyObject *
make_transport(Span t)
{
    if (span_is(t, "UDP"))
        return Py_NewRef(S_UDP);
    if (span_is(t, "TCP"))
        return Py_NewRef(S_TCP);
    return cased_of(t, 'a', 'A' - 'a');
}

static PyObject *
make_via(const ViaV *v)
{
    PyObject *via = alloc(ViaT);
    if (via == NULL)
        return NULL;
    if (put(via, &V_transport, make_transport(v->transport)) < 0 || put(via, &V_host, str_of(v->host)) < 0 ||
        put(via, &V_port, port_of(v->port)) < 0 || put(via, &V_params, make_params(v->params, P_VIA, 0)) < 0 ||
        put(via, &V_protocol, Py_NewRef(S_sip20)) < 0) {
        Py_DECREF(via);
        return NULL;
    }
    return via;
}

static PyObject *
make_cseq(long long seq, Span method)
{
    PyObject *cseq = alloc(CSeqT);
    if (cseq == NULL)
        return NULL;
    if (put(cseq, &C_seq, PyLong_FromLongLong(seq)) < 0 || put(cseq, &C_method, str_of(method)) < 0) {
        Py_DECREF(cseq);
        return NULL;
    }
    return cseq;
}

typedef struct {
    Span raw, value;
    Name *known;      /* spelled exactly as a known name */
    PyObject *key;    /* the key, when known in some spelling (borrowed from the table) */
} Line;

static PyObject *
make_header(const Line *line, int utf8)
{
    PyObject *h = alloc(HeaderT);
    if (h == NULL)
        return NULL;
    Span name = {line->raw.p, (const char *)memchr(line->raw.p, ':', (size_t)line->raw.n) - line->raw.p};
    PyObject *key = line->key != NULL ? Py_NewRef(line->key) : lower_of(name);
    PyObject *name_obj = line->known != NULL ? Py_NewRef(line->known->name) : str_of(name);
    if (put(h, &H_key, key) < 0 || put(h, &H_name, name_obj) < 0 || put(h, &H_value, text_of(line->value, utf8)) < 0 ||
        put(h, &H_raw, text_of(line->raw, utf8)) < 0) {
        Py_DECREF(h);
        return NULL;
    }
    return h;
}

static PyObject *
set_cache(PyObject *cache, PyObject *key, PyObject *value)
{
    if (value == NULL)
        return NULL;
    int r = PyDict_SetItem(cache, key, value);
    Py_DECREF(value);
    return r < 0 ? NULL : cache;
}

/* ---- parse() ---- */

enum { F_CALL_ID, F_CSEQ, F_FROM, F_TO, F_MAX_FORWARDS, F_CONTENT_LENGTH, F_COUNT };
static PyObject *single_keys[F_COUNT];

static PyObject *
parse(PyObject *module, PyObject *data)
{
    if (!ready || !PyBytes_CheckExact(data))
        DEFER;
    const char *d = PyBytes_AS_STRING(data);
    const char *end = d + PyBytes_GET_SIZE(data);

    /* Lines up to the first empty one: CRLF only, printable ASCII and HT, and UTF-8 checked below. */
    Line lines[MAX_LINES]; /* on the stack: parse() may run again from a finalizer while building */
    Py_ssize_t nlines = 0;
    const char *p = d, *start = d;
    if (end - d < 4 || *d == '\r')
        DEFER;
    int utf8 = 0;
    for (;;) {
        p = scan(p, end, TEXT_C);
        if (p < end && (unsigned char)*p >= 0x80) {
            utf8 = 1;
            p = scan(p, end, TEXT8_C);
        }
        if (p + 1 >= end || p[0] != '\r' || p[1] != '\n' || nlines == MAX_LINES)
            DEFER;
        lines[nlines++].raw = (Span){start, p - start};
        p += 2;
        if (p + 1 < end && p[0] == '\r' && p[1] == '\n')
            break;
        start = p;
    }
    const char *body = p + 2;
    Py_ssize_t body_len = end - body;
    if (utf8) {
        /* Bytes past ASCII: only a head that is valid UTF-8 (the Python parser decodes the rest
         * with surrogateescape).  Every span cut from it at ASCII bytes then decodes too. */
        PyObject *head = PyUnicode_DecodeUTF8(d, p - d, NULL);
        if (head == NULL) {
            PyErr_Clear();
            DEFER;
        }
        Py_DECREF(head);
    }

    /* The start line. */
    Span first = lines[0].raw;
    const char *fend = first.p + first.n;
    int response = first.n >= 4 && span_ieq((Span){first.p, 4}, "sip/");
    Span method = {0}, uri_text = {0}, reason = {0};
    long status = 0;
    Uri ruri;
    if (response) {
        if (first.n < 11 || memcmp(first.p, "SIP/2.0 ", 8) != 0)
            DEFER;
        const char *code = first.p + 8;
        if (code[0] < '1' || code[0] > '6' || code[1] < '0' || code[1] > '9' || code[2] < '0' || code[2] > '9')
            DEFER;
        if (code + 3 < fend && code[3] != ' ')
            DEFER;
        status = (code[0] - '0') * 100 + (code[1] - '0') * 10 + (code[2] - '0');
        reason = code + 3 < fend ? (Span){code + 4, fend - code - 4} : (Span){code + 3, 0};
    }
    else {
        const char *sp1 = memchr(first.p, ' ', (size_t)first.n);
        if (sp1 == NULL)
            DEFER;
        const char *sp2 = memchr(sp1 + 1, ' ', (size_t)(fend - sp1 - 1));
        if (sp2 == NULL || memchr(sp2 + 1, ' ', (size_t)(fend - sp2 - 1)) != NULL)
            DEFER;
        method = (Span){first.p, sp1 - first.p};
        uri_text = (Span){sp1 + 1, sp2 - sp1 - 1};
        if (method.n == 0 || scan(method.p, sp1, TOKEN_C) != sp1 || !span_is((Span){sp2 + 1, fend - sp2 - 1}, "SIP/2.0"))
            DEFER;
        if (!read_sip_uri(uri_text, &ruri))
            DEFER;
    }

    /* The header lines; the values every layer relies on. */
    Span single[F_COUNT];
    int seen[F_COUNT] = {0};
    ViaV vias[MAX_VIAS];
    int nvias = 0;
    for (Py_ssize_t i = 1; i < nlines; i++) {
        Line *line = &lines[i];
        const char *l = line->raw.p, *lend = l + line->raw.n;
        if (*l == ' ' || *l == '\t')
            DEFER; /* folding */
        const char *colon = memchr(l, ':', (size_t)line->raw.n);
        if (colon == NULL || colon == l)
            DEFER;
        line->known = find_name(l, colon - l, 0);
        if (line->known != NULL) {
            line->key = line->known->key;
        }
        else {
            if (scan(l, colon, TOKEN_C) != colon)
                DEFER; /* "Name :" or not a token: the general path */
            Name *lower = find_name(l, colon - l, 1);
            line->key = lower != NULL ? lower->key : NULL;
        }
        const char *v = colon + 1, *vend = lend;
        while (v < vend && (*v == ' ' || *v == '\t'))
            v++;
        while (vend > v && (vend[-1] == ' ' || vend[-1] == '\t'))
            vend--;
        line->value = (Span){v, vend - v};
        PyObject *key = line->key;
        if (key == NULL)
            continue;
        if (key == S_via) {
            if (nvias == MAX_VIAS || memchr(v, ',', (size_t)(vend - v)) != NULL || !read_via(line->value, &vias[nvias]))
                DEFER;
            nvias++;
            continue;
        }
        for (int f = 0; f < F_COUNT; f++) {
            if (key == single_keys[f]) {
                if (!seen[f]) {
                    seen[f] = 1;
                    single[f] = line->value;
                }
                else if (single[f].n != line->value.n || memcmp(single[f].p, v, (size_t)single[f].n) != 0) {
                    DEFER; /* two different values: the Python parser answers 400 */
                }
                break;
            }
        }
    }
    if (nvias == 0 || !seen[F_FROM] || !seen[F_TO] || !seen[F_CALL_ID] || !seen[F_CSEQ])
        DEFER;
    Addr from, to;
    long long seq, number;
    Span cseq_method;
    if (!read_name_addr(single[F_FROM], &from) || !read_name_addr(single[F_TO], &to))
        DEFER;
    if (!read_cseq(single[F_CSEQ], &seq, &cseq_method))
        DEFER;
    if (!response && (cseq_method.n != method.n || memcmp(cseq_method.p, method.p, (size_t)method.n) != 0))
        DEFER;
    Span call_id = single[F_CALL_ID];
    if (call_id.n == 0 || memchr(call_id.p, ' ', (size_t)call_id.n) || memchr(call_id.p, '\t', (size_t)call_id.n))
        DEFER;
    if (!response && seen[F_MAX_FORWARDS] && !all_digits(single[F_MAX_FORWARDS], 10, 255, &number))
        DEFER;
    if (seen[F_CONTENT_LENGTH]) {
        if (!all_digits(single[F_CONTENT_LENGTH], 10, 2147483648LL, &number) || number > body_len)
            DEFER;
        body_len = number; /* §18.3: bytes past Content-Length are discarded */
    }

    /* Everything checked: build the message. */
    PyObject *message = alloc(response ? ResponseT : RequestT);
    if (message == NULL)
        return NULL;
    PyObject *headers = PyList_New(nlines - 1);
    PyObject *cache = PyDict_New();
    PyObject *via_list = PyList_New(nvias);
    if (put(message, &M_headers, Py_XNewRef(headers)) < 0 || put(message, &M_cache, Py_XNewRef(cache)) < 0 ||
        via_list == NULL)
        goto error;
    for (Py_ssize_t i = 1; i < nlines; i++) {
        PyObject *h = make_header(&lines[i], utf8);
        if (h == NULL)
            goto error;
        PyList_SET_ITEM(headers, i - 1, h);
    }
    for (int i = 0; i < nvias; i++) {
        PyObject *via = make_via(&vias[i]);
        if (via == NULL)
            goto error;
        PyList_SET_ITEM(via_list, i, via);
    }
    if (set_cache(cache, S_via, Py_NewRef(via_list)) == NULL || set_cache(cache, S_from, make_name_addr(&from, utf8)) == NULL ||
        set_cache(cache, S_to, make_name_addr(&to, utf8)) == NULL || set_cache(cache, S_cseq, make_cseq(seq, cseq_method)) == NULL)
        goto error;
    if (put(message, &M_body, PyBytes_FromStringAndSize(body, body_len)) < 0)
        goto error;
    if (response) {
        if (put(message, &S_status, PyLong_FromLong(status)) < 0 || put(message, &S_reason, text_of(reason, utf8)) < 0)
            goto error;
    }
    else if (put(message, &R_method, str_of(method)) < 0 || put(message, &R_uri_text, str_of(uri_text)) < 0 ||
             put(message, &R_uri, make_uri(&ruri)) < 0) {
        goto error;
    }
    Py_DECREF(headers);
    Py_DECREF(cache);
    Py_DECREF(via_list);
    return message;

error:
    Py_DECREF(message);
    Py_XDECREF(headers);
    Py_XDECREF(cache);
    Py_XDECREF(via_list);
    return NULL;
}

/* ---- name_addr(), sip_uri(): the same plain forms, one value at a time ---- */

/* The bytes of an ASCII str (what the header scan guarantees for parse()); NULL otherwise. */
static const char *
ascii_text(PyObject *text, Py_ssize_t *n)
{
    if (!ready || !PyUnicode_CheckExact(text) || !PyUnicode_IS_ASCII(text))
        return NULL;
    *n = PyUnicode_GET_LENGTH(text);
    return (const char *)PyUnicode_1BYTE_DATA(text);
}

PyDoc_STRVAR(name_addr_doc,
             "name_addr(text) -> NameAddr | None\n\n"
             "values.parse_name_addr for the plain forms parse() reads in From and To;\n"
             "None for anything else.");

static PyObject *
name_addr(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *p = ascii_text(text, &n);
    Addr addr;
    if (p == NULL || !read_name_addr((Span){p, n}, &addr))
        DEFER;
    return make_name_addr(&addr, 0);
}

PyDoc_STRVAR(sip_uri_doc,
             "sip_uri(text) -> SipURI | None\n\n"
             "uri.parse_uri for a plain sip: URI (uri._SIP_COMMON); None for anything else.");

static PyObject *
sip_uri(PyObject *module, PyObject *text)
{
    Py_ssize_t n;
    const char *p = ascii_text(text, &n);
    Uri uri;
    if (p == NULL || !read_sip_uri((Span){p, n}, &uri))
        DEFER;
    return make_uri(&uri);
}

/* ---- setup() ---- */

static int
slot(Slot *out, PyTypeObject *type, const char *name)
{
    PyObject *descr = PyObject_GetAttrString((PyObject *)type, name);
    if (descr == NULL)
        return -1;
    PyMemberDef *member = NULL;
    if (strcmp(Py_TYPE(descr)->tp_name, "member_descriptor") == 0)
        member = ((PyMemberDescrObject *)descr)->d_member;
    if (member == NULL || member->type != T_OBJECT_EX || (member->flags & READONLY) ||
        member->offset < (Py_ssize_t)sizeof(PyObject) || member->offset > type->tp_basicsize - (Py_ssize_t)sizeof(PyObject *)) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not a writable __slots__ member", type->tp_name, name);
        Py_DECREF(descr);
        return -1;
    }
    Py_XSETREF(out->descr, descr);
    out->offset = member->offset;
    return 0;
}

static PyObject *
intern(const char *text)
{
    return PyUnicode_InternFromString(text);
}

PyDoc_STRVAR(setup_doc,
             "setup(Header, Request, Response, Via, NameAddr, SipURI, CSeq, known_spellings)\n\n"
             "Hand over the message classes and the header spellings parser.py knows\n"
             "(spelling -> canonical key).  parse() returns None until this was called.");

static PyObject *
setup(PyObject *module, PyObject *args)
{
    PyObject *known;
    if (!PyArg_ParseTuple(args, "O!O!O!O!O!O!O!O!", &PyType_Type, &HeaderT, &PyType_Type, &RequestT, &PyType_Type,
                          &ResponseT, &PyType_Type, &ViaT, &PyType_Type, &NameAddrT, &PyType_Type, &SipURIT,
                          &PyType_Type, &CSeqT, &PyDict_Type, &known))
        return NULL;
    ready = 0;
    PyTypeObject *types[] = {HeaderT, RequestT, ResponseT, ViaT, NameAddrT, SipURIT, CSeqT};
    for (size_t i = 0; i < sizeof types / sizeof types[0]; i++)
        Py_INCREF(types[i]); /* kept for the life of the process */
    if (slot(&H_key, HeaderT, "key") || slot(&H_name, HeaderT, "name") || slot(&H_value, HeaderT, "value") ||
        slot(&H_raw, HeaderT, "raw") || slot(&M_headers, RequestT, "headers") || slot(&M_body, RequestT, "body") ||
        slot(&M_cache, RequestT, "_cache") || slot(&R_method, RequestT, "method") ||
        slot(&R_uri_text, RequestT, "uri_text") || slot(&R_uri, RequestT, "_uri") ||
        slot(&S_status, ResponseT, "status") || slot(&S_reason, ResponseT, "reason") ||
        slot(&V_transport, ViaT, "transport") || slot(&V_host, ViaT, "host") || slot(&V_port, ViaT, "port") ||
        slot(&V_params, ViaT, "params") || slot(&V_protocol, ViaT, "protocol") || slot(&N_uri, NameAddrT, "uri") ||
        slot(&N_display, NameAddrT, "display") || slot(&N_params, NameAddrT, "params") ||
        slot(&U_scheme, SipURIT, "scheme") || slot(&U_host, SipURIT, "host") || slot(&U_user, SipURIT, "user") ||
        slot(&U_password, SipURIT, "password") || slot(&U_port, SipURIT, "port") ||
        slot(&U_params, SipURIT, "params") || slot(&U_headers, SipURIT, "headers") || slot(&C_seq, CSeqT, "seq") ||
        slot(&C_method, CSeqT, "method"))
        return NULL;
    /* Request and Response share Message's slots: the Response's must be the same descriptors. */
    PyObject *check = PyObject_GetAttrString((PyObject *)ResponseT, "headers");
    if (check == NULL)
        return NULL;
    Py_DECREF(check);
    if (check != M_headers.descr) {
        PyErr_SetString(PyExc_TypeError, "Request and Response must share Message's slots");
        return NULL;
    }

    PyObject *spelling, *key;
    Py_ssize_t pos = 0;
    while (PyDict_Next(known, &pos, &spelling, &key)) {
        if (!PyUnicode_Check(spelling) || !PyUnicode_Check(key)) {
            PyErr_SetString(PyExc_TypeError, "known_spellings maps str to str");
            return NULL;
        }
        if (add_name(spelling, key) < 0)
            return NULL;
    }
    /* The keys parse() compares by identity: the table's interned ones. */
    const char *singles[F_COUNT] = {"call-id", "cseq", "from", "to", "max-forwards", "content-length"};
    for (int f = 0; f < F_COUNT; f++) {
        Name *e = find_name(singles[f], (Py_ssize_t)strlen(singles[f]), 1);
        if (e == NULL) {
            PyErr_Format(PyExc_ValueError, "%s is not among the known spellings", singles[f]);
            return NULL;
        }
        single_keys[f] = e->key;
    }
    Name *via = find_name("via", 3, 1);
    if (via == NULL) {
        PyErr_SetString(PyExc_ValueError, "via is not among the known spellings");
        return NULL;
    }
    S_via = via->key;
    S_from = single_keys[F_FROM];
    S_to = single_keys[F_TO];
    S_cseq = single_keys[F_CSEQ];
    if ((S_sip = intern("sip")) == NULL || (S_sip20 = intern("SIP/2.0")) == NULL || (S_empty = intern("")) == NULL ||
        (S_UDP = intern("UDP")) == NULL || (S_TCP = intern("TCP")) == NULL)
        return NULL;
    for (size_t i = 0; i < N_COMMON; i++) {
        if (common_names[i] == NULL && (common_names[i] = intern(COMMON_NAMES[i])) == NULL)
            return NULL;
    }
    ready = 1;
    Py_RETURN_NONE;
}

PyDoc_STRVAR(parse_doc,
             "parse(data) -> Request | Response | None\n\n"
             "The everyday message, parsed into the objects parser.py would build;\n"
             "None for anything else (the Python parser takes it from there).");

static PyMethodDef methods[] = {
    {"setup", setup, METH_VARARGS, setup_doc},
    {"parse", parse, METH_O, parse_doc},
    {"name_addr", name_addr, METH_O, name_addr_doc},
    {"sip_uri", sip_uri, METH_O, sip_uri_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    "sipproxy.message._speedups",
    "The everyday SIP message parsed in C; parser.py is the reference and takes everything else.",
    -1,
    methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    init_tables();
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "MAX_HEADERS", MAX_HEADERS) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
