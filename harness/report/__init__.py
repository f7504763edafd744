"""Reporting: the typed run record (:mod:`.schema`), records on disk (:mod:`.records`) and the
table views rendered from them (:mod:`.tables` and :mod:`.views`, one module per view).

May import: :mod:`harness.core`. Nothing else of ddbench: a table never trains a network or
imports an analysis; it reads record sections only.
"""

from harness.report.records import (iter_eval_records, iter_records, parse_record, read_record, record_stem,
                                    write_record)
from harness.report.schema import EVAL_KIND, RECORD_KIND, SCHEMA_VERSION, EvalRecord, RunRecord
from harness.report.tables import FORMATS, VIEWS, View, register_view, render_view, view_names

__all__ = ["iter_eval_records", "iter_records", "parse_record", "read_record", "record_stem", "write_record",
           "EVAL_KIND", "RECORD_KIND", "SCHEMA_VERSION", "EvalRecord", "RunRecord", "FORMATS", "VIEWS", "View", "register_view", "render_view", "view_names"]
