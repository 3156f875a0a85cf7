//! The schema migrations of each backend: `migrations/<backend>/NNNN_name.sql`, embedded
//! and applied in order at open, each recorded in the `schema_version` table.

/// One embedded migration file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Migration {
    /// `NNNN` of the file name; versions count up from 1 with no gap.
    pub(crate) version: i64,
    /// `name` of the file name.
    pub(crate) name: &'static str,
    /// The file's SQL, run in one transaction.
    pub(crate) sql: &'static str,
}

/// SQLite's migrations, in order.
pub(crate) const SQLITE: &[Migration] = &[
    Migration { version: 1, name: "telemetry", sql: include_str!("../migrations/sqlite/0001_telemetry.sql") },
    Migration { version: 2, name: "registry", sql: include_str!("../migrations/sqlite/0002_registry.sql") },
    Migration { version: 3, name: "commands", sql: include_str!("../migrations/sqlite/0003_commands.sql") },
    Migration { version: 4, name: "shadows", sql: include_str!("../migrations/sqlite/0004_shadows.sql") },
    Migration { version: 5, name: "outbox", sql: include_str!("../migrations/sqlite/0005_outbox.sql") },
    Migration {
        version: 6,
        name: "mqtt_sessions",
        sql: include_str!("../migrations/sqlite/0006_mqtt_sessions.sql"),
    },
];

/// PostgreSQL's migrations, in order.
pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "telemetry",
        sql: include_str!("../migrations/postgres/0001_telemetry.sql"),
    },
    Migration { version: 2, name: "registry", sql: include_str!("../migrations/postgres/0002_registry.sql") },
    Migration { version: 3, name: "commands", sql: include_str!("../migrations/postgres/0003_commands.sql") },
    Migration { version: 4, name: "shadows", sql: include_str!("../migrations/postgres/0004_shadows.sql") },
    Migration { version: 5, name: "outbox", sql: include_str!("../migrations/postgres/0005_outbox.sql") },
    Migration {
        version: 6,
        name: "mqtt_sessions",
        sql: include_str!("../migrations/postgres/0006_mqtt_sessions.sql"),
    },
];

/// The statement creating the version table, the same on both backends.
pub(crate) const CREATE_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version (\
     version BIGINT PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)";

/// The migrations after `current`, or an error when the database is newer than this
/// build knows.
pub(crate) fn pending(all: &'static [Migration], current: i64) -> Result<&'static [Migration], String> {
    let known = all.last().map_or(0, |m| m.version);
    if current > known {
        return Err(format!(
            "the database schema is version {current}, newer than this telehub knows ({known}): \
             upgrade telehub"
        ));
    }
    Ok(&all[usize::try_from(current).unwrap_or(0)..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The embedded lists are exactly the files on disk, numbered 1, 2, 3… in order.
    #[test]
    fn embedded_migrations_match_the_migration_files() {
        for (dir, list) in [("sqlite", SQLITE), ("postgres", POSTGRES)] {
            let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations").join(dir);
            let mut files: Vec<_> = std::fs::read_dir(&path)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|n| n.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files.len(), list.len(), "{dir}: {files:?}");
            for (i, (file, m)) in files.iter().zip(list).enumerate() {
                assert_eq!(m.version, i as i64 + 1, "{dir}/{file}");
                assert_eq!(*file, format!("{:04}_{}.sql", m.version, m.name), "{dir}");
                assert_eq!(std::fs::read_to_string(path.join(file)).unwrap(), m.sql, "{dir}/{file}");
            }
        }
    }

    #[test]
    fn a_newer_database_is_refused() {
        assert_eq!(pending(SQLITE, 0).unwrap().len(), SQLITE.len());
        assert!(pending(SQLITE, SQLITE.len() as i64).unwrap().is_empty());
        assert!(pending(SQLITE, 99).unwrap_err().contains("newer"));
    }
}
