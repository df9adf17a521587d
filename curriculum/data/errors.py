"""Errors of data files, records and samples, importable without the training stack (command-line errors answer before torch loads)."""

from __future__ import annotations


class SampleError(Exception):
    """A record cannot become a training sample; the message names record, source and reason."""


class DataFileError(ValueError):
    """A data file that cannot give records, with a one-line reason naming the file."""


class InvalidRecordError(ValueError):
    """A record that cannot be used, with a one-line reason (and the record's id when known)."""

    def __init__(self, reason: str, record_id: str | None = None):
        super().__init__(reason)
        self.reason = reason
        self.record_id = record_id
