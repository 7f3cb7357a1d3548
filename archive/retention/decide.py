"""The retention decision for one record, and the dual-recording completeness findings.

``decide`` is a pure function of the record's metadata, the trigger events that cover it, the policy set
and the time: the same inputs always give the same decision, so it can be recomputed whenever an event
arrives or the index is rebuilt. Every matching policy contributes; the latest date wins; the decision
keeps every match with its version and text digest.

A clause counted from an event that has not arrived yet (a contract still running) is *pending*: the
record is locked until a provisional date (the period counted from the end of the recording, which no
later event can precede) and is never disposed of while anything is pending.
"""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta

from archive.dates import Duration, parse_datetime
from archive.retention.policy import TRIGGERS, Policy, PolicySet


def record_end(meta: dict) -> datetime:
    """When the interaction ended: ended_at, else started_at + duration, else started_at."""
    if meta.get("ended_at"):
        end = parse_datetime(meta["ended_at"])
    else:
        end = parse_datetime(meta["started_at"]) + timedelta(seconds=float(meta.get("duration_s") or 0))
    # whole seconds, rounded up: a period counted from a fraction of a second never ends early
    return end.replace(microsecond=0) + (timedelta(seconds=1) if end.microsecond else timedelta(0))


# --- which events cover a record ----------------------------------------------------------------------


def covers(event: dict, record_id: str, meta: dict) -> bool:
    """True when ``event``'s selector names this record (by id, account, contract or customer)."""
    sel = event.get("selector", {})
    if record_id in sel.get("records", []):
        return True
    if sel.get("contract") and meta.get("contract_id") == sel["contract"]:
        return True
    customers = [p for p in meta.get("participants", []) if p.get("role") == "customer"]
    if sel.get("account") and any(p.get("account") == sel["account"] for p in customers):
        return True
    if sel.get("customer") and any(p.get("id") == sel["customer"] for p in customers):
        return True
    return False


def _trigger_date(trigger: str, record_id: str, meta: dict, events: list[dict]) -> tuple[datetime | None, bool, bool]:
    """(date, pending, applies) of one trigger for one record."""
    if trigger == "recording-end":
        return record_end(meta), False, True
    if trigger == "dispute-resolved":
        disputes: dict[str, datetime | None] = {}
        for e in events:
            if e["kind"] == "dispute-opened" and covers(e, record_id, meta):
                disputes.setdefault(e["dispute"], None)
        for e in events:
            if e["kind"] == "dispute-resolved" and (e["dispute"] in disputes or covers(e, record_id, meta)):
                when = parse_datetime(e["date"])
                disputes[e["dispute"]] = max(when, disputes.get(e["dispute"]) or when)
        if not disputes:
            return None, False, False  # no dispute: the clause does not bind this record
        if any(d is None for d in disputes.values()):
            return None, True, True
        return max(d for d in disputes.values() if d is not None), False, True
    dates = [parse_datetime(e["date"]) for e in events if e["kind"] == TRIGGERS[trigger] and covers(e, record_id, meta)]
    if not dates:
        return None, True, True
    return max(dates), False, True


def decide(record_id: str, meta: dict, events: list[dict], policies: PolicySet, now: datetime) -> dict:
    """The retention decision (a JSON-able dict) for a record."""
    matched = policies.matching(meta)
    end = record_end(meta)
    entries, pending, dates = [], [], []
    for policy in matched:
        clauses, policy_dates = [], []
        for clause in policy.retain:
            when, is_pending, applies = _trigger_date(clause.trigger, record_id, meta, events)
            if not applies:
                clauses.append({"for": clause.period.text, "from": clause.trigger, "applies": False})
                continue
            base = when if when is not None else end  # provisional: no later event precedes the recording
            until = clause.period.after(base)
            policy_dates.append(until)
            clauses.append({"for": clause.period.text, "from": clause.trigger,
                            "from_date": when.isoformat() if when else None, "until": until.isoformat(),
                            **({"pending": True} if is_pending else {})})
            if is_pending:
                pending.append(f"{clause.trigger} ({policy.id})")
        until = max(policy_dates) if policy_dates else end
        dates.append(until)
        entries.append({**policy.ref(), "title": policy.title, "citation": policy.citation,
                        "default": policy.default, "clauses": clauses, "until": until.isoformat(),
                        "on_expiry": policy.on_expiry, "lock_mode": policy.lock_mode})
    extensions = []
    for e in events:
        if e["kind"] == "retention-extended" and covers(e, record_id, meta):
            extensions.append({"event": e["id"], "until": e["until"]})
            dates.append(parse_datetime(e["until"]))
    retain_until = max(dates)
    winner = max(entries, key=lambda x: x["until"])
    return {
        "decided_at": now.isoformat(timespec="seconds"),
        "policy_set": policies.fingerprint(),
        "retain_until": retain_until.isoformat(),
        "final": not pending,
        "pending": sorted(set(pending)),
        "governing": winner["id"] if retain_until == parse_datetime(winner["until"]) else "retention-extended",
        "lock_mode": "compliance" if any(p.lock_mode == "compliance" for p in matched) else "governance",
        "on_expiry": "review" if any(p.on_expiry == "review" for p in matched) else "delete",
        "policies": entries,
        "extensions": extensions,
        "events": sorted({e["id"] for e in events if covers(e, record_id, meta)}),
    }


def explain(decision: dict) -> str:
    """The decision in words: why the record is kept until when."""
    lines = [f"kept until {decision['retain_until']}"
             + ("" if decision["final"] else f" at least (provisional: waiting for {', '.join(decision['pending'])})")]
    lines.append(f"governed by {decision['governing']}; lock {decision['lock_mode']}; at expiry: "
                 f"{decision['on_expiry']}")
    for p in decision["policies"]:
        lines.append(f"  {p['id']} v{p['version']}{' (default)' if p['default'] else ''}: {p['title']} — "
                     f"{p['citation']}")
        for c in p["clauses"]:
            if not c.get("applies", True):
                lines.append(f"      {c['for']} from {c['from']}: does not apply (no such event for this record)")
            elif c.get("pending"):
                lines.append(f"      {c['for']} from {c['from']}: not yet happened; provisionally until {c['until']}")
            else:
                lines.append(f"      {c['for']} from {c['from']} {c['from_date']} → {c['until']}")
    for x in decision.get("extensions", []):
        lines.append(f"  extended to {x['until']} by event {x['event']}")
    return "\n".join(lines)


# --- dual recording -------------------------------------------------------------------------------------


def _normal(text: str) -> str:
    """Case-, width-, space- and punctuation-insensitive form, so 不是存款 matches 不 是 存款。"""
    text = unicodedata.normalize("NFKC", text).casefold()
    return "".join(c for c in text if not unicodedata.category(c).startswith(("P", "Z", "C", "S")))


def _has(parts: list[dict], kind: str) -> bool:
    for p in parts:
        media = p.get("media") or {}
        if kind == "video" and media.get("kind") == "video":
            return True
        if kind == "audio" and (media.get("kind") == "audio" or media.get("audio_codec")):
            return True
        if kind in ("transcript", "screen") and p["name"].split("-")[0] == kind:
            return True
    return False


def findings(meta: dict, parts: list[dict], policies: list[Policy], transcript: str | None) -> tuple[list, dict]:
    """Dual-recording completeness: (findings, checks). A finding is {code, policy, detail}; checks say
    what was examined, including phrases left unchecked because no transcript was supplied."""
    found: list[dict] = []
    checks: dict = {}
    for policy in policies:
        rule = policy.dual_recording
        if rule is None:
            continue
        check = checks.setdefault(policy.id, {})
        for kind in rule.required_parts:
            if not _has(parts, kind) and not (kind == "transcript" and meta.get("messages")):
                found.append({"code": f"missing-part-{kind}", "policy": policy.id,
                              "detail": f"no {kind} part; {policy.id} requires {', '.join(rule.required_parts)}"})
        check["required_parts"] = list(rule.required_parts)
        if rule.max_gap is not None:
            tolerance = rule.max_gap.nominal_seconds()
            media = [(p["name"], float(p["media"]["duration_s"])) for p in parts
                     if (p.get("media") or {}).get("duration_s") is not None]
            span = None
            if meta.get("ended_at"):
                span = (parse_datetime(meta["ended_at"]) - parse_datetime(meta["started_at"])).total_seconds()
            for name, seconds in media:
                if span is not None and abs(span - seconds) > tolerance:
                    found.append({"code": "recording-gap", "policy": policy.id,
                                  "detail": f"{name} covers {seconds:.1f} s of a {span:.1f} s session "
                                            f"(tolerance {rule.max_gap.text}): not continuous, or edited"})
            if len(media) > 1:
                lo, hi = min(media, key=lambda m: m[1]), max(media, key=lambda m: m[1])
                if hi[1] - lo[1] > tolerance:
                    found.append({"code": "duration-mismatch", "policy": policy.id,
                                  "detail": f"{hi[0]} is {hi[1]:.1f} s, {lo[0]} {lo[1]:.1f} s "
                                            f"(tolerance {rule.max_gap.text})"})
            check["continuity"] = {"span_s": span, "parts": dict(media), "tolerance": rule.max_gap.text}
        if rule.mandated_phrases:
            if not transcript:
                check["phrases"] = "unchecked: no transcript supplied"
            else:
                text = _normal(transcript)
                present = {}
                for phrase in rule.mandated_phrases:
                    hit = next((a for a in phrase.any_of if _normal(a) and _normal(a) in text), None)
                    present[phrase.id] = hit is not None
                    if hit is None:
                        found.append({"code": f"missing-{phrase.id}", "policy": policy.id,
                                      "detail": f"none of the mandated phrases for {phrase.id} is in the "
                                                f"transcript: {' | '.join(phrase.any_of)}"})
                check["phrases"] = present
    unique = {(f["code"], f["policy"]): f for f in found}
    return list(unique.values()), checks


IMPLAUSIBLE_CAPTURE = "implausible-capture-time"


def capture_findings(meta: dict, now: datetime, *, earliest: datetime, ahead: Duration) -> list[dict]:
    """A capture time no recorder could have written, read from the record as given: before ``earliest``
    (a recorder clock reset to 1970, a wrong century) or more than ``ahead`` after ``now`` (ingest). Its
    retention runs from that time, so a record with this finding is locked at least as if it began at
    ingest (the pipeline) and never disposed of without review (Retention.plan)."""
    started = parse_datetime(meta["started_at"])
    if started < earliest:
        detail = (f"started_at {meta['started_at']} is before {earliest.isoformat()} (ARCHIVE_CAPTURE_EARLIEST): "
                  "a recorder clock reset or wrong? Retention counted from it would end early, so the record "
                  "is not disposed of without review")
    elif started > ahead.after(now):
        detail = (f"started_at {meta['started_at']} is more than {ahead.text} after its ingest at "
                  f"{now.isoformat(timespec='seconds')} (ARCHIVE_CAPTURE_AHEAD): a recorder clock ahead?")
    else:
        return []
    return [{"code": IMPLAUSIBLE_CAPTURE, "detail": detail, "started_at": meta["started_at"]}]
