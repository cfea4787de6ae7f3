"""Machine-readable text-and-data-mining reservations carried by an image or its sidecar, honoured at ingest.

Where rights holders say "not for (generative) AI training" in a form a machine can read:

- IPTC / PLUS `plus:DataMining` in XMP (namespace `http://ns.useplus.org/ldf/xmp/1.0/`): a PLUS LDF vocabulary URI
  (`http://ns.useplus.org/ldf/vocab/DMI-PROHIBITED-GENAIMLTRAINING`) or, as some tools write it, its label
  ("Prohibited for Generative AI/ML training"). Also as `plus:DataMining` / `DataMining` in an exiftool-style JSON
  sidecar.
- C2PA manifests: the CAWG `cawg.training-mining` assertion and the older `c2pa.training-mining`, whose entries
  (`<ns>.ai_generative_training`, `<ns>.ai_training`, `<ns>.data_mining`, `<ns>.ai_inference`) each say `allowed`,
  `notAllowed` or `constrained` (with optional `constraint_info`).
- W3C TDMRep: `tdm-reservation: 1` (an HTTP header or HTML meta recorded in a sidecar, or `tdm:reservation` in XMP,
  namespace `http://www.w3.org/ns/tdmrep/`), with `tdm-policy` kept as detail.
- `X-Robots-Tag` / robots meta values `noai`, `noimageai` recorded in sidecars (WebDataset / img2dataset JSON,
  `metadata.jsonl`), at any depth (e.g. under `headers`).

`TdmPolicy` names which values bar a generative-training corpus. `tdm_reservation` returns the first barring
statement found (field, value, where), or None. Ingest drops the sample with stage `opt_out`, reason `tdm_reserved`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

PLUS_NS = "http://ns.useplus.org/ldf/xmp/1.0/"
TDMREP_NS = "http://www.w3.org/ns/tdmrep/"
PLUS_PROHIBITED = ("DMI-PROHIBITED", "DMI-PROHIBITED-AIMLTRAINING", "DMI-PROHIBITED-GENAIMLTRAINING",
                   "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING", "DMI-PROHIBITED-SEECONSTRAINT",
                   "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR", "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR")
"""Every "Prohibited..." value of the PLUS LDF Data Mining vocabulary."""
_PLUS_LABELS = {
    "unspecified": "DMI-UNSPECIFIED", "allowed": "DMI-ALLOWED", "prohibited": "DMI-PROHIBITED",
    "prohibitedforaimltraining": "DMI-PROHIBITED-AIMLTRAINING",
    "prohibitedforgenerativeaimltraining": "DMI-PROHIBITED-GENAIMLTRAINING",
    "prohibitedexceptforsearchengineindexing": "DMI-PROHIBITED-EXCEPTSEARCHENGINEINDEXING",
    "prohibitedseeconstraint": "DMI-PROHIBITED-SEECONSTRAINT",
    "prohibitedseeembeddedrightsexpression": "DMI-PROHIBITED-SEEEMBEDDEDRIGHTSEXPR",
    "prohibitedseelinkedrightsexpression": "DMI-PROHIBITED-SEELINKEDRIGHTSEXPR",
}
TRAINING_MINING_LABELS = ("cawg.training-mining", "c2pa.training-mining")


@dataclass(frozen=True)
class TdmPolicy:
    """Which machine-readable statements bar a sample from the corpus (defaults: a generative-training corpus)."""

    enabled: bool = True
    """Honour reservations at all (off only for a corpus that is not used for training, e.g. an audit copy)."""
    plus_barred: tuple[str, ...] = PLUS_PROHIBITED
    """PLUS Data Mining codes that bar (every "Prohibited..." value)."""
    c2pa_uses: tuple[str, ...] = ("ai_generative_training", "ai_training", "data_mining")
    """training-mining entries (without namespace) that matter: a generative model is trained, which is AI
    training and data mining too. `ai_inference` does not bar training."""
    bar_constrained_with_info: bool = False
    """`constrained` bars when it gives no `constraint_info` (nothing to comply with); with info, only if set."""
    tdmrep: bool = True
    """`tdm-reservation: 1` bars."""
    robots_tokens: tuple[str, ...] = ("noai", "noimageai")
    """X-Robots-Tag / robots tokens that bar."""


@dataclass(frozen=True)
class TdmReservation:
    """One barring statement."""

    source: str
    """`xmp`, `c2pa` or `sidecar`."""
    field: str
    """The field as written (`plus:DataMining`, `cawg.training-mining/cawg.ai_generative_training`, ...)."""
    value: str
    """Its value as written."""
    code: str | None = None
    """The normalised value (PLUS code, C2PA use, token)."""

    def details(self) -> dict[str, Any]:
        return {"source": self.source, "field": self.field, "value": self.value, "code": self.code}


def plus_code(value: str) -> str | None:
    """The PLUS Data Mining code of a URI or label; an unknown "prohibited..." label counts as DMI-PROHIBITED."""
    text = str(value).strip()
    if "DMI-" in text.upper():
        return text.upper().rsplit("/", 1)[-1].strip()
    key = re.sub(r"[^a-z]", "", text.lower())
    if key in _PLUS_LABELS:
        return _PLUS_LABELS[key]
    return "DMI-PROHIBITED" if key.startswith("prohibited") else None


def _prefixes(xmp: str, namespace: str, default: str) -> set[str]:
    found = set(re.findall(r'xmlns:([\w.-]+)\s*=\s*["\']' + re.escape(namespace) + '["\']', xmp))
    return found or {default}


def _xmp_values(xmp: str, namespace: str, default_prefix: str, name: str) -> list[str]:
    """Values of property `name` in XMP (attribute, element text or rdf:resource), whatever prefix binds the
    namespace; regexes rather than an XML parser so that untrusted packets cannot expand entities."""
    values = []
    for prefix in _prefixes(xmp, namespace, default_prefix):
        qname = re.escape(f"{prefix}:{name}")
        values += re.findall(qname + r'\s*=\s*"([^"]*)"', xmp)
        values += re.findall(qname + r"\s*=\s*'([^']*)'", xmp)
        for attrs, text in re.findall(r"<" + qname + r"\b([^>]*)>([^<]*)<", xmp):
            values.append(text.strip() or _resource(attrs))
        for attrs in re.findall(r"<" + qname + r"\b([^>]*)/>", xmp):
            values.append(_resource(attrs))
        # rdf:Bag / rdf:Alt wrappers: the values sit in rdf:li elements inside the property
        for body in re.findall(r"<" + qname + r"\b[^>]*>(.*?)</" + qname + ">", xmp, re.S):
            values += [v.strip() for v in re.findall(r"<rdf:li\b[^>]*>([^<]*)<", body)]
    return [v for v in values if v]


def _resource(attrs: str) -> str:
    match = re.search(r'rdf:resource\s*=\s*["\']([^"\']*)["\']', attrs)
    return match.group(1) if match else ""


def _xmp_reservation(xmp: str, policy: TdmPolicy) -> TdmReservation | None:
    for value in _xmp_values(xmp, PLUS_NS, "plus", "DataMining"):
        if (code := plus_code(value)) in policy.plus_barred:
            return TdmReservation("xmp", "plus:DataMining", value, code)
    if policy.tdmrep:
        for value in _xmp_values(xmp, TDMREP_NS, "tdm", "reservation"):
            if value.strip() in ("1", "true"):
                return TdmReservation("xmp", "tdm:reservation", value, "tdm-reservation=1")
    return None


def c2pa_reservation(store: dict[str, Any], policy: TdmPolicy) -> TdmReservation | None:
    """A barring training-mining entry in any manifest of a C2PA store (an ingredient's reservation travels with
    the content derived from it)."""
    for manifest in (store.get("manifests") or {}).values():
        for assertion in manifest.get("assertions") or []:
            label = str(assertion.get("label", ""))
            if not any(label == t or label.startswith(t + ".v") for t in TRAINING_MINING_LABELS):
                continue
            entries = (assertion.get("data") or {}).get("entries") or {}
            for key, entry in entries.items():
                use = str((entry or {}).get("use", ""))
                if str(key).split(".", 1)[-1] not in policy.c2pa_uses:
                    continue
                info = (entry or {}).get("constraint_info")
                if use == "notAllowed" or (use == "constrained" and (not info or policy.bar_constrained_with_info)):
                    value = use + (f" ({info})" if info else "")
                    return TdmReservation("c2pa", f"{label}/{key}", value, use)
    return None


def _key(k: Any) -> str:
    return str(k).strip().lower().replace("_", "-").split(":")[-1]


def _sidecar_reservation(node: Any, policy: TdmPolicy, path: str = "") -> TdmReservation | None:
    if isinstance(node, list):
        for v in node:
            if found := _sidecar_reservation(v, policy, path):
                return found
        return None
    if not isinstance(node, dict):
        return None
    for k, v in node.items():
        key, where = _key(k), f"{path}{k}"
        values = v if isinstance(v, list) else [v]
        if key == "datamining":
            for value in values:
                if isinstance(value, str) and (code := plus_code(value)) in policy.plus_barred:
                    return TdmReservation("sidecar", where, value, code)
        elif key == "tdm-reservation" and policy.tdmrep:
            if any(str(value).strip().lower() in ("1", "true") for value in values):
                return TdmReservation("sidecar", where, str(v), "tdm-reservation=1")
        elif key in ("x-robots-tag", "robots", "x-robots") and policy.robots_tokens:
            for value in values:
                tokens = set(re.split(r"[\s,;:]+", str(value).lower()))
                if hit := sorted(tokens & set(policy.robots_tokens)):
                    return TdmReservation("sidecar", where, str(value), hit[0])
        if isinstance(v, dict | list) and (found := _sidecar_reservation(v, policy, where + ".")):
            return found
    return None


def tdm_reservation(metadata: dict[str, Any], c2pa_store: dict[str, Any] | None = None,
                    policy: TdmPolicy = TdmPolicy()) -> TdmReservation | None:
    """The first statement in a sample's metadata that bars it under `policy`, or None.

    Args:
        metadata: the ingest metadata document `{"embedded": {...}, "sidecar": {...}}`.
        c2pa_store: the image's C2PA manifest store (`curation.provenance.c2pa_manifest_store`), if any.
        policy: which values bar.
    """
    if not policy.enabled:
        return None
    xmp = (metadata.get("embedded") or {}).get("xmp")
    if isinstance(xmp, str) and (found := _xmp_reservation(xmp, policy)):
        return found
    if c2pa_store and (found := c2pa_reservation(c2pa_store, policy)):
        return found
    return _sidecar_reservation(metadata.get("sidecar") or {}, policy)


def may_carry_c2pa(data: bytes) -> bool:
    """Whether the bytes can hold an embedded C2PA store (its JUMBF boxes are labelled "c2pa"): a memchr-speed
    test that spares the manifest reader on the files without one."""
    return b"c2pa" in data


def tdm_decision(sample_id: str | None, source_uri: str, reservation: TdmReservation):
    """The ledger entry of a sample dropped for a machine-readable reservation."""
    from curation.decisions import Decision

    return Decision(sample_id, source_uri, "opt_out", "drop", "tdm_reserved", details=reservation.details())
