//! The two database backends behind one small interface: statements with positional
//! parameters (`?1`, `?2`, … in the SQL; PostgreSQL's `$1` is written for it), rows of
//! integers, text and nulls, and transactions. The store's queries are written once against
//! this; only the few statements whose dialects differ (JSON updates, row locks) are chosen per
//! [`Dialect`].

use std::sync::mpsc;

use rusqlite::types::{ToSqlOutput, ValueRef};

/// A driver error, boxed: the store reports it with the database's location.
pub(crate) type DbError = Box<dyn std::error::Error + Send + Sync>;
pub(crate) type DbResult<T> = std::result::Result<T, DbError>;

/// Which SQL dialect a statement is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

/// A statement parameter (owned, so a PostgreSQL statement can run on the driver's runtime).
#[derive(Debug, Clone)]
pub(crate) enum Param {
    Int(Option<i64>),
    Text(Option<String>),
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Self::Int(Some(v))
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Self::Text(Some(v.to_string()))
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Self::Text(Some(v))
    }
}

impl From<Option<&str>> for Param {
    fn from(v: Option<&str>) -> Self {
        Self::Text(v.map(str::to_string))
    }
}

impl rusqlite::ToSql for Param {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        match self {
            Self::Int(v) => v.to_sql(),
            Self::Text(v) => v.to_sql(),
        }
    }
}

/// One column of a result row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
}

/// A result row.
#[derive(Debug, Clone)]
pub(crate) struct Row(Vec<Cell>);

impl Row {
    /// Column `i` as text ("" for null or a missing column: callers select text columns).
    pub fn text(&self, i: usize) -> String {
        match self.0.get(i) {
            Some(Cell::Text(t)) => t.clone(),
            Some(Cell::Int(n)) => n.to_string(),
            _ => String::new(),
        }
    }

    /// Column `i` as text, `None` when null.
    pub fn opt_text(&self, i: usize) -> Option<String> {
        match self.0.get(i) {
            Some(Cell::Text(t)) => Some(t.clone()),
            _ => None,
        }
    }

    /// Column `i` as an integer, `None` when null.
    pub fn opt_int(&self, i: usize) -> Option<i64> {
        match self.0.get(i) {
            Some(Cell::Int(n)) => Some(*n),
            _ => None,
        }
    }

    /// Column `i` as an integer (0 for null).
    pub fn int(&self, i: usize) -> i64 {
        match self.0.get(i) {
            Some(Cell::Int(n)) => *n,
            _ => 0,
        }
    }
}

/// An open database.
pub(crate) enum Database {
    Sqlite(rusqlite::Connection),
    Postgres(Postgres),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite(_) => "Database::Sqlite",
            Self::Postgres(_) => "Database::Postgres",
        })
    }
}

impl Database {
    pub fn dialect(&self) -> Dialect {
        match self {
            Self::Sqlite(_) => Dialect::Sqlite,
            Self::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Runs a statement; the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Param]) -> DbResult<u64> {
        match self {
            Self::Sqlite(c) => Ok(c.execute(sql, rusqlite::params_from_iter(params))? as u64),
            Self::Postgres(pg) => pg.execute(sql, params),
        }
    }

    /// Runs a query; its rows.
    pub fn query(&mut self, sql: &str, params: &[Param]) -> DbResult<Vec<Row>> {
        match self {
            Self::Sqlite(c) => {
                let mut statement = c.prepare(sql)?;
                let columns = statement.column_count();
                let mut rows = statement.query(rusqlite::params_from_iter(params))?;
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let cells = (0..columns)
                        .map(|i| sqlite_cell(row.get_ref(i)?))
                        .collect::<DbResult<_>>()?;
                    out.push(Row(cells));
                }
                Ok(out)
            }
            Self::Postgres(pg) => pg.query(sql, params),
        }
    }

    /// The first row of a query, if any.
    pub fn query_one(&mut self, sql: &str, params: &[Param]) -> DbResult<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    /// Runs several statements without parameters (a migration).
    pub fn batch(&mut self, sql: &str) -> DbResult<()> {
        match self {
            Self::Sqlite(c) => Ok(c.execute_batch(sql)?),
            Self::Postgres(pg) => pg.batch(sql.to_string()),
        }
    }

    /// Runs `body` in one transaction: committed when it returns `Ok`, rolled back otherwise.
    /// SQLite takes its write lock at the start (`IMMEDIATE`), so two processes never both
    /// read and then write the same rows.
    pub fn transaction<T>(&mut self, body: impl FnOnce(&mut Self) -> DbResult<T>) -> DbResult<T> {
        self.batch(match self.dialect() {
            Dialect::Sqlite => "BEGIN IMMEDIATE",
            Dialect::Postgres => "BEGIN",
        })?;
        match body(self) {
            Ok(value) => {
                self.batch("COMMIT")?;
                Ok(value)
            }
            Err(error) => {
                // The statement's error is the one to report; a failed rollback also ends the
                // transaction (the connection drops it).
                let _ = self.batch("ROLLBACK");
                Err(error)
            }
        }
    }
}

fn sqlite_cell(value: ValueRef<'_>) -> DbResult<Cell> {
    match value {
        ValueRef::Null => Ok(Cell::Null),
        ValueRef::Integer(n) => Ok(Cell::Int(n)),
        ValueRef::Text(t) => Ok(Cell::Text(String::from_utf8(t.to_vec())?)),
        other => Err(format!("unexpected column type {:?}", other.data_type()).into()),
    }
}

/// `?N` placeholders as PostgreSQL's `$N` (the store's SQL has no `?` anywhere else).
fn postgres_placeholders(sql: &str) -> String {
    sql.replace('?', "$")
}

/// A PostgreSQL connection driven by a runtime of its own: the store's API is synchronous and
/// is called from inside `ft serve`'s async handlers, where blocking on another runtime from
/// the caller's thread would panic. Each statement runs as a task on the driver's thread and
/// the caller waits for its answer on a channel.
pub(crate) struct Postgres {
    client: std::sync::Arc<tokio_postgres::Client>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl Postgres {
    /// Connects to `url` (`postgres://user:password@host:port/database`; no TLS yet).
    pub fn connect(url: &str) -> DbResult<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ft-store-postgres")
            .enable_all()
            .build()?;
        let url = url.to_string();
        let (client, connection) = run_on(&runtime, async move {
            Ok(tokio_postgres::connect(&url, tokio_postgres::NoTls).await?)
        })?;
        runtime.spawn(async move {
            // Ends when the server closes the connection; the next statement reports it.
            let _ = connection.await;
        });
        Ok(Self {
            client: std::sync::Arc::new(client),
            runtime: Some(runtime),
        })
    }

    fn run<T: Send + 'static>(
        &self,
        work: impl std::future::Future<Output = DbResult<T>> + Send + 'static,
    ) -> DbResult<T> {
        match &self.runtime {
            Some(runtime) => run_on(runtime, work),
            None => Err("the PostgreSQL connection is closed".into()),
        }
    }

    /// What a statement's task owns: the client, the SQL in PostgreSQL's placeholders, and
    /// the parameters.
    fn owned(&self, sql: &str, params: &[Param]) -> OwnedStatement {
        (
            self.client.clone(),
            postgres_placeholders(sql),
            params.to_vec(),
        )
    }

    fn execute(&self, sql: &str, params: &[Param]) -> DbResult<u64> {
        let (client, sql, params) = self.owned(sql, params);
        self.run(async move {
            let boxed = postgres_params(params);
            Ok(client.execute(&sql, &as_refs(&boxed)).await?)
        })
    }

    fn query(&self, sql: &str, params: &[Param]) -> DbResult<Vec<Row>> {
        let (client, sql, params) = self.owned(sql, params);
        self.run(async move {
            let boxed = postgres_params(params);
            let rows = client.query(&sql, &as_refs(&boxed)).await?;
            rows.iter().map(postgres_row).collect()
        })
    }

    fn batch(&self, sql: String) -> DbResult<()> {
        let client = self.client.clone();
        self.run(async move { Ok(client.batch_execute(&sql).await?) })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which tokio forbids inside another runtime (the server's).
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

type BoxedParam = Box<dyn tokio_postgres::types::ToSql + Sync + Send>;
type OwnedStatement = (std::sync::Arc<tokio_postgres::Client>, String, Vec<Param>);

fn postgres_params(params: Vec<Param>) -> Vec<BoxedParam> {
    params
        .into_iter()
        .map(|p| match p {
            Param::Int(v) => Box::new(v) as BoxedParam,
            Param::Text(v) => Box::new(v) as BoxedParam,
        })
        .collect()
}

fn as_refs(boxed: &[BoxedParam]) -> Vec<&(dyn tokio_postgres::types::ToSql + Sync)> {
    boxed
        .iter()
        .map(|b| b.as_ref() as &(dyn tokio_postgres::types::ToSql + Sync))
        .collect()
}

fn postgres_row(row: &tokio_postgres::Row) -> DbResult<Row> {
    use tokio_postgres::types::Type;
    let cells = row
        .columns()
        .iter()
        .enumerate()
        .map(|(i, column)| {
            let ty = column.type_();
            let cell = if *ty == Type::INT8 {
                row.try_get::<_, Option<i64>>(i)?.map(Cell::Int)
            } else if *ty == Type::INT4 {
                row.try_get::<_, Option<i32>>(i)?
                    .map(|n| Cell::Int(n.into()))
            } else if *ty == Type::TEXT || *ty == Type::VARCHAR {
                row.try_get::<_, Option<String>>(i)?.map(Cell::Text)
            } else {
                return Err(format!("unexpected column type {ty} of {}", column.name()).into());
            };
            Ok(cell.unwrap_or(Cell::Null))
        })
        .collect::<DbResult<_>>()?;
    Ok(Row(cells))
}

/// Runs `work` on `runtime` and waits for it from this (non-runtime) thread.
fn run_on<T: Send + 'static>(
    runtime: &tokio::runtime::Runtime,
    work: impl std::future::Future<Output = DbResult<T>> + Send + 'static,
) -> DbResult<T> {
    let (sender, receiver) = mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = sender.send(work.await);
    });
    receiver
        .recv()
        .map_err(|_| DbError::from("the PostgreSQL driver stopped"))?
}

/// `url` with its password replaced by `***`, for messages.
pub(crate) fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.split_once('@') {
        Some((credentials, host)) => match credentials.split_once(':') {
            Some((user, _password)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_redaction() {
        assert_eq!(
            postgres_placeholders("SELECT a FROM t WHERE b = ?1 AND c = ?12"),
            "SELECT a FROM t WHERE b = $1 AND c = $12"
        );
        assert_eq!(
            redacted("postgres://ft:secret@db:5432/ft"),
            "postgres://ft:***@db:5432/ft"
        );
        assert_eq!(redacted("postgres://db/ft"), "postgres://db/ft");
    }
}
