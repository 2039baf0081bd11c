"""Root conftest: registers the circuit-claims plugin (fixtures/plugin.py)."""

pytest_plugins = ["fixtures.plugin", "fixtures.claims_plugin"]
