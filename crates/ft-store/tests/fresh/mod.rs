//! An empty store per test: a temporary state directory, and for PostgreSQL a new database on
//! the server `FT_TEST_DATABASE_URL` names (`postgres://user@host:port/postgres`).

/// Every case once on SQLite and once on PostgreSQL, each on an empty store.
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite {
            $(#[test]
            fn $case() -> super::Result<()> {
                super::$case(&super::Fresh::sqlite()?)
            })*
        }
        mod postgres {
            $(#[test]
            fn $case() -> super::Result<()> {
                match super::Fresh::postgres()? {
                    Some(fresh) => super::$case(&fresh),
                    None => Ok(()),
                }
            })*
        }
    };
}

use ft_store::Store;

use super::Result;

/// A test's own empty store, opened as often as the test needs (each open is a new connection).
pub struct Fresh {
    dir: tempfile::TempDir,
    url: Option<String>,
}

impl Fresh {
    /// SQLite in a temporary directory.
    pub fn sqlite() -> Result<Self> {
        Ok(Self {
            dir: tempfile::tempdir()?,
            url: None,
        })
    }

    /// A new database on the test server; `None` (with a note) when no server is configured,
    /// an error under `CI=true`.
    pub fn postgres() -> Result<Option<Self>> {
        let Ok(server) = std::env::var("FT_TEST_DATABASE_URL") else {
            if std::env::var("CI").is_ok_and(|v| v == "true") {
                return Err("FT_TEST_DATABASE_URL is not set: start a server with \
                            `scripts/postgres.sh start DIR` (scripts/test.sh does)"
                    .into());
            }
            eprintln!("FT_TEST_DATABASE_URL not set: the PostgreSQL cases are not run");
            return Ok(None);
        };
        let name = ft_store::new_id("ft_test_").to_lowercase();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let (client, connection) =
                tokio_postgres::connect(&server, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            client
                .batch_execute(&format!("CREATE DATABASE \"{name}\""))
                .await?;
            drop(client);
            let _ = driver.await;
            Result::Ok(())
        })?;
        let (prefix, _) = server
            .rsplit_once('/')
            .ok_or("FT_TEST_DATABASE_URL has no /database")?;
        Ok(Some(Self {
            dir: tempfile::tempdir()?,
            url: Some(format!("{prefix}/{name}")),
        }))
    }

    /// Opens the store (a new connection each time).
    pub fn open(&self) -> Result<Store> {
        Ok(Store::connect(self.dir.path(), self.url.as_deref())?)
    }
}
