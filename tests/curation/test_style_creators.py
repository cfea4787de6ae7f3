import json

import numpy as np
import pytest

from curation.style.creators import (
    CreatorIndex,
    CreatorIndexConfig,
    build_creator_index,
    creator_of,
    normalise_creator,
)

XMP = ('<x:xmpmeta><rdf:RDF><rdf:Description><dc:creator><rdf:Seq><rdf:li>Ana Ruiz</rdf:li></rdf:Seq>'
       '</dc:creator></rdf:Description></rdf:RDF></x:xmpmeta>')


def test_creator_sources_in_order_of_trust_and_normalised():
    embedded = {"exif": {"Artist": "Camera Owner"}, "iptc": {"By-line": "Iptc Person"}, "xmp": XMP}
    assert creator_of({"sidecar": {"Artist": "© 2021 Jane  Doe"}, "embedded": embedded}) == \
        ("jane doe", "© 2021 Jane Doe", "sidecar.artist")
    assert creator_of({"sidecar": {}, "embedded": embedded})[:2] == ("iptc person", "Iptc Person")
    assert creator_of({"embedded": {"xmp": XMP, "exif": {"Artist": "x"}}})[0] == "ana ruiz"
    assert creator_of(json.dumps({"embedded": {"exif": {"Artist": "Photo by KIM Lee, 2019"}}}))[0] == "kim lee"
    assert creator_of({"sidecar": {"credit": "By: Studio Nine"}})[0] == "studio nine"
    assert creator_of({"sidecar": {"title": "no creator"}, "embedded": {"exif": {"Artist": "  "}}}) is None
    assert normalise_creator("Ｊａｎｅ DOE") == normalise_creator("jane doe")


def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _styles(dim=32, seed=0):
    rng = np.random.default_rng(seed)
    return _unit(rng.standard_normal((8, dim))), rng


def _labelled(centres, rng, spec):
    """spec: {creator: [style index, ...] per image}."""
    creators, vectors = {}, {}
    n = 0
    for name, styles in spec.items():
        for s in styles:
            sid = f"{n:064x}"
            n += 1
            creators[sid] = (name, name.title())
            vectors[sid] = _unit(centres[s] + 0.1 * rng.standard_normal(centres.shape[1]))
    return creators, vectors


def test_attribution_shares_sum_to_one_and_unseen_styles_go_unattributed():
    centres, rng = _styles()
    spec = {"alice": [0] * 6 + [1] * 6, "bob": [2] * 8, "carol": [3] * 8, "dan": [4] * 8, "eve": [5] * 8}
    creators, vectors = _labelled(centres, rng, spec)
    config = CreatorIndexConfig(max_prototypes=3, images_per_prototype=4)
    index, counts = build_creator_index(creators, vectors, "test", config)
    assert counts["indexed"] == 5
    assert len(next(e for e in index.entries if e.key == "alice").prototypes) == 3  # two styles are not averaged
    cal = index.calibration
    assert cal.positives > 0 and cal.negatives > 0 and cal.metrics["loo_top1"] > 0.9
    queries = _unit(np.stack([centres[1] + 0.1 * rng.standard_normal(32), centres[2] + 0.1 *
                              rng.standard_normal(32), centres[6], centres[7]]))
    results = index.attribute(queries, top=3)
    for r in results:
        assert sum(c["share"] for c in r["creators"]) + r["unattributed"] == pytest.approx(1.0, abs=1e-9)
        assert len(r["creators"]) == 3
    assert results[0]["creators"][0]["creator"] == "Alice" and results[0]["unattributed"] < 0.5
    assert results[1]["creators"][0]["creator"] == "Bob" and results[1]["creators"][0]["share"] > 0.5
    assert results[2]["unattributed"] > 0.5 and results[3]["unattributed"] > 0.5  # styles nobody has
    assert index.attribute(queries, top=3) == results


def test_index_round_trips_excludes_opt_outs_and_reuses_unchanged_creators():
    centres, rng = _styles(seed=1)
    creators, vectors = _labelled(centres, rng, {"alice": [0] * 5, "bob": [1] * 5, "carol": [2] * 5})
    index, _ = build_creator_index(creators, vectors, "test", excluded={"carol"})
    assert [e.key for e in index.entries] == ["alice", "bob"]
    loaded = CreatorIndex.from_bytes(index.to_bytes())
    assert loaded.version() == index.version()
    q = _unit(centres[:2])
    assert loaded.attribute(q) == index.attribute(q)
    more = dict(creators)
    extra = f"{999:064x}"
    more[extra] = ("bob", "Bob")
    vectors[extra] = _unit(centres[1])
    again, counts = build_creator_index(more, vectors, "test", excluded={"carol"}, previous=loaded)
    assert counts["reused"] == 1 and counts["indexed"] == 2  # alice reused, bob rebuilt
    assert again.version() != index.version()
    blob = bytearray(index.to_bytes())
    with pytest.raises(ValueError):
        CreatorIndex.from_bytes(bytes(blob).replace(b'"alice"', b'"alicx"'))
