"""circuit: the library behind circuit-claims (no pytest in here)."""
