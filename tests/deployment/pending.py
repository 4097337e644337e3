"""Names the deployment files use before their code exists: issue 15 (the Spark search service)
is being written beside issue 18. Kept in this one place; the lead removes them at merge (the
tests fail once a name listed here exists, to say so)."""

from __future__ import annotations

# added by issue 15
ISSUE_15_VARIABLES = frozenset(
    {
        "LOOKALIKE_SPARK_SERVE_METRICS_PORT",
        "LOOKALIKE_SPARK_SERVE_METRICS_HOST",
    }
)
# added by issue 15
ISSUE_15_COMMANDS = frozenset({"spark-serve"})
