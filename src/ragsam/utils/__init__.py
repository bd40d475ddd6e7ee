"""Small shared helpers (atomic writes, seeding, paths)."""
