"""The warehouse: settings, the embedded PostgreSQL and the application's migrations."""
