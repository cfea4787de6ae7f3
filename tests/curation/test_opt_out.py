import json

import pytest

from curation.opt_out import OptOutList, make, opt_out_decision


def _list(*entries):
    return OptOutList([make(k, v, reason="ticket-1") for k, v in entries])


def test_match_by_each_kind():
    opt = _list(("sample_id", "AB" * 32), ("url", "https://x.org/a.jpg"), ("domain", "https://www.Example.com/"),
                ("artist", "  Jane   DOE "))
    assert opt.match("ab" * 32, "/data/a.jpg", {}).kind == "sample_id"
    assert opt.match("cd" * 32, "https://x.org/a.jpg", {}).kind == "url"
    assert opt.match("cd" * 32, "/d/b.jpg", {"sidecar": {"url": "https://img.example.com/p/1.jpg"}}).kind == "domain"
    embedded = json.dumps({"embedded": {"exif": {"Artist": "jane doe"}}})
    assert opt.match("cd" * 32, "/d/b.jpg", embedded).kind == "artist"
    assert opt.match("cd" * 32, "/d/b.jpg", {"sidecar": {"url": "https://notexample.com/1.jpg",
                                                         "artist": "John Doe"}}) is None


def test_domain_does_not_match_suffix_of_another_name():
    opt = _list(("domain", "ample.com"))
    assert opt.match(None, "https://example.com/a.jpg", {}) is None
    assert opt.match(None, "https://cdn.ample.com/a.jpg", {}).value == "ample.com"


def test_csv_round_trip_and_bad_rows():
    opt = _list(("artist", "Jane Doe"), ("domain", "example.com"))
    again = OptOutList.from_csv(opt.to_csv())
    assert [(e.kind, e.value, e.reason) for e in again.entries] == [(e.kind, e.value, e.reason) for e in opt.entries]
    assert again.fingerprint() == opt.fingerprint()
    with pytest.raises(ValueError, match="line 2"):
        OptOutList.from_csv("kind,value\nplanet,mars\n")
    with pytest.raises(ValueError, match="missing column"):
        OptOutList.from_csv("who,what\n")


def test_decision_names_the_request():
    request = make("domain", "example.com", reason="DMCA 42", added_by="legal")
    d = opt_out_decision("ab" * 32, "https://example.com/x.jpg", request)
    assert (d.stage, d.decision, d.reason) == ("opt_out", "drop", "opted_out")
    assert d.details["request"] == "DMCA 42" and d.details["kind"] == "domain"


def test_empty_list_matches_nothing():
    assert not OptOutList()
    assert OptOutList().match("ab" * 32, "x", None) is None
