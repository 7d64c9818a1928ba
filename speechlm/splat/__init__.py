"""SPLAT helpers that are not fairseq components: the language module (BERT loading, MLM adaptation),
BERTScore-style idf, the representation-geometry analysis and the synthesized mini SLU corpora."""
