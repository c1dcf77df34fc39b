"""The usage ledger: who spent what, on which model; per-token limits and budgets.

- :mod:`.rows` one row per finished request; :mod:`.windows` the fixed UTC windows;
- :mod:`.schema` the tables and migrations (SQLite and PostgreSQL);
- :mod:`.store` the database through ``twisted.enterprise.adbapi``;
- :mod:`.writer` the batched, bounded queue off the hot path;
- :mod:`.limits` rate limits and budgets per client token;
- :mod:`.query` ``GET /api/usage``;
- :mod:`.service` the ledger in the service tree (flush timer, retention, final flush).
"""
