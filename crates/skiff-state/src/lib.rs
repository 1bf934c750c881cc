//! Skiff's durable state: one SQLite database under `$SKIFF_ROOT`.
//!
//! Every write is a single transaction, so a crash leaves either the old or
//! the new row, never half of one. Several skiff processes (CLI invocations,
//! container monitors) share the file; WAL mode plus a busy timeout lets
//! them do so without "database is locked" errors under normal contention.
//!
//! `containers` holds what `skiff run` started; `services` holds what the
//! serving daemon routes to (services, their revisions and traffic splits).

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

mod containers;
mod services;

pub use containers::{ContainerRecord, Status, OWNER_SERVE};
pub use services::{RevisionRecord, ServiceRecord};

/// Milliseconds since the Unix epoch: how every timestamp is stored.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("state database: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error("a container named {0:?} already exists")]
    NameInUse(String),
    #[error("state database row for container {id}: field {field}: {why}")]
    Corrupt {
        id: String,
        field: &'static str,
        why: String,
    },
    #[error("{0}")]
    Invalid(#[from] skiff_core::SpecError),
    #[error("no service named {0:?}")]
    NoSuchService(String),
    #[error("no revision named {0:?}")]
    NoSuchRevision(String),
    #[error("revision {revision} failed ({reason}); it cannot take traffic")]
    RevisionFailed { revision: String, reason: String },
    #[error("state database row for {what} {key}: field {field}: {why}")]
    CorruptService {
        what: &'static str,
        key: String,
        field: &'static str,
        why: String,
    },
}

/// Migrations, applied in order; `PRAGMA user_version` records how many ran.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE containers (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    image       TEXT NOT NULL,
    image_id    TEXT NOT NULL,
    command     TEXT NOT NULL,          -- JSON array, for display
    created_ms  INTEGER NOT NULL,
    status      TEXT NOT NULL,          -- created | running | exited
    pid         INTEGER,                -- the container's init, while running
    monitor_pid INTEGER,                -- the skiff process that waits on it
    exit_code   INTEGER,
    finished_ms INTEGER,
    ip          TEXT,
    ports       TEXT NOT NULL,          -- JSON array of PortMapping
    auto_remove INTEGER NOT NULL,
    runtime     TEXT NOT NULL
);
"#,
    // The serving layer. Revisions are immutable apart from their status;
    // deleting a service takes its revisions and traffic with it (foreign
    // keys are on for every connection, see try_open).
    r#"
CREATE TABLE services (
    name        TEXT PRIMARY KEY,
    created_ms  INTEGER NOT NULL,
    generation  INTEGER NOT NULL        -- bumped on every change below, so a
                                        -- watcher can spot changes cheaply
);
CREATE TABLE revisions (
    name          TEXT PRIMARY KEY,     -- SERVICE-NNNNN
    service       TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    number        INTEGER NOT NULL,
    spec          TEXT NOT NULL,        -- JSON ServiceSpec
    created_ms    INTEGER NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    status_reason TEXT,
    UNIQUE (service, number)
);
CREATE TABLE traffic (
    service  TEXT NOT NULL REFERENCES services(name) ON DELETE CASCADE,
    revision TEXT NOT NULL REFERENCES revisions(name) ON DELETE CASCADE,
    percent  INTEGER NOT NULL CHECK (percent BETWEEN 0 AND 100),
    tag      TEXT,
    PRIMARY KEY (service, revision)
);
"#,
    // Who started a container: NULL for `skiff run`, 'serve' for the
    // serving daemon's instances (which a restarted daemon cleans up).
    r#"
ALTER TABLE containers ADD COLUMN owner TEXT;
"#,
    // Where the container's output goes when not in its own directory:
    // a service instance's log outlives the instance (NULL: the default).
    r#"
ALTER TABLE containers ADD COLUMN log_path TEXT;
"#,
];

pub struct State {
    conn: Connection,
}

impl State {
    pub fn open(path: &Path) -> Result<State, StateError> {
        let open_err = |source| StateError::Open {
            path: path.display().to_string(),
            source,
        };
        // Switching a new database to WAL (and rebuilding a WAL's index)
        // takes an exclusive lock that SQLite reports as SQLITE_BUSY at once,
        // without the busy handler; two CLIs starting together hit it.
        // The whole setup is retried for as long as the busy timeout.
        let deadline = std::time::Instant::now() + BUSY_TIMEOUT;
        loop {
            match Self::try_open(path) {
                Err(e) if is_busy(&e) && std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => return other.map_err(open_err),
            }
        }
    }

    fn try_open(path: &Path) -> rusqlite::Result<State> {
        let mut conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Off by default in SQLite, per connection; the services tables
        // rely on it for ON DELETE CASCADE.
        conn.pragma_update(None, "foreign_keys", true)?;
        // Every CLI invocation is a short-lived connection. Checkpointing at
        // each close empties the WAL, so the next process's first commit
        // restarts it, which syncs its header (3 ms here, on the `skiff run`
        // path). Instead the WAL is left for the next process; but the first
        // connection to open it must read and checksum all of it to rebuild
        // its index, so it is kept small: checkpointed every 64 pages
        // (256 KiB, a few runs' worth of writes).
        conn.set_db_config(
            rusqlite::config::DbConfig::SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE,
            true,
        )?;
        conn.pragma_update(None, "wal_autocheckpoint", 64)?;
        conn.pragma_update(None, "journal_size_limit", 256 * 1024)?;
        migrate(&mut conn)?;
        Ok(State { conn })
    }
}

const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(e, rusqlite::Error::SqliteFailure(f, _)
        if matches!(f.code, rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked))
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if version == MIGRATIONS.len() as i64 {
        return Ok(());
    }
    // IMMEDIATE: two processes opening a new database at once would both
    // read user_version 0 in a deferred transaction, and the second one's
    // upgrade to a writer fails at once with SQLITE_BUSY (no busy wait, to
    // avoid deadlock). Taking the write lock first makes the second wait.
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let applied: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(applied.max(0) as usize) {
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serialising Vec<String> / Vec<PortMapping> cannot fail.
    serde_json::to_string(v).unwrap_or_else(|_| "[]".into())
}
