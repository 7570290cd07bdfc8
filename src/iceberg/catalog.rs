//! The SQL catalog (`iceberg: {catalog: sqlite:///…}` or `postgresql://…`): the `iceberg_tables` schema that
//! pyiceberg's `SqlCatalog` and Java's `JdbcCatalog` share. After each publish the table's row
//! is created, or its `metadata_location` moved forward by compare-and-swap
//! (`UPDATE … WHERE metadata_location = <the one read>`). A lost swap means another writer moved
//! it: re-read and roll forward, never back.

use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

/// The catalog's tables, as pyiceberg's `SqlCatalog` and Java's `JdbcCatalog` create them.
const DDL: [&str; 2] = [
    "CREATE TABLE IF NOT EXISTS iceberg_tables (
        catalog_name VARCHAR(255) NOT NULL,
        table_namespace VARCHAR(255) NOT NULL,
        table_name VARCHAR(255) NOT NULL,
        metadata_location VARCHAR(1000),
        previous_metadata_location VARCHAR(1000),
        iceberg_type VARCHAR(5),
        PRIMARY KEY (catalog_name, table_namespace, table_name)
    )",
    "CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
        catalog_name VARCHAR(255) NOT NULL,
        namespace VARCHAR(255) NOT NULL,
        property_key VARCHAR(255) NOT NULL,
        property_value VARCHAR(1000) NOT NULL,
        PRIMARY KEY (catalog_name, namespace, property_key)
    )",
];

/// How long a writer waits for another's lock on the catalog database.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Errors of the catalog.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CatalogError {
    #[error("iceberg.catalog: {message}")]
    Url { message: String },
    #[error("Iceberg catalog {url}: unable to {phase}: {source}")]
    Sql {
        url: String,
        phase: &'static str,
        source: rusqlite::Error,
    },
    #[error("Iceberg catalog {url}: unable to {phase}: {source}")]
    Postgres {
        url: String,
        phase: &'static str,
        source: postgres::Error,
    },
    #[error(
        "Iceberg catalog {url}: table {table} points at {found}, which is not a metadata file of \
         this table ({location}); the catalog was not changed\nhelp: another table holds that \
         name: choose another `iceberg.namespace` or job name, or drop that entry"
    )]
    Foreign {
        url: String,
        table: String,
        found: String,
        location: String,
    },
    #[error("Iceberg catalog {url}: {message}")]
    Task { url: String, message: String },
}

impl CatalogError {
    /// True for a configuration problem (exit code 2).
    pub fn is_config(&self) -> bool {
        matches!(
            self,
            CatalogError::Url { .. } | CatalogError::Foreign { .. }
        )
    }
}

/// The database of a catalog.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Db {
    Sqlite(PathBuf),
    /// A PostgreSQL URL without a password (that comes from `PGPASSWORD`).
    Postgres(String),
}

/// Where a table is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// The URL as written (for messages: it holds no password, those are refused).
    pub url: String,
    db: Db,
    pub catalog_name: String,
    pub namespace: String,
    pub table: String,
}

impl Catalog {
    /// A catalog from its URL: `sqlite:///relative/path.db` (relative to `base`, the job file's
    /// folder) or `sqlite:////absolute/path.db`, as SQLAlchemy spells them.
    pub fn parse(
        url: &str,
        base: &FsPath,
        catalog_name: &str,
        namespace: &str,
        table: &str,
    ) -> Result<Catalog, CatalogError> {
        let db = if url.starts_with("postgresql://") || url.starts_with("postgres://") {
            let parsed: postgres::Config = url.parse().map_err(|_| CatalogError::Url {
                message: "not a readable PostgreSQL URL (expected \
                          postgresql://user@host:port/database)"
                    .to_string(),
            })?;
            if parsed.get_password().is_some_and(|p| !p.is_empty()) {
                // Never echo the URL: it holds the secret.
                return Err(CatalogError::Url {
                    message: "the PostgreSQL URL holds a password: job files never hold \
                              credentials; remove it and set PGPASSWORD in the environment"
                        .to_string(),
                });
            }
            Db::Postgres(url.to_string())
        } else if let Some(rest) = url.strip_prefix("sqlite:///") {
            if rest.is_empty() {
                return Err(CatalogError::Url {
                    message: format!("`{url}`: no database file"),
                });
            }
            let p = FsPath::new(rest);
            Db::Sqlite(if p.is_absolute() {
                p.to_path_buf()
            } else {
                base.join(p)
            })
        } else {
            return Err(CatalogError::Url {
                message: format!(
                    "`{url}`: expected sqlite:///relative/path.db, sqlite:////absolute/path.db \
                     or postgresql://user@host/database"
                ),
            });
        };
        for (what, v) in [("catalog_name", catalog_name), ("namespace", namespace)] {
            if v.is_empty() || v.len() > 255 {
                return Err(CatalogError::Url {
                    message: format!("iceberg.{what}: expected 1 to 255 characters"),
                });
            }
        }
        Ok(Catalog {
            url: url.to_string(),
            db,
            catalog_name: catalog_name.to_string(),
            namespace: namespace.to_string(),
            table: table.to_string(),
        })
    }

    /// `namespace.table`.
    pub fn identifier(&self) -> String {
        format!("{}.{}", self.namespace, self.table)
    }

    /// Registers the table at `version`'s metadata, or moves its `metadata_location` forward to
    /// it; a newer location stays.
    pub async fn advance(&self, location: &str, version: u64) -> Result<(), CatalogError> {
        let me = self.clone();
        let location = location.to_string();
        tokio::task::spawn_blocking(move || me.advance_blocking(&location, version))
            .await
            .map_err(|e| CatalogError::Task {
                url: self.url.clone(),
                message: e.to_string(),
            })?
    }

    /// Refuses when the table's entry exists and names a metadata file of another table.
    pub async fn check(&self, location: &str) -> Result<(), CatalogError> {
        match self.current().await? {
            Some(found) if version_of(&found, location).is_none() => Err(CatalogError::Foreign {
                url: self.url.clone(),
                table: self.identifier(),
                found,
                location: location.to_string(),
            }),
            _ => Ok(()),
        }
    }

    /// The metadata location the catalog holds for this table (None: not registered).
    pub async fn current(&self) -> Result<Option<String>, CatalogError> {
        let me = self.clone();
        tokio::task::spawn_blocking(move || Ok(me.connect()?.read()?.flatten()))
            .await
            .map_err(|e| CatalogError::Task {
                url: self.url.clone(),
                message: e.to_string(),
            })?
    }

    /// A connection to the catalog's database, its tables created if missing.
    fn connect(&self) -> Result<Box<dyn Rows + '_>, CatalogError> {
        match &self.db {
            Db::Sqlite(path) => Ok(Box::new(SqliteRows::open(self, path)?)),
            Db::Postgres(url) => Ok(Box::new(PostgresRows::open(self, url)?)),
        }
    }

    fn advance_blocking(&self, location: &str, version: u64) -> Result<(), CatalogError> {
        let mut rows = self.connect()?;
        let new = format!("{location}/{}", crate::layout::iceberg_metadata(version));
        loop {
            match rows.read()? {
                None => {
                    if rows.register(&new)? {
                        return Ok(());
                    }
                }
                Some(old) => {
                    let old_version = old.as_deref().and_then(|o| version_of(o, location));
                    match (old.as_deref(), old_version) {
                        (_, Some(v)) if v >= version => return Ok(()),
                        (Some(found), None) => {
                            return Err(CatalogError::Foreign {
                                url: self.url.clone(),
                                table: self.identifier(),
                                found: found.to_string(),
                                location: location.to_string(),
                            });
                        }
                        _ => {}
                    }
                    if rows.swap(old.as_deref(), &new)? {
                        return Ok(());
                    }
                }
            }
            // Another writer changed the row between the read and the write: read it again.
        }
    }
}

/// The table's row in a catalog database.
trait Rows {
    /// `None`: no row; `Some(location)`: the row and its `metadata_location`.
    fn read(&mut self) -> Result<Option<Option<String>>, CatalogError>;
    /// Creates the namespace (if missing) and the row at `new`; false if the row appeared first.
    fn register(&mut self, new: &str) -> Result<bool, CatalogError>;
    /// Moves `metadata_location` from `old` to `new`; false if it is no longer `old`.
    fn swap(&mut self, old: Option<&str>, new: &str) -> Result<bool, CatalogError>;
}

struct SqliteRows<'a> {
    catalog: &'a Catalog,
    conn: Connection,
    has_type: bool,
}

impl<'a> SqliteRows<'a> {
    fn open(catalog: &'a Catalog, path: &FsPath) -> Result<Self, CatalogError> {
        let sql = |phase| {
            move |source| CatalogError::Sql {
                url: catalog.url.clone(),
                phase,
                source,
            }
        };
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| CatalogError::Task {
                url: catalog.url.clone(),
                message: format!("unable to create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(path).map_err(sql("open the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(sql("set a busy timeout"))?;
        for ddl in DDL {
            conn.execute_batch(ddl)
                .map_err(sql("create the catalog tables"))?;
        }
        let has_type = conn
            .prepare(
                "SELECT 1 FROM pragma_table_info('iceberg_tables') WHERE name = 'iceberg_type'",
            )
            .and_then(|mut s| s.exists([]))
            .map_err(sql("read the catalog schema"))?;
        Ok(SqliteRows {
            catalog,
            conn,
            has_type,
        })
    }

    fn err(&self, phase: &'static str) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        move |source| CatalogError::Sql {
            url: self.catalog.url.clone(),
            phase,
            source,
        }
    }
}

impl Rows for SqliteRows<'_> {
    fn read(&mut self) -> Result<Option<Option<String>>, CatalogError> {
        let c = self.catalog;
        self.conn
            .query_row(
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3",
                params![c.catalog_name, c.namespace, c.table],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.err("read the table entry"))
    }

    fn register(&mut self, new: &str) -> Result<bool, CatalogError> {
        let c = self.catalog;
        self.conn
            .execute(
                "INSERT OR IGNORE INTO iceberg_namespace_properties \
                 (catalog_name, namespace, property_key, property_value) \
                 VALUES (?1, ?2, 'exists', 'true')",
                params![c.catalog_name, c.namespace],
            )
            .map_err(self.err("create the namespace"))?;
        let sql = if self.has_type {
            "INSERT OR IGNORE INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) \
             VALUES (?1, ?2, ?3, ?4, NULL, 'TABLE')"
        } else {
            "INSERT OR IGNORE INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location) VALUES (?1, ?2, ?3, ?4, NULL)"
        };
        let n = self
            .conn
            .execute(sql, params![c.catalog_name, c.namespace, c.table, new])
            .map_err(self.err("register the table"))?;
        Ok(n == 1)
    }

    fn swap(&mut self, old: Option<&str>, new: &str) -> Result<bool, CatalogError> {
        let c = self.catalog;
        let n = self
            .conn
            .execute(
                "UPDATE iceberg_tables SET metadata_location = ?4, \
                 previous_metadata_location = ?5 \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3 \
                 AND metadata_location IS ?5",
                params![c.catalog_name, c.namespace, c.table, new, old],
            )
            .map_err(self.err("move the table's metadata location"))?;
        Ok(n == 1)
    }
}

struct PostgresRows<'a> {
    catalog: &'a Catalog,
    client: postgres::Client,
    has_type: bool,
}

impl<'a> PostgresRows<'a> {
    fn open(catalog: &'a Catalog, url: &str) -> Result<Self, CatalogError> {
        let err = |phase| {
            move |source| CatalogError::Postgres {
                url: catalog.url.clone(),
                phase,
                source,
            }
        };
        let mut config: postgres::Config = url.parse().map_err(err("read the URL"))?;
        if let Ok(password) = std::env::var("PGPASSWORD") {
            config.password(password);
        }
        config.connect_timeout(BUSY_TIMEOUT);
        let mut client = config.connect(postgres::NoTls).map_err(err("connect"))?;
        for ddl in DDL {
            // Two writers creating the tables at once: one of them fails, then they exist.
            if let Err(e) = client.batch_execute(ddl) {
                let exists = client
                    .query_one(
                        "SELECT count(*) FROM information_schema.tables \
                         WHERE table_name IN ('iceberg_tables', 'iceberg_namespace_properties')",
                        &[],
                    )
                    .map(|r| r.get::<_, i64>(0) == 2)
                    .unwrap_or(false);
                if !exists {
                    return Err(err("create the catalog tables")(e));
                }
            }
        }
        let has_type = client
            .query_opt(
                "SELECT 1 FROM information_schema.columns \
                 WHERE table_name = 'iceberg_tables' AND column_name = 'iceberg_type'",
                &[],
            )
            .map_err(err("read the catalog schema"))?
            .is_some();
        Ok(PostgresRows {
            catalog,
            client,
            has_type,
        })
    }

    fn err(&self, phase: &'static str) -> impl Fn(postgres::Error) -> CatalogError + '_ {
        move |source| CatalogError::Postgres {
            url: self.catalog.url.clone(),
            phase,
            source,
        }
    }
}

impl Rows for PostgresRows<'_> {
    fn read(&mut self) -> Result<Option<Option<String>>, CatalogError> {
        let c = self.catalog;
        let row = self
            .client
            .query_opt(
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3",
                &[&c.catalog_name, &c.namespace, &c.table],
            )
            .map_err(self.err("read the table entry"))?;
        Ok(row.map(|r| r.get::<_, Option<String>>(0)))
    }

    fn register(&mut self, new: &str) -> Result<bool, CatalogError> {
        let c = self.catalog;
        self.client
            .execute(
                "INSERT INTO iceberg_namespace_properties \
                 (catalog_name, namespace, property_key, property_value) \
                 VALUES ($1, $2, 'exists', 'true') ON CONFLICT DO NOTHING",
                &[&c.catalog_name, &c.namespace],
            )
            .map_err(self.err("create the namespace"))?;
        let sql = if self.has_type {
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location, iceberg_type) \
             VALUES ($1, $2, $3, $4, NULL, 'TABLE') ON CONFLICT DO NOTHING"
        } else {
            "INSERT INTO iceberg_tables (catalog_name, table_namespace, table_name, \
             metadata_location, previous_metadata_location) VALUES ($1, $2, $3, $4, NULL) \
             ON CONFLICT DO NOTHING"
        };
        let n = self
            .client
            .execute(sql, &[&c.catalog_name, &c.namespace, &c.table, &new])
            .map_err(self.err("register the table"))?;
        Ok(n == 1)
    }

    fn swap(&mut self, old: Option<&str>, new: &str) -> Result<bool, CatalogError> {
        let c = self.catalog;
        let n = self
            .client
            .execute(
                "UPDATE iceberg_tables SET metadata_location = $4, \
                 previous_metadata_location = $5 \
                 WHERE catalog_name = $1 AND table_namespace = $2 AND table_name = $3 \
                 AND metadata_location IS NOT DISTINCT FROM $5",
                &[&c.catalog_name, &c.namespace, &c.table, &new, &old],
            )
            .map_err(self.err("move the table's metadata location"))?;
        Ok(n == 1)
    }
}

/// The `wap` version of a metadata location of the table at `location`.
fn version_of(metadata_location: &str, location: &str) -> Option<u64> {
    metadata_location
        .strip_prefix(location)?
        .strip_prefix("/metadata/v")?
        .strip_suffix(".metadata.json")?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_location_only_moves_forward() {
        let dir = tempfile::tempdir().unwrap();
        let c = Catalog::parse(
            "sqlite:///cat/c.db",
            dir.path(),
            "default",
            "lake",
            "orders",
        )
        .unwrap();
        assert_eq!(c.current().await.unwrap(), None);
        c.advance("/t", 2).await.unwrap();
        assert_eq!(
            c.current().await.unwrap().as_deref(),
            Some("/t/metadata/v2.metadata.json")
        );
        c.advance("/t", 5).await.unwrap();
        c.advance("/t", 3).await.unwrap();
        assert_eq!(
            c.current().await.unwrap().as_deref(),
            Some("/t/metadata/v5.metadata.json")
        );
        c.check("/t").await.unwrap();
        assert!(c.check("/elsewhere").await.unwrap_err().is_config());
        let other = c.advance("/elsewhere", 9).await.unwrap_err();
        assert!(other.is_config(), "{other}");
        assert!(other.to_string().contains("lake.orders"), "{other}");
        // Concurrent writers: every swap lands or rolls forward, the newest wins.
        let tasks: Vec<_> = (6..30)
            .map(|v| {
                let c = c.clone();
                tokio::spawn(async move { c.advance("/t", v).await })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert_eq!(
            c.current().await.unwrap().as_deref(),
            Some("/t/metadata/v29.metadata.json")
        );
    }

    #[test]
    fn urls_are_checked() {
        let base = FsPath::new("/jobs");
        let abs = Catalog::parse("sqlite:////var/c.db", base, "default", "lake", "t").unwrap();
        assert_eq!(abs.db, Db::Sqlite(PathBuf::from("/var/c.db")));
        let rel = Catalog::parse("sqlite:///c.db", base, "default", "lake", "t").unwrap();
        assert_eq!(rel.db, Db::Sqlite(PathBuf::from("/jobs/c.db")));
        let pg = Catalog::parse("postgresql://u@h/db", base, "default", "lake", "t").unwrap();
        assert_eq!(pg.db, Db::Postgres("postgresql://u@h/db".into()));
        let secret = Catalog::parse("postgresql://u:s3cret@h/db", base, "default", "lake", "t")
            .unwrap_err()
            .to_string();
        assert!(
            secret.contains("PGPASSWORD") && !secret.contains("s3cret"),
            "{secret}"
        );
        assert!(Catalog::parse("mysql://h/db", base, "default", "lake", "t").is_err());
        assert!(Catalog::parse("sqlite:///", base, "default", "lake", "t").is_err());
    }
}
