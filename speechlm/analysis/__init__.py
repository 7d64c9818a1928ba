"""Analyses of trained models (``speechlm analyze``)."""
