"""deploy/alerts.yml loads, every rule is complete, and every expression reads only
series that GET /metrics exports (tests/integration/test_metrics.py checks the list
against a real scrape)."""

import re
from pathlib import Path

import yaml

from app.web.metrics import EXPORTED

RULES = Path(__file__).resolve().parents[2] / "deploy" / "alerts.yml"
# PromQL words that are not series: aggregation modifiers, set and comparison operators.
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or"}
KEYWORDS |= {"unless", "bool", "offset"}


def rules() -> list[dict]:
    document = yaml.safe_load(RULES.read_text())
    return [rule for group in document["groups"] for rule in group["rules"]]


def series(expr: str) -> set[str]:
    """The series names an expression reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)  # grouping labels
    found = set()
    for word in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):  # not 1e3's e3
        is_call = expr[word.end() :].lstrip().startswith("(")
        if not is_call and word.group() not in KEYWORDS:
            found.add(word.group())
    return found


def test_the_rules_file_loads_and_every_rule_is_complete():
    loaded = rules()
    assert len(loaded) >= 8
    names = [rule["alert"] for rule in loaded]
    assert len(names) == len(set(names))
    for rule in loaded:
        assert rule["expr"].strip(), rule["alert"]
        assert re.fullmatch(r"\d+[smh]", rule["for"]), rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_expression_reads_only_exported_series():
    used = set()
    for rule in rules():
        found = series(rule["expr"])
        assert found, rule["alert"]
        assert found <= EXPORTED, (rule["alert"], found - EXPORTED)
        used |= found
    # Latency, errors, dead letters, queue lag, pool waits and job failures each have a rule.
    for needed in (
        "medbook_http_request_duration_seconds_bucket",
        "medbook_http_requests_total",
        "medbook_notifications_dead",
        "medbook_queue_jobs",
        "medbook_db_pool_wait_seconds_bucket",
        "medbook_db_pool_timeouts_total",
        "medbook_job_failures_total",
        "medbook_job_duration_seconds_bucket",
    ):
        assert needed in used


def test_the_series_parser_sees_through_functions_and_labels():
    expr = 'histogram_quantile(0.99, sum by (le) (rate(x_bucket{route="/a"}[5m]))) > 0.015'
    assert series(expr) == {"x_bucket"}
    assert series("sum(a_total) / sum(b) > 1e3") == {"a_total", "b"}
