"""The local stack: ``python -m devstack`` (what ``make dev`` runs) and the test fixtures."""
