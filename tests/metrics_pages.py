"""Reading a /metrics page in tests: it must parse as Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def unlabelled_samples(text: str) -> dict[str, float]:
    """Every unlabelled sample of a /metrics page (it parses), by name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }
