//! The persistent state of `ft serve`: uploaded files, fine-tuning jobs with their events and
//! checkpoints, and adapter versions, in one schema (`migrations/*.sql`, applied in order and
//! recorded in `schema_migrations`), plus the blobs beside them ([`blobs`]).
//!
//! The default backend is SQLite embedded in the state directory (`state.db`, WAL journal):
//! nothing to install. Objects are stored as their OpenAI-shaped JSON next to the columns that
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
mod objects;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use rand::Rng;
use rusqlite::Connection;

pub use adapters::AdapterVersion;
pub use blobs::{BlobWriter, Blobs, LocalBlobs};
pub use objects::{JobRow, Page, PageQuery};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database refused or failed a statement.
    #[error("state database {}: {cause}", path.display())]
    Database {
        /// The database file.
        path: PathBuf,
        /// The driver's error.
        cause: rusqlite::Error,
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
    #[error("state database {}: schema version {found} is newer than this ft knows ({known}); upgrade ft", path.display())]
    NewerSchema {
        /// The database file.
        path: PathBuf,
        /// The highest applied migration.
        found: i64,
        /// The highest migration of this build.
        known: i64,
    },
}

/// The store's result type.
pub type Result<T> = std::result::Result<T, Error>;

/// The migrations, in order: (version, SQL).
const MIGRATIONS: &[(i64, &str)] = &[(1, include_str!("../migrations/0001_initial.sql"))];

/// The state of one `ft serve` (or of several processes sharing its directory).
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    db_path: PathBuf,
    connection: Mutex<Connection>,
    blobs: LocalBlobs,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
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
    /// Opens (creating it if needed) the store in `state_dir`, applying any pending migration.
    pub fn open(state_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(state_dir).map_err(|cause| Error::Io {
            path: state_dir.to_path_buf(),
            cause,
        })?;
        let db_path = state_dir.join("state.db");
        let db_error = |cause| Error::Database {
            path: db_path.clone(),
            cause,
        };
        let connection = Connection::open(&db_path).map_err(db_error)?;
        // WAL: readers do not block the writer; a crash loses no committed transaction.
        // busy_timeout: another process holding the write lock makes us wait, not fail.
        connection
            .execute_batch(
                "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; \
                 PRAGMA foreign_keys = ON; PRAGMA busy_timeout = 10000;",
            )
            .map_err(db_error)?;
        let store = Self {
            root: state_dir.to_path_buf(),
            blobs: LocalBlobs::new(state_dir.join("blobs")),
            db_path,
            connection: Mutex::new(connection),
        };
        store.migrate()?;
        Ok(store)
    }

    fn migrate(&self) -> Result<()> {
        let mut connection = self.lock();
        let path = self.db_path.clone();
        let db_error = |cause| Error::Database {
            path: path.clone(),
            cause,
        };
        connection
            .execute_batch(
                "CREATE TABLE IF NOT EXISTS schema_migrations \
                 (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
            )
            .map_err(db_error)?;
        let applied: i64 = connection
            .query_row(
                "SELECT COALESCE(MAX(version), 0) FROM schema_migrations",
                [],
                |r| r.get(0),
            )
            .map_err(db_error)?;
        let known = MIGRATIONS.last().map_or(0, |m| m.0);
        if applied > known {
            return Err(Error::NewerSchema {
                path,
                found: applied,
                known,
            });
        }
        for (version, sql) in MIGRATIONS.iter().filter(|m| m.0 > applied) {
            // Each migration and its record commit together, or not at all.
            let tx = connection.transaction().map_err(db_error)?;
            tx.execute_batch(sql).map_err(db_error)?;
            tx.execute(
                "INSERT INTO schema_migrations (version, applied_at) VALUES (?1, ?2)",
                (version, unix_now()),
            )
            .map_err(db_error)?;
            tx.commit().map_err(db_error)?;
        }
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // Every write is one statement or one transaction, so a panic elsewhere cannot leave
        // the connection mid-update; a poisoned lock is safe to keep using.
        self.connection.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn db_error(&self, cause: rusqlite::Error) -> Error {
        Error::Database {
            path: self.db_path.clone(),
            cause,
        }
    }

    /// The state directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The blob storage under the state directory.
    pub fn blobs(&self) -> &LocalBlobs {
        &self.blobs
    }

    /// The schema version applied.
    pub fn schema_version(&self) -> Result<i64> {
        self.lock()
            .query_row("SELECT MAX(version) FROM schema_migrations", [], |r| {
                r.get(0)
            })
            .map_err(|e| self.db_error(e))
    }
}

fn parse_object(id: &str, text: &str) -> Result<serde_json::Value> {
    serde_json::from_str(text).map_err(|cause| Error::Corrupt {
        id: id.to_string(),
        cause,
    })
}
