//! The curriculum buffer: every valid task of a run in one SQLite database
//! (`runs/NAME/buffer.sqlite`, WAL mode), with its lineage and its solve-rate history.
//! Proposer prompts draw reference tasks from it and solver batches draw tasks to solve.
//! Durable, queryable from outside (`sqlite3 buffer.sqlite`), and safe to read while a run writes.

mod sample;
mod schema;
pub mod seed;
mod stats;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

pub use sample::{References, Weighting};
pub use stats::{Stats, TypeStats};

use crate::tasks::validate::Rejection;
use crate::tasks::{Example, Task, TaskType};

/// What can go wrong with the buffer's database.
#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("no task buffer at {0}: is this a run directory? (a run creates buffer.sqlite when it starts)")]
    Missing(PathBuf),
    #[error("task buffer {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("task buffer {path} has schema version {found}, newer than this azr understands ({known}): upgrade azr")]
    TooNew {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("cannot create the run directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("task buffer {path}: row {id} is damaged: {detail}")]
    Corrupt {
        path: PathBuf,
        id: i64,
        detail: String,
    },
}

/// Where a task came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// Put in before training (the identity seeds, or base-model proposals).
    Seed,
    /// Proposed by the model during self-play.
    Proposer,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Seed => "seed",
            Origin::Proposer => "proposer",
        }
    }
}

/// A task as stored, with its bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredTask {
    pub id: i64,
    #[serde(flatten)]
    pub task: Task,
    /// The self-play step that produced it (0 for seeds).
    pub step: i64,
    pub origin: Origin,
    /// Tasks it was derived from: the references its proposer saw, or its program's source.
    pub parents: Vec<i64>,
    /// Solver samples and successes over every time the solver met it.
    pub samples: i64,
    pub successes: i64,
}

impl StoredTask {
    /// Mean solver success over all attempts; None before the first.
    pub fn solve_rate(&self) -> Option<f64> {
        (self.samples > 0).then(|| self.successes as f64 / self.samples as f64)
    }
}

/// Result of an insert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    New(i64),
    /// The same task (same type and dedupe key) is already stored under this id.
    Duplicate(i64),
}

/// One attempt record: the solver met the task at `step` and solved `successes` of `samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Attempt {
    pub step: i64,
    pub samples: i64,
    pub successes: i64,
}

/// An open task buffer.
pub struct Buffer {
    conn: Connection,
    path: PathBuf,
}

const TASK_COLUMNS: &str = "t.id, t.task_type, t.program, t.normalized, t.examples, t.shown, \
    t.message, t.step, t.origin, t.parents, \
    COALESCE((SELECT SUM(samples) FROM attempts a WHERE a.task_id = t.id), 0), \
    COALESCE((SELECT SUM(successes) FROM attempts a WHERE a.task_id = t.id), 0)";

impl Buffer {
    /// Opens the database at `path`, creating and migrating it as needed.
    pub fn open(path: &Path) -> Result<Self, BufferError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| BufferError::Io {
                path: dir.to_owned(),
                source,
            })?;
        }
        let conn = Connection::open(path).map_err(|source| BufferError::Sqlite {
            path: path.to_owned(),
            source,
        })?;
        let buffer = Self {
            conn,
            path: path.to_owned(),
        };
        buffer.configure()?;
        schema::migrate(&buffer.conn, path)?;
        Ok(buffer)
    }

    /// Opens an existing database; a missing file is an error rather than a new buffer.
    pub fn open_existing(path: &Path) -> Result<Self, BufferError> {
        if !path.is_file() {
            return Err(BufferError::Missing(path.to_owned()));
        }
        Self::open(path)
    }

    /// Writes a consistent copy of the buffer to `path` (a new file), also while a run is
    /// writing to it.
    pub fn copy_to(&self, path: &Path) -> Result<(), BufferError> {
        self.conn
            .execute("VACUUM INTO ?1", [path.to_string_lossy()])
            .map(|_| ())
            .map_err(|e| self.err(e))
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn configure(&self) -> Result<(), BufferError> {
        self.conn
            .busy_timeout(Duration::from_secs(10))
            .map_err(|e| self.err(e))?;
        self.conn
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; PRAGMA synchronous = NORMAL;",
            )
            .map_err(|e| self.err(e))
    }

    fn err(&self, source: rusqlite::Error) -> BufferError {
        BufferError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Stores a task unless an equal one (same type and dedupe key) is already there.
    pub fn insert(
        &self,
        task: &Task,
        step: i64,
        origin: Origin,
        parents: &[i64],
    ) -> Result<Inserted, BufferError> {
        let key = task.dedupe_key();
        let existing = self
            .conn
            .query_row(
                "SELECT id FROM tasks WHERE task_type = ?1 AND dedupe_key = ?2",
                params![task.task_type.as_str(), key],
                |row| row.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        if let Some(id) = existing {
            return Ok(Inserted::Duplicate(id));
        }
        self.conn
            .execute(
                "INSERT INTO tasks (task_type, program, normalized, dedupe_key, examples, shown, \
                 message, step, origin, parents) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![
                    task.task_type.as_str(),
                    task.program,
                    task.normalized,
                    key,
                    serde_json::to_string(&task.examples).expect("examples serialise"),
                    task.shown as i64,
                    task.message,
                    step,
                    origin.as_str(),
                    serde_json::to_string(parents).expect("ids serialise"),
                ],
            )
            .map_err(|e| self.err(e))?;
        Ok(Inserted::New(self.conn.last_insert_rowid()))
    }

    /// Records that the solver met task `id` at `step` and solved `successes` of `samples`.
    pub fn record_attempt(&self, id: i64, attempt: Attempt) -> Result<(), BufferError> {
        self.conn
            .execute(
                "INSERT INTO attempts (task_id, step, samples, successes) VALUES (?1, ?2, ?3, ?4)",
                params![id, attempt.step, attempt.samples, attempt.successes],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Records why a proposal at `step` was rejected, with the completion that proposed it.
    pub fn record_rejection(
        &self,
        step: i64,
        task_type: TaskType,
        rejection: &Rejection,
        completion: &str,
    ) -> Result<(), BufferError> {
        self.conn
            .execute(
                "INSERT INTO rejections (step, task_type, kind, detail, completion) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![step, task_type.as_str(), rejection.kind(), rejection.to_string(), completion],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// Stores a step's metrics (queryable with SQLite's JSON functions), replacing any earlier
    /// row for that step.
    pub fn record_metrics(
        &self,
        step: i64,
        metrics: &serde_json::Value,
    ) -> Result<(), BufferError> {
        self.conn
            .execute(
                "INSERT OR REPLACE INTO metrics (step, json) VALUES (?1, ?2)",
                params![step, metrics.to_string()],
            )
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    /// The stored metrics of every step, in step order.
    pub fn metrics(&self) -> Result<Vec<(i64, serde_json::Value)>, BufferError> {
        let mut stmt = self
            .conn
            .prepare("SELECT step, json FROM metrics ORDER BY step")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (step, json) = row.map_err(|e| self.err(e))?;
            let value = serde_json::from_str(&json).map_err(|e| BufferError::Corrupt {
                path: self.path.clone(),
                id: step,
                detail: format!("metrics: {e}"),
            })?;
            out.push((step, value));
        }
        Ok(out)
    }

    /// Drops everything written after `step`: a resumed run continues from its last
    /// checkpoint, and rows of steps after it belong to work that is being redone.
    pub fn truncate_after(&self, step: i64) -> Result<(), BufferError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        for table in ["attempts", "rejections", "tasks", "metrics"] {
            tx.execute(&format!("DELETE FROM {table} WHERE step > ?1"), [step])
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// The task with this id.
    pub fn get(&self, id: i64) -> Result<Option<StoredTask>, BufferError> {
        let sql = format!("SELECT {TASK_COLUMNS} FROM tasks t WHERE t.id = ?1");
        self.query_tasks(&sql, params![id]).map(|mut v| v.pop())
    }

    /// Every task of a type (all types when None), in id order.
    pub fn tasks(&self, task_type: Option<TaskType>) -> Result<Vec<StoredTask>, BufferError> {
        let sql = format!(
            "SELECT {TASK_COLUMNS} FROM tasks t WHERE ?1 IS NULL OR t.task_type = ?1 ORDER BY t.id"
        );
        self.query_tasks(&sql, params![task_type.map(TaskType::as_str)])
    }

    /// Number of tasks of a type.
    pub fn count(&self, task_type: TaskType) -> Result<usize, BufferError> {
        self.conn
            .query_row(
                "SELECT COUNT(*) FROM tasks WHERE task_type = ?1",
                [task_type.as_str()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n as usize)
            .map_err(|e| self.err(e))
    }

    /// The attempts on a task, oldest first.
    pub fn attempts(&self, id: i64) -> Result<Vec<Attempt>, BufferError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT step, samples, successes FROM attempts WHERE task_id = ?1 ORDER BY rowid",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([id], |r| {
                Ok(Attempt {
                    step: r.get(0)?,
                    samples: r.get(1)?,
                    successes: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The task and its ancestors, breadth first, each once.
    pub fn lineage(&self, id: i64) -> Result<Vec<StoredTask>, BufferError> {
        let mut out: Vec<StoredTask> = Vec::new();
        let mut queue = std::collections::VecDeque::from([id]);
        while let Some(next) = queue.pop_front() {
            if out.iter().any(|t| t.id == next) {
                continue;
            }
            if let Some(task) = self.get(next)? {
                queue.extend(task.parents.iter().copied());
                out.push(task);
            }
        }
        Ok(out)
    }

    fn query_tasks(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<StoredTask>, BufferError> {
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params, |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                    r.get::<_, Option<String>>(6)?,
                    r.get::<_, i64>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, i64>(10)?,
                    r.get::<_, i64>(11)?,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut tasks = Vec::new();
        for row in rows {
            let (
                id,
                ty,
                program,
                normalized,
                examples,
                shown,
                message,
                step,
                origin,
                parents,
                samples,
                successes,
            ) = row.map_err(|e| self.err(e))?;
            let corrupt = |detail: String| BufferError::Corrupt {
                path: self.path.clone(),
                id,
                detail,
            };
            let examples: Vec<Example> =
                serde_json::from_str(&examples).map_err(|e| corrupt(format!("examples: {e}")))?;
            tasks.push(StoredTask {
                id,
                task: Task {
                    task_type: ty.parse().map_err(corrupt)?,
                    program,
                    normalized,
                    examples,
                    shown: shown as usize,
                    message,
                },
                step,
                origin: if origin == "seed" {
                    Origin::Seed
                } else {
                    Origin::Proposer
                },
                parents: serde_json::from_str(&parents)
                    .map_err(|e| corrupt(format!("parents: {e}")))?,
                samples,
                successes,
            });
        }
        Ok(tasks)
    }
}

#[cfg(test)]
mod tests;
