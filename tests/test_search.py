"""Search: the query language (parse tree, errors with columns), PCI masking before indexing, the SQLite
backend over a corpus ingested through the real pipeline (filters, ranges across UTC offsets, phrases,
boolean logic, sort, facets, cursors, timeline) and a rebuild from the store giving identical results."""

from __future__ import annotations

import base64
import json
import uuid
from pathlib import Path

import pytest

from archive.index.sqlite import SqliteIndex
from archive.ingest.discover import Limits
from archive.ingest.pipeline import Ingestor
from archive.search.document import mask_pci
from archive.search.query import And, Field, Not, Or, QuerySyntaxError, Range, Text, parse
from archive.services import init_archive
from archive.settings import Settings
from tests.engine_shim import ENGINE_PROFILES
from tests.test_retention import wav

# --- the language ----------------------------------------------------------------------------------------


def test_queries_parse_into_one_tree():
    q = parse('agent:1042 channel:phone after:2024-01-01 before:2024-04-01 "not a deposit" sort:oldest')
    assert q.sort == "oldest"
    assert q.tree == And((Range("2024-01-01T00:00:00Z", "2024-04-01T00:00:00Z"), Field("agent", "1042"),
                          Field("channel", "phone"), Text("not a deposit", phrase=True)))
    assert parse("a OR b c").tree == Or((Text("a"), And((Text("b"), Text("c")))))
    assert parse("(a OR b) c").tree == And((Or((Text("a"), Text("b"))), Text("c")))
    assert parse("NOT hold:CASE-7 -channel:chat").tree == And((Not(Field("hold", "case-7")),
                                                              Not(Field("channel", "chat"))))
    # a leading - negates any term: a phrase, a group, a field filter (docs/search.md), like NOT
    assert parse('deposit -"not a deposit"').tree == And((Text("deposit"), Not(Text("not a deposit", phrase=True))))
    assert parse("-(a OR b) -agent:1").tree == parse("NOT (a OR b) NOT agent:1").tree
    assert parse("e-mail - x").tree == And((Text("e-mail"), Text("-"), Text("x")))  # inside a word, or alone: text
    assert parse('product:"Harbour  Life"').tree == Field("product", "harbour life")
    assert parse("customer.phone:+8613800138000").tree == Field("customer.phone", "+8613800138000")
    assert parse("agent:10*").tree == Field("agent", "10", prefix=True)


@pytest.mark.parametrize("query, column, words", [
    ("(refund", 1, "missing ')'"),
    ("refund)", 7, "unexpected ')'"),
    ("agnet:1042", 1, "unknown field 'agnet'"),
    ('channel:phone "not a', 15, "unterminated quote"),
    ("after:2024-13-01", 7, "not an ISO-8601 date"),
    ("refund OR", 8, "OR needs something"),
    ("refund AND AND x", 8, "AND needs something"),
    ("()", 2, "empty parentheses"),
    ("sort:random", 6, "sort is newest or oldest"),
    ("channel:", 9, "needs a value"),
    ("refund -OR x", 8, "- needs something"),
    ("-sort:oldest", 2, "cannot apply to sort:"),
])
def test_syntax_errors_point_at_the_column(query, column, words):
    with pytest.raises(QuerySyntaxError) as e:
        parse(query)
    assert e.value.column == column and words in str(e.value), str(e.value)
    assert str(e.value).splitlines()[-1] == " " * (column + 1) + "^"


def test_card_numbers_and_verification_codes_are_masked():
    assert mask_pci("card 4111 1111 1111 1111 thanks") == "card **** **** **** 1111 thanks"
    assert mask_pci("5500-0000-0000-0004") == "****-****-****-0004"
    assert mask_pci("order 4111111111111112 ref") == "order 4111111111111112 ref"  # fails Luhn: not a card
    assert mask_pci("call +8613800138000") == "call +8613800138000"
    assert mask_pci("the CVV is 123, expiry 12/27") == "the CVV is ***, expiry 12/27"
    assert mask_pci("安全码：4567") == "安全码：****"


# --- a corpus through the real pipeline --------------------------------------------------------------------

CORPUS = [
    # name, channel, started_at (with its own offset), agent, customer, account, phone, text, extra
    ("c01", "chat", "2024-01-05T09:00:00+08:00", "1042", "C-1", "AC-1", "+8613800138000",
     "I want a refund for my order", {}),
    ("c02", "messaging", "2024-01-20T10:00:00+00:00", "1042", "C-1", "AC-1", None,
     "This product is not a deposit. Card 4111 1111 1111 1111 on file.", {"subject": "Your refund"}),
    ("c03", "phone", "2024-02-10T23:30:00-05:00", "2207", "C-2", "AC-2", "+12125550147",
     "Agent said it is not a deposit and returns vary", {"business_line": "broker-dealer"}),
    ("c04", "phone", "2024-02-11T04:00:00+00:00", "2207", "C-1", "AC-1", "+8613800138000",
     "王芳 called about the surrender penalty", {}),
    ("c05", "chat", "2024-03-31T23:59:59+00:00", "1042", "C-3", "AC-3", None,
     "Please cancel, CVV 987 is what I gave. Fee \"50%_off\" waived", {"tags": ["vip"]}),
    ("c06", "video", "2024-04-01T00:00:00+00:00", "3001", "C-2", "AC-2", None,
     "dual recording session: risk disclosure read", {"business_line": "bancassurance", "jurisdiction": "CN",
                                                      "product_type": "unit-linked", "contract_term": "P5Y"}),
    ("c07", "chat", "2023-12-31T23:00:00-02:00", "1042", "C-4", "AC-4", None, "hello refund", {}),
]
QUERIES = [
    "", "refund", "Refund", '"not a deposit"', "agent:1042", "agent:10*", "agent:1042 refund",
    "customer.phone:+8613800138000", "customer.account:AC-2", "channel:chat OR channel:messaging",
    "(channel:chat OR channel:messaging) refund", "channel:phone surrender", "NOT channel:chat", "-agent:1042", "after:2024-02-01",
    "before:2024-02-01", "after:2024-01-01 before:2024-04-01", "after:2024-04-01", "王芳", "4111",
    "1111", "987", "tag:vip", "policy:default", "policy:sec-17a-4-b4", "finding:missing-part-video",
    "policy:cn-insurance-dual-recording", "hold:case-1", "NOT hold:CASE-1", "sort:oldest", "part:transcript",
    "interaction:c03", "source:t", "refund sort:oldest", "surrender OR cancel", "xyz-not-there",
    'refund -"my order"', "refund -(agent:1042 channel:chat)", '-"not a deposit" -after:2024-03-01',
    '"\\"50%"', "%_off", '"0%_o"', "_", "50%_",
]


def make_index(request, kind: str, root: Path, name: str):
    """An empty index of one backend: SQLite in a file, or a search engine profile (osmem-server behind the
    strict shim, tests/engine_shim.py) under a fresh alias, the engine found as in production."""
    if kind == "sqlite":
        return SqliteIndex(root / f"{name}.sqlite")
    from archive.index.elastic import ElasticIndex

    return ElasticIndex(request.getfixturevalue("shims")(kind).url, alias=f"t{uuid.uuid4().hex[:12]}-{name}")


BACKENDS = ["sqlite", *(pytest.param(p, id=p, marks=pytest.mark.es) for p in ENGINE_PROFILES)]


@pytest.fixture(scope="module", params=BACKENDS)
def corpus(request, tmp_path_factory):
    """The corpus ingested through the real pipeline into one backend."""
    return build_corpus(request, request.param, tmp_path_factory.mktemp("search"))


def build_corpus(request, kind: str, root: Path):
    inbox = root / "inbox"
    inbox.mkdir()
    for name, channel, started, agent, customer, account, phone, text, extra in CORPUS:
        participants = [{"role": "agent", "id": agent, "name": f"Agent {agent}"},
                        {"role": "customer", "id": customer, "account": account, **({"phone": phone} if phone else {})}]
        doc = {"schema": "archive-record/1", "source": {"system": "t", "interaction_id": name}, "channel": channel,
               "started_at": started, "participants": participants, **extra}
        if channel in ("phone", "video"):  # a recording, its sidecar and its transcript
            wav(inbox / f"{name}.wav", 0.5)
            (inbox / f"{name}.txt").write_text(text)
        else:
            doc["messages"] = [{"at": started, "from": customer, "text": text}]
        (inbox / f"{name}.json").write_text(json.dumps(doc))
    settings = Settings.from_env({"ARCHIVE_HOME": str(root / "home")})
    arch, _ = init_archive(settings)
    ingestor = Ingestor(arch, make_index(request, kind, root, "records"))
    summary = ingestor.run([inbox], limits=Limits())
    assert summary.archived == len(CORPUS), summary.outcomes
    ids = {Path(o.origin).stem: o.record_ids[0] for o in summary.outcomes}
    ingestor.retention.place_hold("CASE-1", [ids["c01"], ids["c03"]], by="lee", reason="test")
    return arch, ingestor, ids, kind, root


def names(records: list[dict]) -> list[str]:
    return [r["metadata"]["source"]["interaction_id"] for r in records]


def test_filters_ranges_phrases_logic_and_sort(corpus):
    _, ingestor, *_ = corpus
    q = lambda text: names(ingestor.index.query(text, limit=100).records)  # noqa: E731
    assert q("") == ["c06", "c05", "c03", "c04", "c02", "c01", "c07"]  # newest first, by UTC start
    assert q("sort:oldest")[0] == "c07"
    assert q("refund") == ["c02", "c01", "c07"]
    assert q('"not a deposit"') == ["c03", "c02"]
    assert q('deposit -"not a deposit"') == [] and q('refund -"my order"') == ["c02", "c07"]
    assert q("refund -(agent:1042 channel:chat)") == ["c02"]
    assert q("agent:1042 refund") == ["c02", "c01", "c07"]
    assert q("agent:10*") == q("agent:1042")
    assert q("customer.phone:+8613800138000") == ["c04", "c01"]
    assert q("(channel:chat OR channel:messaging) refund") == ["c02", "c01", "c07"]
    assert q("channel:phone surrender") == ["c04"]  # a call's transcript is searchable
    assert q("NOT channel:chat") == ["c06", "c03", "c04", "c02"]
    # ranges compare in UTC: c03 is 2024-02-11T04:30Z, c07 is 2024-01-01T01:00Z, c01 2024-01-05T01:00Z
    assert q("after:2024-01-01 before:2024-02-11") == ["c02", "c01", "c07"]
    assert q("after:2024-02-11T04:00:00Z before:2024-02-11T05:00:00Z") == ["c03", "c04"]
    assert q("after:2024-04-01") == ["c06"]
    assert q("王芳") == ["c04"]
    assert q("hold:CASE-1") == ["c03", "c01"] and "c01" not in q("NOT hold:CASE-1")
    assert q("policy:sec-17a-4-b4") == ["c03"]
    assert q("finding:missing-part-video") == ["c06"]
    assert q("xyz-not-there") == []


def test_card_data_never_reaches_the_index_but_the_sealed_original_is_intact(corpus):
    arch, ingestor, ids, kind, _ = corpus
    assert names(ingestor.index.query("4111").records) == []
    assert names(ingestor.index.query("987").records) == []
    [stored] = ingestor.index.query("interaction:c02").records
    assert "**** **** **** 1111" in stored["metadata"]["messages"][0]["text"]
    assert all("inline" not in p for p in stored["parts"])
    if kind == "sqlite":
        index_files = sorted(Path(ingestor.index.path).parent.glob(Path(ingestor.index.path).name + "*"))
        raw = b"".join(p.read_bytes() for p in index_files)  # the database and its write-ahead log
        assert len(index_files) >= 2
    else:  # every document as the server holds it
        hits = ingestor.index.client.request("test", "POST", f"/{ingestor.index.alias}/_search",
                                             body={"size": 100})["hits"]["hits"]
        raw = json.dumps([h["_source"] for h in hits], ensure_ascii=False).encode()
    assert b"**** **** **** 1111" in raw
    assert b"4111 1111 1111 1111" not in raw and b"4111111111111111" not in raw
    manifest = ingestor.committed(ids["c02"])
    original = b"".join(ingestor.read_part(manifest, "transcript"))
    assert b"4111 1111 1111 1111" in original  # the sealed transcript is untouched


def test_facets_count_every_match_and_cursors_page_without_gaps(corpus):
    _, ingestor, *_ = corpus
    page = ingestor.index.query("", limit=3, facets=("channel", "agent", "policy", "hold", "month"), total=True)
    assert page.total == len(CORPUS)
    assert dict(page.facets["channel"]) == {"chat": 3, "phone": 2, "messaging": 1, "video": 1}
    assert dict(page.facets["agent"]) == {"1042": 4, "2207": 2, "3001": 1}
    assert dict(page.facets["hold"]) == {"case-1": 2}
    assert dict(page.facets["month"]) == {"2024-04": 1, "2024-03": 1, "2024-02": 2, "2024-01": 3}
    assert dict(page.facets["policy"])["default"] >= 5
    seen, cursor = [], None
    while True:
        page = ingestor.index.query("", limit=3, cursor=cursor)
        seen += names(page.records)
        cursor = page.next
        if cursor is None:
            break
    assert seen == names(ingestor.index.query("", limit=100).records)


def test_timeline_is_one_customer_across_channels_oldest_first(corpus):
    _, ingestor, *_ = corpus
    assert names(ingestor.index.timeline("customer.id", "C-1")) == ["c01", "c02", "c04"]
    assert names(ingestor.index.timeline("customer.account", "AC-2")) == ["c03", "c06"]
    assert names(ingestor.index.timeline("customer.phone", "+8613800138000")) == ["c01", "c04"]


def test_reindex_from_the_store_alone_gives_identical_results(corpus, request):
    arch, ingestor, _, kind, root = corpus
    before = {q: names(ingestor.index.query(q, limit=100).records) for q in QUERIES}
    facets_before = ingestor.index.query("", facets=("channel", "hold", "policy", "month")).facets
    fresh = make_index(request, kind, root, "fresh")  # the index deleted: a new, empty one
    from archive.retention.service import Retention

    assert Retention(arch, fresh).rebuild_index() == len(CORPUS)
    assert {q: names(fresh.query(q, limit=100).records) for q in QUERIES} == before
    assert fresh.query("", facets=("channel", "hold", "policy", "month")).facets == facets_before
    assert Retention(arch, fresh).rebuild_index() == len(CORPUS)  # idempotent
    assert {q: names(fresh.query(q, limit=100).records) for q in QUERIES} == before


def test_a_bad_cursor_or_facet_is_an_input_error(corpus):
    from archive.errors import InputError

    _, ingestor, *_ = corpus
    with pytest.raises(InputError, match="not a cursor"):
        ingestor.index.query("", cursor=base64.urlsafe_b64encode(b"junk").decode())
    with pytest.raises(InputError, match="unknown facet"):
        ingestor.index.query("", facets=("colour",))


def test_both_backends_answer_every_query_alike(request, tmp_path_factory, engine):
    """One store, both indexes built from it: the same records in the same order, the same facets, the
    same timelines, page by page — on each engine profile."""
    from archive.retention.service import Retention

    arch, ingestor, *_ = build_corpus(request, "sqlite", tmp_path_factory.mktemp("both"))
    es = make_index(request, engine.profile, tmp_path_factory.mktemp("es"), "both")
    Retention(arch, es).rebuild_index()
    sqlite = ingestor.index
    queries = QUERIES + ["agent:1042 OR tag:vip", "-channel:chat refund", "NOT (agent:2207 OR hold:case-1)",
                         "customer:C-1 sort:oldest", "part:audio after:2024-02-01", '"a deposit" OR surrender']
    assert len(queries) >= 36
    for q in ('"\\"50%"', "%_off", '"0%_o"', "50%_"):  # LIKE's and FTS5's own syntax is only text here
        assert names(sqlite.search(q)) == ["c05"], q
    for q in queries:
        a = sqlite.query(q, limit=100, facets=("channel", "agent", "policy", "hold", "finding", "month"), total=True)
        b = es.query(q, limit=100, facets=("channel", "agent", "policy", "hold", "finding", "month"), total=True)
        assert names(a.records) == names(b.records), q
        assert (a.total, a.facets) == (b.total, b.facets), q
        pages = []
        for index in (sqlite, es):
            seen, cursor = [], None
            while True:
                page = index.query(q, limit=2, cursor=cursor)
                seen.append(names(page.records))
                cursor = page.next
                if cursor is None:
                    break
            pages.append(seen)
        assert pages[0] == pages[1], q
    for field_name, value in (("customer.id", "C-1"), ("customer.account", "AC-2"), ("customer.phone", "+8613800138000")):
        assert names(sqlite.timeline(field_name, value)) == names(es.timeline(field_name, value))
    for kind, value in (("account", "AC-1"), ("contract", "none"), ("customer", "C-2")):
        assert sqlite.find(kind, value) == es.find(kind, value)


def test_an_index_from_before_the_query_language_migrates_and_stays_searchable(tmp_path):
    import sqlite3

    from archive.index import sqlite as backend

    path = tmp_path / "old.sqlite"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE schema_migrations (name TEXT PRIMARY KEY, applied_at TEXT)")
    for name, sql in backend.MIGRATIONS[:2]:  # as the index was before migration 0003
        for statement in filter(str.strip, sql.split(";")):
            db.execute(statement)
        db.execute("INSERT INTO schema_migrations VALUES (?, datetime('now'))", (name,))
    manifest = {"record_id": "rold", "metadata": {"source": {"system": "s", "interaction_id": "i"}, "channel": "chat",
                                                  "started_at": "2024-01-01T08:00:00+08:00", "participants": []}}
    db.execute("INSERT INTO records VALUES ('rold', '2024-01-01T08:00:00+08:00', 'chat', 's', 'i', ?)",
               (json.dumps(manifest),))
    db.execute("INSERT INTO records_text VALUES ('rold', 'an old refund request')")
    db.execute("INSERT INTO record_keys VALUES ('rold', 'account', 'AC-9')")
    db.commit()
    db.close()
    index = SqliteIndex(path)
    assert names(index.query("refund").records) == ["i"]
    assert names(index.query("after:2024-01-01 before:2024-01-01T00:00:01Z").records) == ["i"]  # 08:00+08:00 is 00:00Z
    assert index.find("account", "AC-9") == ["rold"]
    index.upsert({**manifest, "parts": []})  # re-indexing replaces the migrated row and its text
    assert names(index.query("refund").records) == [] and index.count() == 1


def test_date_range_facets_from_the_roll_ups_equal_counting_every_record(tmp_path):
    """Facets over a date range are summed from day and month roll-ups with the partial days at the ends
    counted record by record; whatever the range, they must equal a count over every matching record —
    also after records change (a hold placed) and are deleted."""
    import random
    from collections import Counter
    from datetime import UTC, datetime, timedelta

    rng = random.Random(5)
    index = SqliteIndex(tmp_path / "facets.sqlite")
    start = datetime(2023, 12, 20, tzinfo=UTC)
    views = {}
    for i in range(600):
        started = start + timedelta(seconds=rng.randrange(100 * 86400))
        rid = f"r{i:04d}"
        views[rid] = {"record_id": rid, "metadata": {
            "source": {"system": "t", "interaction_id": rid}, "channel": rng.choice(["chat", "phone", "email"]),
            "started_at": started.astimezone(rng.choice([UTC, None]) or UTC).isoformat(),
            "participants": [{"role": "agent", "id": str(rng.randrange(7))}]},
            "parts": [], "retention": {"policies": [{"id": rng.choice(["a", "b"])}]}, "holds": []}
        index.upsert(views[rid])
    for rid in rng.sample(sorted(views), 60):  # holds placed: the record is indexed again
        views[rid]["holds"] = ["CASE-9"]
        index.upsert(views[rid])
    for rid in rng.sample(sorted(views), 40):
        index.delete(rid)
        del views[rid]
    index.flush()

    def expected(lo, hi, name):
        counts = Counter()
        for v in views.values():
            t = datetime.fromisoformat(v["metadata"]["started_at"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            if (lo and t < lo) or (hi and t >= hi):
                continue
            values = {"channel": [v["metadata"]["channel"]], "agent": [v["metadata"]["participants"][0]["id"]],
                      "policy": [p["id"] for p in v["retention"]["policies"]], "hold": v["holds"] and ["case-9"],
                      "month": [t[:7]]}[name]
            counts.update(values or [])
        return counts

    bounds = ["2023-12-01", "2024-01-01", "2024-01-01T06:30:00", "2024-01-15", "2024-02-01", "2024-02-29T23:59:59",
              "2024-03-01", "2024-03-10T12:00:00", "2024-04-01", "2024-05-01"]
    ranges = [(a, b) for a in [None, *bounds] for b in [*bounds, None] if not (a and b) or a < b]
    for a, b in ranges:
        q = " ".join([f"after:{a}" if a else "", f"before:{b}" if b else ""]).strip()
        page = index.query(q, limit=1, facets=FACETS_ALL, total=True)
        lo, hi = (parse(q).tree.after, parse(q).tree.before) if q else (None, None)
        for name in FACETS_ALL:
            assert dict(page.facets[name]) == expected(lo, hi, name), (q, name)
        assert page.total == sum(expected(lo, hi, "month").values()), q


FACETS_ALL = ("channel", "agent", "policy", "hold", "month")


@pytest.mark.parametrize("plan", ["whole", "walk", "window"])
def test_text_search_plans_find_exactly_the_records_holding_the_text(tmp_path, plan):
    """However a text query runs — every match listed and sorted, the start-time index walked, or a
    bounded window of it checked record by record — it returns exactly the records whose text holds the
    words, in order, page after page; facets and totals count the same records."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(11)
    words = "refund deposit not a the guaranteed returns cooling-off period fee 50% 王芳 退款".split()
    index = SqliteIndex(tmp_path / "text.sqlite")
    texts = {}
    for i in range(500):
        rid = f"r{i:04d}"
        text = " ".join(rng.choice(words[:4] if i % 3 else words) for _ in range(rng.randrange(1, 12)))
        texts[rid] = (datetime(2024, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(200_000))).isoformat()
        index.upsert({"record_id": rid, "metadata": {"source": {"system": "t", "interaction_id": rid}, "channel": "chat",
                      "started_at": texts[rid], "messages": [{"at": texts[rid], "text": text}]}, "parts": []})
        texts[rid] = (texts[rid], text)
    index.flush()
    if plan != "whole":  # force the walk (and, for "window", windows too small to fill a page)
        import archive.index.sqlite as backend
        pytest.MonkeyPatch().setattr(backend._Compiler, "WALK_MIN", 1)
        index.WINDOW_MAX = 3 if plan == "window" else 10_000
    queries = ["refund", '"not a"', '"a refund"', "deposit refund", "guaranteed", '"cooling-off period"', "王芳",
               "退款", "50%", "zzz", "refund after:2024-02-01", "deposit before:2024-03-01 after:2024-02-01",
               "refund sort:oldest", "NOT refund", "refund OR guaranteed"]
    for q in queries:
        expected = [rid for rid, (_, text) in sorted(texts.items(), key=lambda kv: (kv[1][0], kv[0]))
                    if _holds(q, text, texts[rid][0])]
        if "sort:oldest" not in q:
            expected.reverse()
        seen, cursor = [], None
        while True:
            page = index.query(q, limit=7, cursor=cursor, facets=("month",), total=True)
            seen += [m["record_id"] for m in page.records]
            assert page.total == len(expected), q
            assert sum(n for _, n in page.facets["month"]) == len(expected), q
            cursor = page.next
            if cursor is None:
                break
        assert seen == expected, q


def _holds(q: str, text: str, started: str) -> bool:
    """What the queries in the test above mean, in plain Python."""
    from datetime import UTC, datetime

    t = datetime.fromisoformat(started).astimezone(UTC).strftime("%Y-%m-%d")
    words = [w for w in q.replace("sort:oldest", "").split('"') if w.strip()] if '"' in q else \
        [w for w in q.replace("sort:oldest", "").split() if ":" not in w]
    if q.startswith("NOT "):
        return "refund" not in text
    if " OR " in q:
        return "refund" in text or "guaranteed" in text
    if "after:2024-02-01" in q and t < "2024-02-01" or "before:2024-03-01" in q and t >= "2024-03-01":
        return False
    return all(w.strip().casefold() in text for w in words)


@pytest.mark.parametrize("kind", BACKENDS)
def test_reindex_check_names_an_edited_or_missing_entry_on_each_backend(request, kind, tmp_path):
    from archive.index.check import check_index

    _, ingestor, ids, _, _ = build_corpus(request, kind, tmp_path)
    index, retention = ingestor.index, ingestor.retention
    result = check_index(retention)
    assert result.ok and result.entries == result.records_in_store == len(CORPUS), result.mismatches
    edited, gone = ids["c02"], ids["c05"]
    if kind == "sqlite":
        with index.db:
            index.db.execute("UPDATE record_fields SET value = 'ac-999' WHERE field = 'customer.account' AND rec = "
                             "(SELECT rec FROM records WHERE record_id = ?)", (edited,))
            index.db.execute("DELETE FROM records WHERE record_id = ?", (gone,))
    else:
        raw = index.client.request  # an insider with the engine's REST API, past the archive
        doc = raw("get", "GET", f"/{index.alias}/_doc/{edited}")
        raw("index", "PUT", f"/{doc['_index']}/_doc/{edited}", params={"refresh": "true"},
            body={**doc["_source"], "f_customer__account": ["ac-999"]})
        raw("delete", "DELETE", f"/{doc['_index']}/_doc/{gone}", params={"refresh": "true"})
    assert edited not in index.ids("customer.account:AC-1")  # the wrong answer the index now gives
    result = check_index(retention)
    assert {(m.record_id, m.kind) for m in result.mismatches} == {(edited, "differs"), (gone, "not-indexed")}
    assert "search field(s) customer.account" in next(m.message for m in result.mismatches if m.record_id == edited)
