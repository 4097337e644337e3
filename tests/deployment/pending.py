"""Names the deployment files use before their code exists (none at present). Kept in this one
place; the tests fail once a name listed here exists, to say so."""

from __future__ import annotations

ISSUE_15_VARIABLES: frozenset[str] = frozenset()
ISSUE_15_COMMANDS: frozenset[str] = frozenset()
