//! The tables an audit reads, registered in its session: `staged` (what is audited), `result`
//! (the table as it would be after publishing), `published` (the version it is compared with)
//! and one table per `relationships` rule (its target's current version).

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::datasource::TableProvider;
use datafusion::prelude::SessionContext;
use object_store::ObjectStore;

use super::{AuditError, PUBLISHED, RESULT, STAGED, StagedFiles, sql};
use crate::conf::JobConf;
use crate::conf::rules::RuleKind;
use crate::manifest::Manifest;
use crate::store::Location;
use crate::table::{self, TableError, VersionTable};
use crate::write::StagedRun;

fn replace(
    ctx: &SessionContext,
    name: &str,
    provider: Arc<dyn TableProvider>,
) -> Result<(), TableError> {
    ctx.deregister_table(name)
        .and_then(|_| ctx.register_table(name, provider))
        .map(|_| ())
        .map_err(|source| TableError::Register {
            name: name.to_string(),
            source,
        })
}

/// Registers empty `staged` and `result` tables of `schema` and `current` as `published`, so
/// that every rule can be compiled before anything is written.
pub fn register_for_compile(
    ctx: &SessionContext,
    schema: &SchemaRef,
    current: Option<&Manifest>,
) -> Result<(), TableError> {
    for (name, version) in [(PUBLISHED, current), (STAGED, None), (RESULT, None)] {
        ctx.deregister_table(name)
            .map_err(|source| TableError::Register {
                name: name.to_string(),
                source,
            })?;
        table::register_version(ctx, name, version, Arc::clone(schema))?;
    }
    Ok(())
}

/// Registers empty `batch` and `changes` tables for a merge run (the batch's schema, and that
/// plus `_change`), so that rules reading them compile before anything is written. The merge
/// registers the real ones.
pub fn register_merge_for_compile(
    ctx: &SessionContext,
    batch: &SchemaRef,
) -> Result<(), TableError> {
    use crate::write::merge::{BATCH, CHANGE_COLUMN, CHANGES};
    let mut fields: Vec<Field> = batch.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(CHANGE_COLUMN, DataType::Utf8, true));
    let changes = Arc::new(Schema::new(fields));
    for (name, schema) in [(BATCH, Arc::clone(batch)), (CHANGES, changes)] {
        let empty = VersionTable::new(crate::engine::TABLE_URL, schema, Vec::new(), [])?;
        replace(ctx, name, Arc::new(empty))?;
    }
    Ok(())
}

/// Registers a run's files as `staged`, and as `result` the current version minus the
/// partitions the run replaces plus the run's files. Returns the staged files, for the audit.
pub fn register_run(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    staged: &StagedRun,
    current: Option<&Manifest>,
    removed: &[String],
) -> Result<StagedFiles, TableError> {
    let replaced: std::collections::BTreeSet<&str> = staged
        .partitions
        .iter()
        .map(|p| p.path.as_str())
        .chain(removed.iter().map(String::as_str))
        .collect();
    let kept = current.into_iter().flat_map(|m| {
        m.partitions
            .values()
            .filter(|p| !replaced.contains(p.path.as_str()))
    });
    let objects = staged.objects();
    let result = VersionTable::new(
        crate::engine::TABLE_URL,
        Arc::clone(&staged.schema),
        objects.clone(),
        kept,
    )?;
    let staged_table = table::files_table(Arc::clone(&staged.schema), objects.clone())?;
    replace(ctx, STAGED, Arc::new(staged_table))?;
    replace(ctx, RESULT, Arc::new(result))?;
    Ok(StagedFiles::new(
        Arc::clone(store),
        Arc::clone(&staged.schema),
        objects,
    ))
}

/// Registers a published version (its file lists resolved) as `staged` and `result`, and its
/// parent as `published`: `wap audit --version N`. Returns its files, for the audit.
pub fn register_version(
    ctx: &SessionContext,
    store: &Arc<dyn ObjectStore>,
    target: &Manifest,
    parent: Option<&Manifest>,
) -> Result<StagedFiles, TableError> {
    let schema = target.schema_ref();
    let objects: Vec<_> = target.files().map(table::object_meta).collect();
    let staged_table = table::files_table(Arc::clone(&schema), objects.clone())?;
    replace(ctx, STAGED, Arc::new(staged_table))?;
    table::register_version(ctx, RESULT, Some(target), Arc::clone(&schema))?;
    table::register_version(ctx, PUBLISHED, parent, Arc::clone(&schema))?;
    Ok(StagedFiles::new(Arc::clone(store), schema, objects))
}

/// Registers the current published version of every `relationships` target (a table location,
/// or a job file naming one). An unpublished target is an empty table, so every non-NULL value
/// fails the rule.
pub async fn register_targets(
    ctx: &SessionContext,
    conf: &JobConf,
    staged: &SchemaRef,
) -> Result<(), AuditError> {
    for (i, rule) in conf.rules.rules().iter().enumerate() {
        let RuleKind::Relationships { column, to, field } = &rule.kind else {
            continue;
        };
        let target_err = |source: crate::Error| AuditError::Target {
            rule: rule.name.clone(),
            target: to.clone(),
            source: Box::new(source),
        };
        let (location, storage) = if to.ends_with(".yaml") || to.ends_with(".yml") {
            let target = JobConf::load(to).map_err(|e| target_err(e.into()))?;
            (target.table, target.storage)
        } else {
            (to.clone(), conf.storage.clone())
        };
        let store = Location::parse(&location, &storage)
            .and_then(|l| l.scoped())
            .map_err(|e| target_err(e.into()))?;
        let manifest = crate::versions::current(&store)
            .await
            .map_err(|e| target_err(e.into()))?;
        let url = format!("wap://target-{i}/");
        ctx.register_object_store(
            &url::Url::parse(&url).expect("valid url"),
            Arc::clone(&store),
        );
        let provider = match &manifest {
            Some(m) => VersionTable::new(&url, m.schema_ref(), Vec::new(), m.partitions.values())?,
            None => {
                let data_type = staged
                    .field_with_name(column)
                    .map(|f| f.data_type().clone())
                    .unwrap_or(DataType::Utf8);
                let schema = Arc::new(Schema::new(vec![Field::new(field, data_type, true)]));
                VersionTable::new(&url, schema, Vec::new(), [])?
            }
        };
        let name = sql::relationship_table(&rule.name);
        replace(ctx, &name, Arc::new(provider))?;
    }
    Ok(())
}
