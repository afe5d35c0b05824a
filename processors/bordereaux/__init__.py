"""Reinsurance bordereaux and regulatory day files (docs/bordereaux.md).

Pure code: :mod:`~processors.bordereaux.treaties` (the treaty book),
:mod:`~processors.bordereaux.rows` (row types and their wire form),
:mod:`~processors.bordereaux.ledger` (per by-policy partition: terms, rows, closing),
:mod:`~processors.bordereaux.assembler` (complete periods into reports) and
:mod:`~processors.bordereaux.reports` (report and file bytes).  None of them imports Kafka.
"""
