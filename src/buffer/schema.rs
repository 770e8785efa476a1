//! The database schema and its migrations. `PRAGMA user_version` holds the number of
//! migrations applied; each migration runs once, in a transaction, in order.

use std::path::Path;

use rusqlite::Connection;

use super::BufferError;

/// Migration k brings the schema from version k to k+1. Append; never edit a released one.
const MIGRATIONS: &[&str] = &[
    // 1: tasks, the solver's attempts on them, and rejected proposals.
    "CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        task_type TEXT NOT NULL CHECK (task_type IN ('deduction', 'abduction', 'induction')),
        program TEXT NOT NULL,
        normalized TEXT NOT NULL,
        dedupe_key TEXT NOT NULL,
        examples TEXT NOT NULL,
        shown INTEGER NOT NULL,
        message TEXT,
        step INTEGER NOT NULL,
        origin TEXT NOT NULL CHECK (origin IN ('seed', 'proposer')),
        parents TEXT NOT NULL DEFAULT '[]',
        created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
        UNIQUE (task_type, dedupe_key)
    );
    CREATE INDEX tasks_by_type_step ON tasks (task_type, step);
    CREATE TABLE attempts (
        task_id INTEGER NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
        step INTEGER NOT NULL,
        samples INTEGER NOT NULL CHECK (samples > 0),
        successes INTEGER NOT NULL CHECK (successes BETWEEN 0 AND samples)
    );
    CREATE INDEX attempts_by_task ON attempts (task_id);
    CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        step INTEGER NOT NULL,
        task_type TEXT NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL,
        completion TEXT NOT NULL
    );
    CREATE INDEX rejections_by_step ON rejections (step);",
    // 2: each self-play step's metrics, as JSON, beside the tasks it produced.
    "CREATE TABLE metrics (
        step INTEGER PRIMARY KEY,
        json TEXT NOT NULL
    );",
];

/// The schema version this build writes.
pub const VERSION: i64 = MIGRATIONS.len() as i64;

pub fn migrate(conn: &Connection, path: &Path) -> Result<(), BufferError> {
    let err = |source| BufferError::Sqlite {
        path: path.to_owned(),
        source,
    };
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if found > VERSION {
        return Err(BufferError::TooNew {
            path: path.to_owned(),
            found,
            known: VERSION,
        });
    }
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.unchecked_transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        tx.execute_batch(&format!("PRAGMA user_version = {}", version + 1))
            .map_err(err)?;
        tx.commit().map_err(err)?;
    }
    Ok(())
}
