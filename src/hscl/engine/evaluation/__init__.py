"""Evaluation of frozen features (linear and kNN probes, single- and multi-label) and the reports written from
the results (tables, figures, the HTML page)."""

from hscl.engine.evaluation.multilabel import linear_probe_multilabel, mean_average_precision
from hscl.engine.evaluation.probes import evaluate_task, extract_features, knn_accuracy, linear_probe
from hscl.engine.evaluation.report import html_report, markdown_table, write_table

__all__ = [
    "evaluate_task",
    "extract_features",
    "html_report",
    "knn_accuracy",
    "linear_probe",
    "linear_probe_multilabel",
    "markdown_table",
    "mean_average_precision",
    "write_table",
]
