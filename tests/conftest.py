"""Session-wide test wiring: the real components the integration tiers share."""
pytest_plugins = ["tests.fixtures.s3", "tests.fixtures.cluster", "tests.fixtures.models", "tests.fixtures.operator", "tests.fixtures.node"]
