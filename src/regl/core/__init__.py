"""Plumbing every stage shares: atomic writes, the one error type, params, seeding, devices, resumable state."""
