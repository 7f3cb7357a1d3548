"""Retention policies as data: ``policies/*.yaml``, validated, with errors that name file, line and field.

A policy file holds one policy::

    id: sec-17a-4-b4                 # lower-case letters, digits and -; unique in the set
    version: 2                       # a whole number ≥ 1; it may only go up (the archive remembers)
    title: Broker-dealer communications
    citation: 17 CFR 240.17a-4(b)(4)  # the rule this implements
    source: https://www.ecfr.gov/...  # where to read it (optional)
    notes: ...                        # readings, disagreements between sources (optional)
    match:                            # which records: every condition must hold (a list of such
      channel: [phone, chat, email]   # mappings means: any one of them)
      jurisdiction: US                # US matches US and US-NY
      contract_term: {gt: P1Y}        # numbers and durations compare with gt, gte, lt, lte
      customer.age: {gte: 60}         # any customer participant
    retain:                           # kept until the latest of these
      - for: P3Y
        from: recording-end           # recording-end | contract-terminated | account-closed | dispute-resolved
    lock_mode: compliance             # compliance (default) | governance
    on_expiry: delete                 # delete | review (flagged; an admin confirms each deletion)
    dual_recording:                   # optional: completeness rules for 双录 sessions
      required_parts: [audio, video]
      max_gap: PT5S                   # recordings must be continuous: tolerated difference in coverage
      mandated_phrases:
        - id: risk-disclosure         # a missing phrase becomes the finding missing-risk-disclosure
          any_of: ["not a deposit", "不是存款"]

``default: true`` marks the policy for records no other policy matches (it takes no ``match``); a set
has exactly one. Match fields, triggers and operators are listed in :data:`MATCH_FIELDS`,
:data:`TRIGGERS` and :data:`OPERATORS`; anything else is an error, so a typo never silently widens or
narrows what a policy covers.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml

from archive.dates import Duration, parse_duration
from archive.errors import ConfigError


class PolicyError(ConfigError):
    """Raised when a policy file or set is invalid; the message names file, line and field."""

    code = "policy_invalid"


# Record metadata a policy may match on: name → how to read it from a record's metadata (a list of values;
# the condition holds when any value satisfies it).
def _customers(meta: dict) -> list[dict]:
    return [p for p in meta.get("participants", []) if p.get("role") == "customer"]


MATCH_FIELDS: dict[str, Any] = {
    "channel": lambda m: [m.get("channel")],
    "direction": lambda m: [m.get("direction")],
    "business_line": lambda m: [m.get("business_line")],
    "product": lambda m: [m.get("product")],
    "product_type": lambda m: [m.get("product_type")],
    "jurisdiction": lambda m: [m.get("jurisdiction")],
    "language": lambda m: [m.get("language")],
    "tags": lambda m: list(m.get("tags") or []),
    "source.system": lambda m: [m.get("source", {}).get("system")],
    "contract_term": lambda m: [m.get("contract_term")],
    "customer.age": lambda m: [p.get("age") for p in _customers(m)],
}
ATTRIBUTE_FIELD = re.compile(r"customer\.attributes\.[A-Za-z0-9_-]{1,64}")
OPERATORS = ("gt", "gte", "lt", "lte", "exists")

# What a retention period may be counted from, and the event kind that dates it (recording-end comes from
# the record itself). dispute-resolved binds records a dispute-opened event of the same dispute covers, and
# records the resolution's own selector covers (decide.py); a record neither covers is not bound.
TRIGGERS: dict[str, str | None] = {
    "recording-end": None,
    "contract-terminated": "contract-terminated",
    "account-closed": "account-closed",
    "dispute-resolved": "dispute-resolved",
}
PART_KINDS = ("audio", "video", "screen", "transcript")
_ID = re.compile(r"[a-z0-9][a-z0-9-]{0,79}")
_TOP = {"id", "version", "title", "citation", "source", "notes", "default", "match", "retain", "lock_mode",
        "on_expiry", "dual_recording"}
_REQUIRED = ("id", "version", "title", "citation", "retain")


@dataclass(frozen=True)
class Clause:
    period: Duration
    trigger: str


@dataclass(frozen=True)
class Phrase:
    id: str
    any_of: tuple[str, ...]


@dataclass(frozen=True)
class DualRecording:
    required_parts: tuple[str, ...] = ()
    max_gap: Duration | None = None
    mandated_phrases: tuple[Phrase, ...] = ()


@dataclass(frozen=True)
class Policy:
    id: str
    version: int
    title: str
    citation: str
    retain: tuple[Clause, ...]
    match: tuple[dict, ...] = ()  # any of these condition sets; empty for the default policy
    default: bool = False
    lock_mode: str = "compliance"
    on_expiry: str = "delete"
    dual_recording: DualRecording | None = None
    source: str | None = None
    notes: str | None = None
    file: str = ""
    text_sha256: str = ""  # of the file as read: the decision records exactly which text applied
    text: str = field(default="", repr=False)

    def matches(self, meta: dict, seen: dict | None = None) -> bool:
        """Whether the policy covers a record; ``seen`` keeps the record's field values for the next
        policy asked about the same record (they mostly ask about the same few fields)."""
        seen = {} if seen is None else seen
        return (not self.default) and any(all(_holds(meta, name, cond, seen) for name, cond in conds.items())
                                          for conds in self.match)

    def ref(self) -> dict:
        return {"id": self.id, "version": self.version, "sha256": self.text_sha256}


# --- matching ----------------------------------------------------------------------------------------


def _comparable(value: Any) -> Any:
    """Numbers compare as numbers; ISO durations by their nominal length."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str) and value.upper().startswith("P"):
        try:
            return parse_duration(value).nominal_seconds()
        except ValueError:
            return None
    return None


def _values(meta: dict, name: str) -> list:
    if name.startswith("customer.attributes."):
        key = name.split(".", 2)[2]
        return [(p.get("attributes") or {}).get(key) for p in _customers(meta)]
    return MATCH_FIELDS[name](meta)


def _equal(name: str, actual: Any, wanted: Any) -> bool:
    if isinstance(actual, str) and isinstance(wanted, str):
        if name == "jurisdiction":  # CN covers CN-31
            return actual.upper() == wanted.upper() or actual.upper().startswith(wanted.upper() + "-")
        return actual.casefold() == wanted.casefold()
    return actual == wanted


def _seen_values(meta: dict, name: str, seen: dict) -> list:
    values = seen.get(name)
    if values is None:
        values = seen[name] = [v for v in _values(meta, name) if v is not None]
    return values


def _holds(meta: dict, name: str, cond: Any, seen: dict) -> bool:
    values = _seen_values(meta, name, seen)
    if isinstance(cond, dict):
        if "exists" in cond:
            return bool(values) == bool(cond["exists"])
        for v in values:
            a = _comparable(v)
            if a is None:
                continue
            if all(_compare(a, op, _comparable(bound)) for op, bound in cond.items()):
                return True
        return False
    wanted = cond if isinstance(cond, list) else [cond]
    return any(_equal(name, v, w) for v in values for w in wanted)


def _compare(a: float, op: str, b: float) -> bool:
    return {"gt": a > b, "gte": a >= b, "lt": a < b, "lte": a <= b}[op]


# --- loading -----------------------------------------------------------------------------------------


class _Doc:
    """A YAML document as plain values, remembering the line of every field for error messages."""

    def __init__(self, file: str, text: str) -> None:
        self.file = file
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text, Loader=yaml.SafeLoader)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"{file}:{mark.line + 1}" if mark else file
            raise PolicyError(f"{where}: not valid YAML: {getattr(e, 'problem', None) or e}", file=file) from None
        if node is None:
            raise PolicyError(f"{file}:1: empty policy file", file=file)
        self.value = self._plain(node, "")

    def _plain(self, node, path: str) -> Any:
        self.lines[path] = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            out: dict = {}
            for key_node, value_node in node.value:
                key = key_node.value
                sub = f"{path}.{key}" if path else str(key)
                if key in out:
                    raise PolicyError(f"{self.file}:{key_node.start_mark.line + 1}: {sub}: duplicate key",
                                      file=self.file)
                self.lines[sub] = key_node.start_mark.line + 1
                out[key] = self._plain(value_node, sub)
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self._plain(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        return _scalar(node)

    def error(self, path: str, problem: str) -> PolicyError:
        line = self.lines.get(path)
        while line is None and path:
            path_up = re.sub(r"(\.[^.\[]+|\[\d+\])$", "", path)
            if path_up == path:
                break
            path = path_up
            line = self.lines.get(path)
        return PolicyError(f"{self.file}:{line or 1}: {path or '(policy)'}: {problem}", file=self.file, line=line)


def _scalar(node) -> Any:
    # Resolve the scalar's tag the way safe_load would (int, bool, null, str …), but keep dates as text:
    # a policy never needs YAML's timestamp type, and durations must stay strings.
    loader = yaml.SafeLoader("")
    if node.tag == "tag:yaml.org,2002:timestamp":
        return node.value
    return loader.construct_object(node, deep=True)


def _need_str(doc: _Doc, value: Any, path: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise doc.error(path, f"must be a non-empty string, not {value!r}")
    return value.strip()


def _need_duration(doc: _Doc, value: Any, path: str) -> Duration:
    if not isinstance(value, str):
        raise doc.error(path, f"must be an ISO-8601 duration such as P5Y, not {value!r}")
    try:
        return parse_duration(value)
    except ValueError as e:
        raise doc.error(path, str(e)) from None


def _conditions(doc: _Doc, conds: Any, path: str) -> dict:
    if not isinstance(conds, dict) or not conds:
        raise doc.error(path, "must be a mapping of field: condition")
    for name, cond in conds.items():
        sub = f"{path}.{name}"
        if name not in MATCH_FIELDS and not ATTRIBUTE_FIELD.fullmatch(str(name)):
            raise doc.error(sub, f"unknown match field; fields are {', '.join(MATCH_FIELDS)}, "
                                 "customer.attributes.NAME")
        if isinstance(cond, dict):
            unknown = sorted(set(cond) - set(OPERATORS))
            if unknown or not cond:
                raise doc.error(sub, f"unknown operator {unknown[0] if unknown else '(none)'}; operators are "
                                     f"{', '.join(OPERATORS)}")
            for op, bound in cond.items():
                if op == "exists":
                    if not isinstance(bound, bool):
                        raise doc.error(f"{sub}.{op}", "must be true or false")
                elif _comparable(bound) is None:
                    raise doc.error(f"{sub}.{op}", f"must be a number or an ISO-8601 duration, not {bound!r}")
        elif isinstance(cond, list):
            if not cond or not all(isinstance(c, str | int | float) and not isinstance(c, bool) for c in cond):
                raise doc.error(sub, "must list strings or numbers (quote values YAML reads as true/false/null, "
                                     "such as the country code \"NO\")")
        elif not isinstance(cond, str | int | float) or isinstance(cond, bool):
            raise doc.error(sub, f"must be a value, a list of values or an operator mapping, not {cond!r} (quote "
                                 "values YAML reads as true/false/null)")
    return conds


def parse_policy(text: str, file: str) -> Policy:
    """One policy from the text of its file. Raises PolicyError naming file, line and field."""
    doc = _Doc(file, text)
    d = doc.value
    if not isinstance(d, dict):
        raise doc.error("", "a policy file holds one mapping (id, version, title, citation, match, retain …)")
    for key in d:
        if key not in _TOP:
            raise doc.error(str(key), f"unknown field; policy fields are {', '.join(sorted(_TOP))}")
    for key in _REQUIRED:
        if key not in d:
            raise doc.error("", f"{key} is required")
    pid = _need_str(doc, d["id"], "id")
    if not _ID.fullmatch(pid):
        raise doc.error("id", f"{pid!r} must be lower-case letters, digits and - (at most 80)")
    version = d["version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise doc.error("version", f"must be a whole number ≥ 1, not {version!r}")
    default = d.get("default", False)
    if not isinstance(default, bool):
        raise doc.error("default", "must be true or false")
    if default and "match" in d:
        raise doc.error("match", "the default policy applies to records no other policy matches; it takes no match")
    if not default and "match" not in d:
        raise doc.error("", "match is required (or default: true for the fallback policy)")
    match: tuple[dict, ...] = ()
    if "match" in d:
        raw = d["match"]
        groups = raw if isinstance(raw, list) else [raw]
        if not groups:
            raise doc.error("match", "must not be empty")
        match = tuple(_conditions(doc, g, f"match[{i}]" if isinstance(raw, list) else "match")
                      for i, g in enumerate(groups))
    retain_raw = d["retain"]
    if not isinstance(retain_raw, list) or not retain_raw:
        raise doc.error("retain", "must list at least one {for: DURATION, from: TRIGGER}")
    clauses = []
    for i, c in enumerate(retain_raw):
        path = f"retain[{i}]"
        if not isinstance(c, dict):
            raise doc.error(path, "must be a mapping {for: DURATION, from: TRIGGER}")
        for key in c:
            if key not in ("for", "from"):
                raise doc.error(f"{path}.{key}", "unknown field; a clause has for and from")
        if "for" not in c:
            raise doc.error(path, "for (an ISO-8601 duration) is required")
        trigger = c.get("from", "recording-end")
        if trigger not in TRIGGERS:
            raise doc.error(f"{path}.from", f"unknown trigger {trigger!r}; triggers are {', '.join(TRIGGERS)}")
        clauses.append(Clause(_need_duration(doc, c["for"], f"{path}.for"), trigger))
    lock_mode = d.get("lock_mode", "compliance")
    if lock_mode not in ("compliance", "governance"):
        raise doc.error("lock_mode", f"must be compliance or governance, not {lock_mode!r}")
    on_expiry = d.get("on_expiry", "delete")
    if on_expiry not in ("delete", "review"):
        raise doc.error("on_expiry", f"must be delete or review, not {on_expiry!r}")
    dual = None
    if "dual_recording" in d:
        dual = _dual(doc, d["dual_recording"])
    for key in ("source", "notes"):
        if key in d:
            _need_str(doc, d[key], key)
    return Policy(id=pid, version=version, title=_need_str(doc, d["title"], "title"),
                  citation=_need_str(doc, d["citation"], "citation"), retain=tuple(clauses), match=match,
                  default=default, lock_mode=lock_mode, on_expiry=on_expiry, dual_recording=dual,
                  source=d.get("source"), notes=d.get("notes"), file=file,
                  text_sha256=hashlib.sha256(text.encode()).hexdigest(), text=text)


def _dual(doc: _Doc, raw: Any) -> DualRecording:
    if not isinstance(raw, dict):
        raise doc.error("dual_recording", "must be a mapping (required_parts, max_gap, mandated_phrases)")
    for key in raw:
        if key not in ("required_parts", "max_gap", "mandated_phrases"):
            raise doc.error(f"dual_recording.{key}", "unknown field; use required_parts, max_gap, mandated_phrases")
    parts = raw.get("required_parts", [])
    if not isinstance(parts, list) or not all(p in PART_KINDS for p in parts):
        raise doc.error("dual_recording.required_parts", f"must list part kinds from {', '.join(PART_KINDS)}")
    gap = _need_duration(doc, raw["max_gap"], "dual_recording.max_gap") if "max_gap" in raw else None
    phrases = []
    seen = set()
    for i, p in enumerate(raw.get("mandated_phrases", []) or []):
        path = f"dual_recording.mandated_phrases[{i}]"
        if not isinstance(p, dict) or set(p) - {"id", "any_of"} or "id" not in p or "any_of" not in p:
            raise doc.error(path, "must be {id: NAME, any_of: [phrase, …]}")
        pid = _need_str(doc, p["id"], f"{path}.id")
        if not _ID.fullmatch(pid) or pid in seen:
            raise doc.error(f"{path}.id", f"{pid!r} must be a unique lower-case id")
        seen.add(pid)
        alts = p["any_of"]
        if not isinstance(alts, list) or not alts or not all(isinstance(a, str) and a.strip() for a in alts):
            raise doc.error(f"{path}.any_of", "must list one or more phrases")
        phrases.append(Phrase(pid, tuple(alts)))
    return DualRecording(tuple(parts), gap, tuple(phrases))


@dataclass(frozen=True)
class PolicySet:
    """Every policy of one directory, validated together."""

    policies: tuple[Policy, ...]
    directory: str = ""

    @property
    def default(self) -> Policy:
        return next(p for p in self.policies if p.default)

    def get(self, policy_id: str) -> Policy | None:
        return next((p for p in self.policies if p.id == policy_id), None)

    def matching(self, meta: dict) -> list[Policy]:
        """The policies covering a record: every match, or the default when none matches."""
        seen: dict = {}
        # Which policies match depends only on the values of the fields the policies name, and records
        # come in few such combinations (channel, business line, jurisdiction…): each is worked out once.
        try:
            key = tuple(tuple(_seen_values(meta, name, seen)) for name in self._match_fields)
            hash(key)
        except TypeError:  # an unhashable value (a customer attribute holding an object): no memo
            key = None
        found = self._matches.get(key) if key is not None else None
        if found is None:
            found = tuple(p for p in self.policies if p.matches(meta, seen)) or (self.default,)
            if key is not None and len(self._matches) < 10_000:
                self._matches[key] = found
        return list(found)

    @cached_property
    def _match_fields(self) -> tuple[str, ...]:
        return tuple(sorted({name for p in self.policies for conds in p.match for name in conds}))

    @cached_property
    def _matches(self) -> dict[tuple, tuple[Policy, ...]]:
        return {}

    def fingerprint(self) -> str:
        """SHA-256 over every policy's id, version and text digest: which set a decision was made under."""
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:  # computed once: every ingested record's decision names it
        h = hashlib.sha256()
        for p in sorted(self.policies, key=lambda p: p.id):
            h.update(f"{p.id}\n{p.version}\n{p.text_sha256}\n".encode())
        return h.hexdigest()


def load_policies(directory: Path, *, known_versions: dict[str, dict[int, str]] | None = None) -> PolicySet:
    """Load and validate every ``*.yaml``/``*.yml`` in ``directory``. ``known_versions`` (policy id →
    version → text SHA-256, as the archive recorded them) catches versions going backwards and a text
    changed without a new version. Raises PolicyError."""
    directory = Path(directory)
    if not directory.is_dir():
        raise PolicyError(f"no policy directory {directory} (ARCHIVE_POLICIES)", file=str(directory))
    files = sorted(p for p in directory.iterdir() if p.suffix in (".yaml", ".yml") and not p.name.startswith("."))
    if not files:
        raise PolicyError(f"{directory}: no policy files (*.yaml); ship at least a default policy",
                          file=str(directory))
    policies: list[Policy] = []
    seen: dict[str, Policy] = {}
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError(f"{path}:1: not UTF-8 ({e.reason} at byte {e.start})", file=str(path)) from None
        policy = parse_policy(text, str(path))
        if policy.id in seen:
            raise PolicyError(f"{path}:1: id: duplicate policy id {policy.id!r}, also in {seen[policy.id].file}",
                              file=str(path))
        seen[policy.id] = policy
        for version, digest in sorted((known_versions or {}).get(policy.id, {}).items()):
            if version > policy.version:
                raise PolicyError(f"{path}:{_line_of(text, 'version')}: version: {policy.id} version "
                                  f"{policy.version} is older than version {version}, which this archive has "
                                  "already applied; versions only go up", file=str(path))
            if version == policy.version and digest != policy.text_sha256:
                raise PolicyError(f"{path}:{_line_of(text, 'version')}: version: {policy.id} version {version} "
                                  "was applied with different text; give the changed policy a new version",
                                  file=str(path))
        policies.append(policy)
    defaults = [p for p in policies if p.default]
    if len(defaults) != 1:
        where = ", ".join(p.file for p in defaults) or str(directory)
        raise PolicyError(f"{where}: a policy set needs exactly one default policy (default: true), found "
                          f"{len(defaults)}", file=str(directory))
    return PolicySet(tuple(policies), str(directory))


def _line_of(text: str, key: str) -> int:
    for i, line in enumerate(text.splitlines(), 1):
        if line.startswith(f"{key}:"):
            return i
    return 1
