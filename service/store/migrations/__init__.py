"""Alembic migrations of the store (run from code by ``service.store.migrate``)."""
