//! The persistent state of `ft serve`: uploaded files, fine-tuning jobs with their events and
//! checkpoints, and adapter versions, in one schema (`migrations/*.sql`, applied in order and
//! recorded in `schema_migrations`), plus the blobs beside them ([`blobs`]).
//!
//! The default backend is SQLite embedded in the state directory (`state.db`, WAL journal):
//! nothing to install. [`Store::connect`] with a `postgres://` URL keeps the rows in
//! PostgreSQL instead, so processes on several machines share them (workers claim jobs with
//! `FOR UPDATE SKIP LOCKED`). Objects are stored as their OpenAI-shaped JSON next to the columns that
//! queries filter on, so the API returns what was stored without a mapping layer.
//!
//! ```no_run
//! # fn main() -> Result<(), ft_store::Error> {
//! let store = ft_store::Store::open("state".as_ref())?;
//! let page = store.list_jobs(&ft_store::PageQuery { after: None, limit: 20 })?;
//! println!("{} jobs", page.items.len());
//! # Ok(()) }
//! ```

pub mod adapters;
pub mod blobs;
pub mod closed_loop;
mod db;
mod objects;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;

use db::{Database, DbResult, Dialect, Postgres};

pub use adapters::AdapterVersion;
pub use blobs::{BlobWriter, Blobs, LocalBlobs};
pub use closed_loop::{
    Correction, FeedbackRow, FeedbackTotal, LoggedRequest, RequestLogRow, Traffic, VersionStats,
};
pub use objects::{JobRow, Page, PageQuery};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("state database {location}: {cause}")]
    Database {
        /// The database file, or its URL without the password.
        location: String,
        /// The driver's error.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A blob or directory could not be read or written.
    #[error("{}: {cause}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        cause: std::io::Error,
    },
    /// A stored object is not the JSON it should be (the database was edited by hand).
    #[error("state database: row {id} holds invalid JSON: {cause}")]
    Corrupt {
        /// The row's id.
        id: String,
        /// The parser's error.
        cause: serde_json::Error,
    },
    /// The database was written by a newer `ft` (a migration this build does not know).
    #[error("state database {location}: schema version {found} is newer than this ft knows ({known}); upgrade ft")]
    NewerSchema {
        /// The database file or URL.
        location: String,
        /// The highest applied migration.
        found: i64,
        /// The highest migration of this build.
        known: i64,
    },
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The migrations, in order: (version, SQLite's SQL, PostgreSQL's SQL of the same schema).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        include_str!("../migrations/sqlite/0001_initial.sql"),
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        include_str!("../migrations/sqlite/0002_closed_loop.sql"),
        include_str!("../migrations/postgres/0002_closed_loop.sql"),
    ),
];

/// Any key: the PostgreSQL advisory lock that serialises migrations between processes.
const MIGRATION_LOCK: i64 = 0x0066_7473_746f_7265; // "ftstore"

/// The state of one `ft serve`, or of several processes sharing one PostgreSQL database and
/// one state directory.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    location: String,
    database: Mutex<Database>,
    blobs: LocalBlobs,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Milliseconds since the Unix epoch.
pub fn unix_now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A new id: `prefix` and 24 random alphanumerics (OpenAI's ids look the same).
pub fn new_id(prefix: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..24)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{prefix}{tail}")
}

impl Store {
    /// Opens (creating it if needed) the SQLite store in `state_dir` (`state.db`), applying
    /// any pending migration.
    pub fn open(state_dir: &Path) -> Result<Self> {
        Self::connect(state_dir, None)
    }

    /// Opens the store: its rows in the PostgreSQL database at `database_url` when given
    /// (shared by every process given the same URL), else in SQLite in `state_dir`; its blobs
    /// under `state_dir` either way. Applies any pending migration.
    pub fn connect(state_dir: &Path, database_url: Option<&str>) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|cause| Error::Io {
            path: state_dir.to_path_buf(),
            cause,
        })?;
        let (location, database) = match database_url {
            Some(url) => {
                let location = db::redacted(url);
                let database = Postgres::connect(url).map(Database::Postgres);
                (location, database)
            }
            None => {
                let path = state_dir.join("state.db");
                (path.display().to_string(), open_sqlite(&path))
            }
        };
        let database = database.map_err(|cause| Error::Database {
            location: location.clone(),
            cause,
        })?;
        let store = Self {
            root: state_dir.to_path_buf(),
            blobs: LocalBlobs::new(state_dir.join("blobs")),
            location,
            database: Mutex::new(database),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        let applied = self.db(|db| {
            db.batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version BIGINT PRIMARY KEY, applied_at BIGINT NOT NULL)",
            )?;
            applied_version(db)
        })?;
        if applied > known {
            return Err(Error::NewerSchema {
                location: self.location.clone(),
                found: applied,
                known,
            });
        }
        self.db(|db| {
            // Each migration and its record commit together, or not at all; another process
            // migrating at the same time waits (SQLite's write lock, PostgreSQL's advisory
            // lock) and then finds the work done.
            db.transaction(|db| {
                if db.dialect() == Dialect::Postgres {
                    db.execute("SELECT pg_advisory_xact_lock(?1)", &[MIGRATION_LOCK.into()])?;
                }
                let applied = applied_version(db)?;
                for (version, sqlite, postgres) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
                    db.batch(match db.dialect() {
                        Dialect::Sqlite => sqlite,
                        Dialect::Postgres => postgres,
                    })?;
                    db.execute(
                        "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                        &[(*version).into(), unix_now().into()],
                    )?;
                }
                Ok(())
            })
        })
    }

    /// Runs `work` on the database, reporting a failure with the database's location.
    fn db<T>(&self, work: impl FnOnce(&mut Database) -> DbResult<T>) -> Result<T> {
        // Every write is one statement or one transaction, so a panic elsewhere cannot leave
        // the connection mid-update; a poisoned lock is safe to keep using.
        let mut database = self.database.lock().unwrap_or_else(|e| e.into_inner());
        work(&mut database).map_err(|cause| Error::Database {
            location: self.location.clone(),
            cause,
        })
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob storage under the state directory.
    pub fn blobs(&self) -> &LocalBlobs {
        &self.blobs
    }

    /// Which database holds the rows: its file, or its URL without the password.
    pub fn location(&self) -> &str {
        &self.location
    }

    /// The schema version applied.
    pub fn schema_version(&self) -> Result<i64> {
        self.db(applied_version)
    }
}

fn applied_version(db: &mut Database) -> DbResult<i64> {
    Ok(db
        .query_one(
            "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
            &[],
        )?
        .map_or(0, |row| row.int(0)))
}

fn open_sqlite(path: &Path) -> DbResult<Database> {
    let connection = rusqlite::Connection::open(path)?;
    // WAL: readers do not block the writer; a crash loses no committed transaction.
    // busy_timeout: another process holding the write lock makes us wait, not fail.
    connection.execute_batch(
        "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
         PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
    )?;
    Ok(Database::Sqlite(connection))
}

fn parse_object(id: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|cause| Error::Corrupt {
        id: id.to_string(),
        cause,
    })
}
