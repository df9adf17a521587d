"""Errors of samples, importable without the training stack (command-line errors answer before torch loads)."""

from __future__ import annotations


class SampleError(Exception):
    """A record cannot become a training sample; the message names record, source and reason."""
