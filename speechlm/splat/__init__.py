"""SPLAT helpers that are not fairseq components: the language module (BERT loading, MLM adaptation),
BERTScore-style idf and the representation-geometry analysis (the SLU corpora are in speechlm.corpora.slu)."""
