//! Registry tests against the real SQLite store.
