"""The auditors' query language, parsed once into a tree that each index backend translates.

::

    agent:1042 channel:phone after:2024-01-01 before:2024-04-01 refund
    customer.phone:+8613800138000 OR customer.account:6222020200001234
    policy:cn-insurance-dual-recording finding:missing-risk-disclosure NOT hold:CASE-7
    "not a deposit" (channel:chat OR channel:email) sort:oldest

* ``field:value`` — an exact match (case-insensitive) on one of :data:`FIELDS`; ``value*`` matches a prefix;
  quote values with spaces: ``product:"Harbour Life 10Y"``.
* ``after:DATE`` / ``before:DATE`` — the interaction started on or after / before (ISO-8601 date or
  date-time; a date is midnight UTC).
* words and ``"quoted phrases"`` — found in transcripts, messages, subjects, names and identifiers.
* ``AND`` (or nothing), ``OR``, ``NOT`` (or a leading ``-``, before any term: word, filter, phrase or group) and
  parentheses; ``AND`` binds tighter than ``OR``.
* ``sort:newest`` (default) or ``sort:oldest``.

A syntax error names the column (1-based) where it was found.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from archive.dates import parse_datetime
from archive.errors import InputError

# field name in the query → field stored in the index (see archive/index/sqlite.py: record_fields)
FIELDS = {
    "id": "id", "agent": "agent", "agent.id": "agent.id", "customer": "customer", "customer.id": "customer.id",
    "customer.phone": "customer.phone",
    "customer.account": "customer.account", "customer.email": "customer.email", "phone": "phone",
    "channel": "channel", "direction": "direction", "source": "source", "interaction": "interaction",
    "business_line": "business_line", "product": "product", "product_type": "product_type",
    "jurisdiction": "jurisdiction", "language": "language", "tag": "tag", "contract": "contract",
    "policy": "policy", "hold": "hold", "finding": "finding", "part": "part",
}
SORTS = ("newest", "oldest")


class QuerySyntaxError(InputError):
    """Raised for a query that does not parse; ``column`` is 1-based."""

    code = "query_invalid"
    http_status = 400

    def __init__(self, message: str, column: int, query: str) -> None:
        pointer = f"\n  {query}\n  {' ' * (column - 1)}^"
        super().__init__(f"query error at column {column}: {message}{pointer}", column=column)
        self.column = column


# --- the tree --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    field: str
    value: str
    prefix: bool = False


@dataclass(frozen=True)
class Text:
    """A word or a phrase (case-folded), found anywhere in the record's text."""

    text: str
    phrase: bool = False


@dataclass(frozen=True)
class Range:
    """started_at within [after, before) — either side may be open. ISO UTC strings."""

    after: str | None = None
    before: str | None = None


@dataclass(frozen=True)
class Not:
    node: object


@dataclass(frozen=True)
class And:
    nodes: tuple


@dataclass(frozen=True)
class Or:
    nodes: tuple


@dataclass(frozen=True)
class All:
    """The empty query: every record."""


@dataclass(frozen=True)
class Query:
    tree: object
    sort: str = "newest"
    text: str = ""


# --- tokens ----------------------------------------------------------------------------------------------

# A ``-`` that starts a token and is followed by a term (a word, a field filter, a phrase or a group) is a
# token of its own: it negates that term, as NOT does. A ``-`` inside a word (``e-mail``) or alone is text.
_TOKEN = re.compile(r'\s*(?:(?P<lp>\()|(?P<rp>\))|(?P<minus>-(?=[^\s)]))|(?P<phrase>"(?:[^"\\]|\\.)*"?)'
                    r'|(?P<word>[^\s()"]+(?:"(?:[^"\\]|\\.)*"?)?))')


@dataclass(frozen=True)
class _Tok:
    kind: str  # lp rp minus phrase word end
    text: str
    column: int


def _tokens(query: str) -> list[_Tok]:
    out, pos = [], 0
    while pos < len(query):
        m = _TOKEN.match(query, pos)
        if not m or m.end() == pos:
            break
        kind = m.lastgroup
        start = m.start(kind)
        text = m.group(kind)
        if kind == "phrase" and (len(text) < 2 or not text.endswith('"') or text.endswith('\\"')):
            raise QuerySyntaxError("unterminated quote", start + 1, query)
        out.append(_Tok(kind, text, start + 1))
        pos = m.end()
    out.append(_Tok("end", "", len(query) + 1))
    return out


def _unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text[1:-1])


# --- parser ----------------------------------------------------------------------------------------------


def parse(query: str) -> Query:
    """Parse ``query`` into a :class:`Query`. Raises QuerySyntaxError naming the column."""
    parser = _Parser(query)
    tree = parser.parse()
    return Query(tree, parser.sort, query)


class _Parser:
    def __init__(self, query: str) -> None:
        self.query = query
        self.toks = _tokens(query)
        self.i = 0
        self.sort = "newest"

    def peek(self) -> _Tok:
        return self.toks[self.i]

    def take(self) -> _Tok:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def error(self, message: str, tok: _Tok) -> QuerySyntaxError:
        return QuerySyntaxError(message, tok.column, self.query)

    def parse(self):
        if self.peek().kind == "end":
            return All()
        node = self.or_()
        tok = self.peek()
        if tok.kind != "end":
            raise self.error("unexpected ')'" if tok.kind == "rp" else f"unexpected {tok.text!r}", tok)
        return node if node is not None else All()

    def or_(self):
        nodes = [self.and_()]
        while self.peek().kind == "word" and self.peek().text == "OR":
            tok = self.take()
            if self.peek().kind in ("end", "rp"):
                raise self.error("OR needs something after it", tok)
            nodes.append(self.and_())
        nodes = [n for n in nodes if n is not None]
        return nodes[0] if len(nodes) == 1 else Or(tuple(nodes)) if nodes else None

    def and_(self):
        nodes = []
        while True:
            tok = self.peek()
            if tok.kind in ("end", "rp") or (tok.kind == "word" and tok.text == "OR"):
                break
            if tok.kind == "word" and tok.text == "AND":
                self.take()
                if self.peek().kind in ("end", "rp") or (self.peek().kind == "word" and self.peek().text in ("AND", "OR")):
                    raise self.error("AND needs something after it", tok)
                continue
            node = self.unary()
            if node is not None:
                nodes.append(node)
        if not nodes:
            tok = self.peek()
            if tok.kind == "rp":
                raise self.error("empty parentheses" if self.toks[self.i - 1].kind == "lp" else "unexpected ')'", tok)
            return None
        ranges = [n for n in nodes if isinstance(n, Range)]
        if len(ranges) > 1:  # after:… before:… side by side: one range
            merged = Range(max((r.after for r in ranges if r.after), default=None),
                           min((r.before for r in ranges if r.before), default=None))
            nodes = [merged] + [n for n in nodes if not isinstance(n, Range)]
        return nodes[0] if len(nodes) == 1 else And(tuple(nodes))

    def unary(self):
        tok = self.peek()
        if tok.kind == "minus" or (tok.kind == "word" and tok.text == "NOT"):
            self.take()
            if self.peek().kind in ("end", "rp") or (self.peek().kind == "word" and self.peek().text == "OR"):
                raise self.error(f"{tok.text} needs something after it", tok)
            inner = self.unary()
            if inner is None:  # sort:… is not a condition
                raise self.error(f"{tok.text} cannot apply to sort:", self.toks[self.i - 1])
            return Not(inner)
        return self.primary()

    def primary(self):
        tok = self.take()
        if tok.kind == "lp":
            node = self.or_()
            close = self.take()
            if close.kind != "rp":
                raise self.error("missing ')' for the '(' here", tok)
            if node is None:
                raise self.error("empty parentheses", tok)
            return node
        if tok.kind == "rp":
            raise self.error("unexpected ')'", tok)
        return self.term(tok)

    def term(self, tok: _Tok):
        if tok.kind == "phrase":
            text = " ".join(_unquote(tok.text).split()).casefold()
            if not text:
                raise self.error("empty phrase", tok)
            return Text(text, phrase=True)
        word = tok.text
        m = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_.]*):(.*)", word, re.S)
        if not m:
            return Text(word.casefold())
        name, value = m.group(1), m.group(2)
        value_col = tok.column + len(name) + 1
        if value.startswith('"'):
            if len(value) < 2 or not value.endswith('"'):
                raise QuerySyntaxError("unterminated quote", value_col, self.query)
            value = " ".join(_unquote(value).split())
        if not value:
            raise QuerySyntaxError(f"{name}: needs a value", value_col, self.query)
        if name == "sort":
            if value not in SORTS:
                raise QuerySyntaxError(f"sort is {' or '.join(SORTS)}, not {value!r}", value_col, self.query)
            self.sort = value
            return None
        if name in ("after", "before"):
            try:
                when = parse_datetime(value).isoformat().replace("+00:00", "Z")
            except ValueError:
                raise QuerySyntaxError(f"{name}: {value!r} is not an ISO-8601 date such as 2024-01-31",
                                       value_col, self.query) from None
            return Range(after=when) if name == "after" else Range(before=when)
        if name not in FIELDS:
            raise self.error(f"unknown field {name!r}; fields are {', '.join(FIELDS)}, after, before, sort", tok)
        prefix = value.endswith("*") and len(value) > 1
        return Field(FIELDS[name], (value[:-1] if prefix else value).casefold(), prefix)
