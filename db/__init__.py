"""Database: models, engines and sessions, migrations and seed data."""
