"""Applying validated events: pure rules (``rules``), outcomes, and the transactional engine."""
