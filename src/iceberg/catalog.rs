//! The SQL catalog (`iceberg: {catalog: sqlite:///…}`): the `iceberg_tables` schema that
//! pyiceberg's `SqlCatalog` and Java's `JdbcCatalog` share. After each publish the table's row
//! is created, or its `metadata_location` moved forward by compare-and-swap
//! (`UPDATE … WHERE metadata_location = <the one read>`). A lost swap means another writer moved
//! it: re-read and roll forward, never back.

use std::path::{Path as FsPath, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

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

/// Where a table is registered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Catalog {
    /// The URL as written (for messages; a SQLite URL holds no secret).
    pub url: String,
    db: PathBuf,
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
        let Some(rest) = url.strip_prefix("sqlite:///") else {
            let scheme = url.split("://").next().unwrap_or(url);
            let message = if scheme.starts_with("postgres") {
                format!(
                    "`{url}`: PostgreSQL catalogs are not supported by this build; use a SQLite \
                     catalog (sqlite:////path/catalog.db) or register the metadata location that \
                     `wap show` prints in your catalog"
                )
            } else {
                format!(
                    "`{url}`: expected sqlite:///relative/path.db or sqlite:////absolute/path.db"
                )
            };
            return Err(CatalogError::Url { message });
        };
        if rest.is_empty() {
            return Err(CatalogError::Url {
                message: format!("`{url}`: no database file"),
            });
        }
        let p = FsPath::new(rest);
        let db = if p.is_absolute() {
            p.to_path_buf()
        } else {
            base.join(p)
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
        tokio::task::spawn_blocking(move || {
            let conn = me.open()?;
            me.read(&conn)
        })
        .await
        .map_err(|e| CatalogError::Task {
            url: self.url.clone(),
            message: e.to_string(),
        })?
    }

    fn sql(&self, phase: &'static str) -> impl Fn(rusqlite::Error) -> CatalogError + '_ {
        move |source| CatalogError::Sql {
            url: self.url.clone(),
            phase,
            source,
        }
    }

    fn open(&self) -> Result<Connection, CatalogError> {
        if let Some(dir) = self.db.parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir).map_err(|e| CatalogError::Task {
                url: self.url.clone(),
                message: format!("unable to create {}: {e}", dir.display()),
            })?;
        }
        let conn = Connection::open(&self.db).map_err(self.sql("open the database"))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(self.sql("set a busy timeout"))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS iceberg_tables (
                catalog_name VARCHAR(255) NOT NULL,
                table_namespace VARCHAR(255) NOT NULL,
                table_name VARCHAR(255) NOT NULL,
                metadata_location VARCHAR(1000),
                previous_metadata_location VARCHAR(1000),
                iceberg_type VARCHAR(5),
                PRIMARY KEY (catalog_name, table_namespace, table_name)
            );
            CREATE TABLE IF NOT EXISTS iceberg_namespace_properties (
                catalog_name VARCHAR(255) NOT NULL,
                namespace VARCHAR(255) NOT NULL,
                property_key VARCHAR(255) NOT NULL,
                property_value VARCHAR(1000) NOT NULL,
                PRIMARY KEY (catalog_name, namespace, property_key)
            );",
        )
        .map_err(self.sql("create the catalog tables"))?;
        Ok(conn)
    }

    fn read(&self, conn: &Connection) -> Result<Option<String>, CatalogError> {
        Ok(conn
            .query_row(
                "SELECT metadata_location FROM iceberg_tables \
                 WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3",
                params![self.catalog_name, self.namespace, self.table],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map_err(self.sql("read the table entry"))?
            .flatten())
    }

    fn advance_blocking(&self, location: &str, version: u64) -> Result<(), CatalogError> {
        let conn = self.open()?;
        let new = format!("{location}/{}", crate::layout::iceberg_metadata(version));
        let has_type = conn
            .prepare(
                "SELECT 1 FROM pragma_table_info('iceberg_tables') WHERE name = 'iceberg_type'",
            )
            .and_then(|mut s| s.exists([]))
            .map_err(self.sql("read the catalog schema"))?;
        loop {
            let row: Option<Option<String>> = conn
                .query_row(
                    "SELECT metadata_location FROM iceberg_tables \
                     WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3",
                    params![self.catalog_name, self.namespace, self.table],
                    |r| r.get(0),
                )
                .optional()
                .map_err(self.sql("read the table entry"))?;
            match row {
                None => {
                    conn.execute(
                        "INSERT OR IGNORE INTO iceberg_namespace_properties \
                         (catalog_name, namespace, property_key, property_value) \
                         VALUES (?1, ?2, 'exists', 'true')",
                        params![self.catalog_name, self.namespace],
                    )
                    .map_err(self.sql("create the namespace"))?;
                    let sql = if has_type {
                        "INSERT OR IGNORE INTO iceberg_tables (catalog_name, table_namespace, \
                         table_name, metadata_location, previous_metadata_location, iceberg_type) \
                         VALUES (?1, ?2, ?3, ?4, NULL, 'TABLE')"
                    } else {
                        "INSERT OR IGNORE INTO iceberg_tables (catalog_name, table_namespace, \
                         table_name, metadata_location, previous_metadata_location) \
                         VALUES (?1, ?2, ?3, ?4, NULL)"
                    };
                    let n = conn
                        .execute(
                            sql,
                            params![self.catalog_name, self.namespace, self.table, new],
                        )
                        .map_err(self.sql("register the table"))?;
                    if n == 1 {
                        return Ok(());
                    }
                }
                Some(old) => {
                    let old_version = old.as_deref().and_then(|o| version_of(o, location));
                    match (old.as_deref(), old_version) {
                        (_, Some(v)) if v >= version => return Ok(()),
                        (Some(_), None) => {
                            return Err(CatalogError::Foreign {
                                url: self.url.clone(),
                                table: self.identifier(),
                                found: old.clone().unwrap_or_default(),
                                location: location.to_string(),
                            });
                        }
                        _ => {}
                    }
                    let n = conn
                        .execute(
                            "UPDATE iceberg_tables SET metadata_location = ?4, \
                             previous_metadata_location = ?5 \
                             WHERE catalog_name = ?1 AND table_namespace = ?2 AND table_name = ?3 \
                             AND metadata_location IS ?5",
                            params![self.catalog_name, self.namespace, self.table, new, old],
                        )
                        .map_err(self.sql("move the table's metadata location"))?;
                    if n == 1 {
                        return Ok(());
                    }
                }
            }
            // Another writer changed the row between the read and the write: read it again.
        }
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
        assert_eq!(abs.db, PathBuf::from("/var/c.db"));
        let rel = Catalog::parse("sqlite:///c.db", base, "default", "lake", "t").unwrap();
        assert_eq!(rel.db, PathBuf::from("/jobs/c.db"));
        let pg = Catalog::parse("postgresql://u@h/db", base, "default", "lake", "t").unwrap_err();
        assert!(pg.to_string().contains("PostgreSQL"), "{pg}");
        assert!(Catalog::parse("sqlite:///", base, "default", "lake", "t").is_err());
    }
}
