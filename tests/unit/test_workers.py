"""The supervisor's merge of its workers' metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from processors.workers import merge_metrics

WORKER = """# HELP processors_app_records_processed_total Records the app processed successfully.
# TYPE processors_app_records_processed_total counter
processors_app_records_processed_total{app="payments"} 7.0
# HELP processors_ready 1 when the process is ready (see /readyz).
# TYPE processors_ready gauge
processors_ready 1.0
"""


def test_each_sample_is_labelled_with_its_worker_and_help_appears_once() -> None:
    merged = merge_metrics([(0, WORKER), (1, WORKER.replace("7.0", "5.0"))])
    assert merged.count("# HELP processors_ready") == 1
    samples = {
        (s.name, s.labels.get("worker"), s.labels.get("app")): s.value
        for family in text_string_to_metric_families(merged)
        for s in family.samples
    }
    assert samples[("processors_app_records_processed_total", "0", "payments")] == 7.0
    assert samples[("processors_app_records_processed_total", "1", "payments")] == 5.0
    assert samples[("processors_ready", "0", None)] == 1.0
    assert samples[("processors_ready", "1", None)] == 1.0


def test_a_worker_that_did_not_answer_is_left_out() -> None:
    merged = merge_metrics([(1, WORKER)])
    assert 'worker="1"' in merged
    assert 'worker="0"' not in merged
