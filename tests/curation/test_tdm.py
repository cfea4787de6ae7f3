"""Issue 14 item 5: machine-readable TDM reservations (PLUS DataMining in XMP, C2PA/CAWG training-mining, TDMRep,
noai robots tokens in sidecars) drop the input at ingest with stage `opt_out`, reason `tdm_reserved`; files are made
here (XMP written by Pillow, C2PA manifests signed with the throwaway chain of test_provenance)."""

from __future__ import annotations

import io
import json

import c2pa
import pytest

from curation.image_io import ProbeLimits
from curation.ingest import IngestConfig, ingest_unit
from curation.sources import plan_units
from curation.tdm import PLUS_PROHIBITED, TdmPolicy, plus_code, tdm_reservation
from tests.conftest import encode, make_image
from tests.curation.test_provenance import pki  # noqa: F401 - a fixture used below

CONFIG = IngestConfig(probe=ProbeLimits(min_side=32))
VOCAB = "http://ns.useplus.org/ldf/vocab/"
DIGITAL_CAPTURE = "http://cv.iptc.org/newscodes/digitalsourcetype/digitalCapture"


def plus_xmp(value: str, form: str = "attribute") -> str:
    prop = {"attribute": f'<rdf:Description rdf:about="" plus:DataMining="{value}"/>',
            "element": f'<rdf:Description rdf:about=""><plus:DataMining>{value}</plus:DataMining></rdf:Description>',
            "resource": f'<rdf:Description rdf:about=""><plus:DataMining rdf:resource="{value}"/></rdf:Description>'}
    return ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#" '
            'xmlns:plus="http://ns.useplus.org/ldf/xmp/1.0/">' + prop[form] + "</rdf:RDF></x:xmpmeta>")


def with_xmp(xmp: str, fmt: str) -> bytes:
    img = make_image(96, 64)
    if fmt == "PNG":
        from PIL import PngImagePlugin

        info = PngImagePlugin.PngInfo()
        info.add_itxt("XML:com.adobe.xmp", xmp)
        return encode(img, "PNG", pnginfo=info)
    return encode(img, fmt, xmp=xmp.encode())


def ingest_files(tmp_path, files: dict[str, bytes | str], config: IngestConfig = CONFIG):
    for name, data in files.items():
        (tmp_path / name).write_bytes(data if isinstance(data, bytes) else data.encode())
    (unit,) = plan_units(str(tmp_path))
    result = ingest_unit(unit, "drop", config)
    assert result.counts.balanced()
    return result


def tdm_drops(result) -> dict[str, dict]:
    return {d.source_uri.rsplit("/", 1)[-1]: d.details for d in result.decisions
            if d.stage == "opt_out" and d.reason == "tdm_reserved" and d.decision == "drop"}


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP"])
def test_every_plus_prohibition_in_xmp_is_dropped_at_ingest(tmp_path, fmt):
    ext = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}[fmt]
    forms = ["attribute", "element", "resource"]
    files = {f"p{i}.{ext}": with_xmp(plus_xmp(VOCAB + code, forms[i % 3]), fmt)
             for i, code in enumerate(PLUS_PROHIBITED)}
    files[f"label.{ext}"] = with_xmp(plus_xmp("Prohibited for Generative AI/ML training"), fmt)
    files[f"allowed.{ext}"] = with_xmp(plus_xmp(VOCAB + "DMI-ALLOWED"), fmt)
    files[f"unspecified.{ext}"] = with_xmp(plus_xmp(VOCAB + "DMI-UNSPECIFIED", "element"), fmt)
    result = ingest_files(tmp_path, files)
    drops = tdm_drops(result)
    assert set(drops) == {f"p{i}.{ext}" for i in range(len(PLUS_PROHIBITED))} | {f"label.{ext}"}
    assert result.counts.dropped["tdm_reserved"] == len(drops) and result.counts.kept == 2
    for i, code in enumerate(PLUS_PROHIBITED):
        d = drops[f"p{i}.{ext}"]
        assert (d["source"], d["field"], d["value"], d["code"]) == ("xmp", "plus:DataMining", VOCAB + code, code)
    assert drops[f"label.{ext}"]["code"] == "DMI-PROHIBITED-GENAIMLTRAINING"


def test_plus_codes_and_labels():
    assert plus_code(VOCAB + "DMI-PROHIBITED-AIMLTRAINING") == "DMI-PROHIBITED-AIMLTRAINING"
    assert plus_code("Prohibited except for search engine indexing") == "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING"
    assert plus_code("Prohibited, see constraint") == "DMI-PROHIBITED-SEECONSTRAINT"
    assert plus_code("Prohibited (our own wording)") == "DMI-PROHIBITED"  # unknown prohibition: conservative
    assert plus_code("Allowed") == "DMI-ALLOWED" and plus_code("holiday") is None


def test_policy_names_what_bars(tmp_path):
    files = {"a.jpg": with_xmp(plus_xmp(VOCAB + "DMI-PROHIBITED-AIMLTRAINING"), "JPEG"),
             "g.jpg": with_xmp(plus_xmp(VOCAB + "DMI-PROHIBITED-GENAIMLTRAINING"), "JPEG")}
    only_gen = IngestConfig(probe=CONFIG.probe, tdm=TdmPolicy(plus_barred=("DMI-PROHIBITED-GENAIMLTRAINING",)))
    assert set(tdm_drops(ingest_files(tmp_path, files, only_gen))) == {"g.jpg"}
    off = IngestConfig(probe=CONFIG.probe, tdm=TdmPolicy(enabled=False))
    assert tdm_drops(ingest_files(tmp_path, {}, off)) == {}


def test_tdmrep_and_robots_in_sidecars_and_xmp(tmp_path):
    img = encode(make_image(96, 64, seed=3), "JPEG")
    tdm_xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
               '<rdf:Description xmlns:tdm="http://www.w3.org/ns/tdmrep/" tdm:reservation="1" '
               'tdm:policy="https://example.com/tdm-policy.json"/></rdf:RDF></x:xmpmeta>')
    files = {
        "wds.jpg": img, "wds.json": json.dumps({"url": "https://x.example/a.jpg",
                                                "headers": {"X-Robots-Tag": "noindex, noimageai"}}),
        "tdm.jpg": encode(make_image(96, 64, seed=4), "JPEG"),
        "tdm.json": json.dumps({"tdm-reservation": 1, "tdm-policy": "https://x.example/policy"}),
        "ok.jpg": encode(make_image(96, 64, seed=5), "JPEG"), "ok.json": json.dumps({"x_robots_tag": "noindex"}),
        "xmp.jpg": with_xmp(tdm_xmp, "JPEG"),
        "exiftool.jpg": encode(make_image(96, 64, seed=6), "JPEG"),
        "exiftool.json": json.dumps({"XMP-plus:DataMining": "Prohibited for AI/ML training"}),
        "jsonl.jpg": encode(make_image(96, 64, seed=7), "JPEG"),
        "metadata.jsonl": json.dumps({"file_name": "jsonl.jpg", "robots": "noai"}) + "\n",
    }
    drops = tdm_drops(ingest_files(tmp_path, files))
    assert set(drops) == {"wds.jpg", "tdm.jpg", "xmp.jpg", "exiftool.jpg", "jsonl.jpg"}
    assert drops["wds.jpg"] == {"source": "sidecar", "field": "headers.X-Robots-Tag", "value": "noindex, noimageai",
                                "code": "noimageai"}
    assert drops["tdm.jpg"]["code"] == "tdm-reservation=1" and drops["xmp.jpg"]["field"] == "tdm:reservation"
    assert drops["exiftool.jpg"]["code"] == "DMI-PROHIBITED-AIMLTRAINING"
    assert drops["jsonl.jpg"]["code"] == "noai"


def signed(pki, label: str, entries: dict) -> bytes:  # noqa: F811
    ns = label.split(".", 1)[0]
    created = {"actions": [{"action": "c2pa.created", "digitalSourceType": DIGITAL_CAPTURE}]}
    manifest = {"claim_generator_info": [{"name": "atelier-test", "version": "0.1"}], "title": "photo",
                "assertions": [{"label": "c2pa.actions", "data": created},
                               {"label": label, "data": {"entries": {f"{ns}.{k}": v for k, v in entries.items()}}}]}
    signer = c2pa.Signer.from_info(c2pa.C2paSignerInfo(c2pa.C2paSigningAlg.ES256, pki["chain"], pki["key"], None))
    builder = c2pa.Builder(manifest, context=c2pa.Context.from_dict({"builder": {"thumbnail": {"enabled": False}}}))
    out = io.BytesIO()
    builder.sign(signer, "image/jpeg", io.BytesIO(encode(make_image(96, 64, seed=len(json.dumps(entries))),
                                                         "JPEG")), out)
    return out.getvalue()


def test_c2pa_and_cawg_training_mining(tmp_path, pki):  # noqa: F811
    files = {
        "cawg_no.jpg": signed(pki, "cawg.training-mining", {"ai_generative_training": {"use": "notAllowed"}}),
        "c2pa_constrained.jpg": signed(pki, "c2pa.training-mining", {"ai_training": {"use": "constrained"}}),
        "with_info.jpg": signed(pki, "cawg.training-mining", {"data_mining": {"use": "constrained",
                                                                              "constraint_info": "licence at x"}}),
        "allowed.jpg": signed(pki, "cawg.training-mining", {"ai_generative_training": {"use": "allowed"}}),
        "inference.jpg": signed(pki, "c2pa.training-mining", {"ai_inference": {"use": "notAllowed"}}),
    }
    drops = tdm_drops(ingest_files(tmp_path, files))
    assert set(drops) == {"cawg_no.jpg", "c2pa_constrained.jpg"}
    assert drops["cawg_no.jpg"] == {"source": "c2pa", "field": "cawg.training-mining/cawg.ai_generative_training",
                                    "value": "notAllowed", "code": "notAllowed"}
    assert drops["c2pa_constrained.jpg"]["code"] == "constrained"
    strict = TdmPolicy(bar_constrained_with_info=True)
    from curation.provenance import c2pa_manifest_store

    store, _, _ = c2pa_manifest_store(files["with_info.jpg"], "image/jpeg")
    found = tdm_reservation({"embedded": {}, "sidecar": {}}, store, strict)
    assert found.value == "constrained (licence at x)"


def test_curate_inspect_shows_a_plus_prohibition(tmp_path, capsys):
    from orchestration import cli

    path = tmp_path / "reserved.jpg"
    path.write_bytes(with_xmp(plus_xmp(VOCAB + "DMI-PROHIBITED-GENAIMLTRAINING"), "JPEG"))
    (tmp_path / "free.jpg").write_bytes(encode(make_image(96, 64), "JPEG"))
    assert cli.main(["inspect", str(tmp_path), "--no-features"]) == 0
    records = {r["path"].rsplit("/", 1)[-1]: r for r in map(json.loads, capsys.readouterr().out.splitlines())}
    assert records["reserved.jpg"]["tdm_reservation"] == {"source": "xmp", "field": "plus:DataMining",
                                                          "value": VOCAB + "DMI-PROHIBITED-GENAIMLTRAINING",
                                                          "code": "DMI-PROHIBITED-GENAIMLTRAINING"}
    assert records["free.jpg"]["tdm_reservation"] is None
