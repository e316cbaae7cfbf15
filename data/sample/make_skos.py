"""Write the debtags sample vocabulary as SKOS: data/sample/debtags/vocabulary.ttl.

Every facet of the sample's tags (admin, devel, ...) is a top concept, every tag a concept narrower
than its facet. Labels and definitions come from the debtags vocabulary file (Debian package debtags
2.1.5, usr/share/debtags/vocabulary, GPL-2; prepared in ../shared/data/debian_debtags): a tag's
description reads "Short label — longer definition", which become prefLabel and definition; the
tag's name (admin::backup) is its notation. URIs are under https://debtags.example.org/ (a reserved
example domain: the debtags vocabulary publishes no URIs of its own).

    .venv/bin/python data/sample/make_skos.py [--source ../shared/data]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

import rdflib
from rdflib.namespace import DCTERMS, RDF, SKOS

HERE = Path(__file__).resolve().parent
BASE = "https://debtags.example.org/"
SEPARATOR = " — "


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(HERE.parents[2] / "shared" / "data"))
    args = parser.parse_args()
    sample = [json.loads(line) for line in (HERE / "debtags" / "tags.jsonl").read_text().splitlines()]
    with gzip.open(Path(args.source) / "debian_debtags" / "tags.jsonl.gz", "rt") as handle:
        full = [json.loads(line) for line in handle]
    facet_label = {t["facet"]: t.get("facet_description") for t in full}

    graph = rdflib.Graph()
    graph.bind("skos", SKOS)
    graph.bind("dct", DCTERMS)
    scheme = rdflib.URIRef(BASE)
    graph.add((scheme, RDF.type, SKOS.ConceptScheme))
    graph.add(
        (scheme, DCTERMS.title, rdflib.Literal("Debian debtags facets and tags (llm4tag sample)", lang="en"))
    )
    graph.add(
        (scheme, DCTERMS.license, rdflib.URIRef("https://www.gnu.org/licenses/old-licenses/gpl-2.0.html"))
    )
    graph.add(
        (
            scheme,
            DCTERMS.source,
            rdflib.Literal("usr/share/debtags/vocabulary of Debian package debtags 2.1.5"),
        )
    )

    facets = sorted({t["facet"] for t in sample})
    for facet in facets:
        node = rdflib.URIRef(f"{BASE}facet/{facet}")
        graph.add((node, RDF.type, SKOS.Concept))
        graph.add(
            (node, SKOS.prefLabel, rdflib.Literal(facet_label.get(facet) or facet.capitalize(), lang="en"))
        )
        graph.add((node, SKOS.notation, rdflib.Literal(facet)))
        graph.add((node, SKOS.inScheme, scheme))
        graph.add((node, SKOS.topConceptOf, scheme))
        graph.add((scheme, SKOS.hasTopConcept, node))
    for tag in sample:
        node = rdflib.URIRef(f"{BASE}tag/{tag['tag']}")
        parent = rdflib.URIRef(f"{BASE}facet/{tag['facet']}")
        description = tag.get("description") or ""
        label, _, definition = description.partition(SEPARATOR)
        label = " ".join(label.split()) or tag["tag"].split("::", 1)[1]
        graph.add((node, RDF.type, SKOS.Concept))
        graph.add((node, SKOS.prefLabel, rdflib.Literal(label, lang="en")))
        if definition.strip():
            graph.add((node, SKOS.definition, rdflib.Literal(" ".join(definition.split()), lang="en")))
        graph.add((node, SKOS.notation, rdflib.Literal(tag["tag"])))
        graph.add((node, SKOS.inScheme, scheme))
        graph.add((node, SKOS.broader, parent))
        graph.add((parent, SKOS.narrower, node))
    out = HERE / "debtags" / "vocabulary.ttl"
    out.write_text(graph.serialize(format="turtle"))
    print(f"{out}: {len(facets)} facets, {len(sample)} tags, {len(graph)} triples")


if __name__ == "__main__":
    main()
