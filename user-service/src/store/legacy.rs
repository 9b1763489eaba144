//! Adopting the database of the replaced Go service (PostgreSQL; schema made by goose: table
//! `users`, its indexes and trigger, and goose's `goose_db_version`).
//!
//! `migrate` recognises it (a `users` table that meshgate's migrations did not create, next to
//! goose's history, with the legacy columns) and records meshgate's baseline migration
//! (20261126000001, which would fail with "relation users already exists") as applied without
//! running it, as sqlx's `skip` does: the checksummed history stays valid. The expand migration
//! 20261130000105 then adds what the baseline has and the legacy schema lacks, and the contract
//! migrations wait for `migrate --contract` (the old server may run beside meshgate meanwhile).
//! All of it in the caller's migration transaction: an adoption is complete or absent.

use anyhow::{Context, bail};
use sqlx::PgConnection;
use sqlx::migrate::{Migrate, Migrator};

use super::migrate::HISTORY_TABLE;

/// `legacy_adoption.source` of a goose-managed database.
const SOURCE: &str = "goose";

/// The legacy `users` columns and the `information_schema` types they may have.
const LEGACY_COLUMNS: [(&str, &[&str]); 6] = [
    ("id", &["uuid"]),
    ("name", &["character varying", "text"]),
    ("email", &["character varying", "text"]),
    ("age", &["integer"]),
    ("created_at", &["timestamp with time zone"]),
    ("updated_at", &["timestamp with time zone"]),
];

/// What keeps a `users` table (its columns as `(name, data_type)`, its primary key columns) from
/// being the legacy one. Empty: it is.
pub(crate) fn shape_problems(columns: &[(String, String)], primary_key: &[String]) -> Vec<String> {
    let mut problems = Vec::new();
    for (name, types) in LEGACY_COLUMNS {
        match columns.iter().find(|(found, _)| found == name) {
            None => problems.push(format!("column {name} is missing")),
            Some((_, found)) if !types.contains(&found.as_str()) => problems.push(format!(
                "column {name} is {found}, expected {}",
                types.join(" or ")
            )),
            Some(_) => {}
        }
    }
    for (name, _) in columns {
        if !LEGACY_COLUMNS.iter().any(|(known, _)| known == name) {
            problems.push(format!("unexpected column {name}"));
        }
    }
    if primary_key != ["id"] {
        problems.push(format!(
            "primary key is ({}), expected (id)",
            primary_key.join(", ")
        ));
    }
    problems
}

/// Recognises an unadopted legacy database and records the baseline as applied. Returns goose's
/// version when it adopted, `None` on a database meshgate created (or an empty one); fails,
/// changing nothing, on a `users` table of unknown origin or shape.
pub(crate) async fn adopt(
    conn: &mut PgConnection,
    migrator: &Migrator,
) -> anyhow::Result<Option<i64>> {
    let baseline = migrator
        .iter()
        .next()
        .context("no migrations are embedded")?;
    let (has_users, has_goose): (bool, bool) = sqlx::query_as(
        "SELECT to_regclass('users') IS NOT NULL, to_regclass('goose_db_version') IS NOT NULL",
    )
    .fetch_one(&mut *conn)
    .await?;
    let baselined: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM _sqlx_migrations WHERE version = $1)")
            .bind(baseline.version)
            .fetch_one(&mut *conn)
            .await?;
    if !has_users || baselined {
        return Ok(None);
    }
    if !has_goose {
        bail!(
            "table users exists but neither meshgate's migrations ({HISTORY_TABLE}) nor the \
             replaced service's goose (goose_db_version) created it: refusing to adopt a schema \
             of unknown origin (see migrations/README.md)"
        );
    }
    let columns: Vec<(String, String)> = sqlx::query_as(
        "SELECT column_name::text, data_type::text FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = 'users' ORDER BY ordinal_position",
    )
    .fetch_all(&mut *conn)
    .await?;
    let primary_key: Vec<String> = sqlx::query_scalar(
        "SELECT a.attname::text FROM pg_index i \
         JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey) \
         WHERE i.indrelid = 'users'::regclass AND i.indisprimary ORDER BY a.attnum",
    )
    .fetch_all(&mut *conn)
    .await?;
    let problems = shape_problems(&columns, &primary_key);
    if !problems.is_empty() {
        bail!(
            "table users (next to goose_db_version) is not the replaced service's schema: {}; \
             refusing to adopt it",
            problems.join("; ")
        );
    }
    let goose_version: i64 = sqlx::query_scalar(
        "SELECT COALESCE(max(version_id), 0) FROM goose_db_version WHERE is_applied",
    )
    .fetch_one(&mut *conn)
    .await?;
    conn.skip(HISTORY_TABLE, baseline).await?;
    tracing::info!(
        goose_version,
        baseline = baseline.version,
        "adopting the database of the replaced service: baseline recorded as applied"
    );
    Ok(Some(goose_version))
}

/// Records the adoption (after the expand migrations created `legacy_adoption`).
pub(crate) async fn record(
    conn: &mut PgConnection,
    goose_version: i64,
    migrator: &Migrator,
) -> anyhow::Result<()> {
    let baseline = migrator
        .iter()
        .next()
        .context("no migrations are embedded")?;
    sqlx::query(
        "INSERT INTO legacy_adoption (source, legacy_version, baseline_version) VALUES ($1, $2, $3)",
    )
    .bind(SOURCE)
    .bind(goose_version)
    .bind(baseline.version)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// True while an adopted database has not been contracted (the old server may be writing).
pub(crate) async fn in_overlap(conn: &mut PgConnection) -> anyhow::Result<bool> {
    Ok(sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM legacy_adoption WHERE contracted_at IS NULL)",
    )
    .fetch_one(&mut *conn)
    .await?)
}

/// Ends the overlap (`migrate --contract`, after the contract migrations ran).
pub(crate) async fn mark_contracted(conn: &mut PgConnection) -> anyhow::Result<()> {
    sqlx::query("UPDATE legacy_adoption SET contracted_at = now() WHERE contracted_at IS NULL")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn columns(spec: &[(&str, &str)]) -> Vec<(String, String)> {
        spec.iter()
            .map(|(n, t)| ((*n).to_owned(), (*t).to_owned()))
            .collect()
    }

    const GOOSE_SCHEMA: [(&str, &str); 6] = [
        ("id", "uuid"),
        ("name", "character varying"),
        ("email", "character varying"),
        ("age", "integer"),
        ("created_at", "timestamp with time zone"),
        ("updated_at", "timestamp with time zone"),
    ];

    #[test]
    fn the_legacy_shape_is_recognised() {
        assert!(shape_problems(&columns(&GOOSE_SCHEMA), &["id".to_owned()]).is_empty());
    }

    #[test]
    fn any_other_shape_is_named_precisely() {
        let mut other = columns(&GOOSE_SCHEMA);
        other.retain(|(name, _)| name != "age");
        other.push(("password".to_owned(), "text".to_owned()));
        other[0].1 = "integer".to_owned();
        assert_eq!(
            shape_problems(&other, &[]),
            [
                "column id is integer, expected uuid",
                "column age is missing",
                "unexpected column password",
                "primary key is (), expected (id)",
            ]
        );
    }
}
