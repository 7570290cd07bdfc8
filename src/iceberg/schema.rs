//! Iceberg schemas, field ids, partition values and bounds, from Arrow schemas and the
//! manifest's text and statistics.
//!
//! Field ids live in the Arrow schema as field metadata (`PARQUET:field_id`, the key the Parquet
//! writer turns into Parquet field ids), so the files, the `wap` manifest and the Iceberg schema
//! agree. [`with_field_ids`] keeps the id of every column the base schema has and gives a new
//! column the next free id. A schema without ids (files written before Iceberg was enabled) is
//! numbered by position, the way [`with_field_ids`] numbers a first schema.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, Schema, TimeUnit};
use chrono::{DateTime, NaiveDate, NaiveDateTime};
use serde_json::{Value, json};

use super::IcebergError;
use super::avro::Datum;
use crate::manifest::ColumnStats;

/// The Arrow field metadata key holding a field id.
pub const FIELD_ID: &str = "PARQUET:field_id";
/// The first partition field id (Iceberg's convention).
pub const PARTITION_FIELD_BASE: i32 = 1000;
/// Longest string bound kept: a longer lower bound is cut (still a lower bound), a longer upper
/// bound is left out.
const BOUND_CHARS: usize = 64;

fn id_of(f: &Field) -> Option<i32> {
    f.metadata().get(FIELD_ID)?.parse().ok()
}

/// Ids by field path (`element`, `key`, `value` for list and map children).
type Ids = BTreeMap<Vec<String>, i32>;

fn collect(fields: &Fields, path: &[String], out: &mut Ids) {
    for f in fields {
        let mut p = path.to_vec();
        p.push(f.name().clone());
        if let Some(id) = id_of(f) {
            out.insert(p.clone(), id);
        }
        collect_type(f.data_type(), &p, out);
    }
}

fn collect_type(t: &DataType, path: &[String], out: &mut Ids) {
    match t {
        DataType::Struct(fs) => collect(fs, path, out),
        DataType::List(item) | DataType::LargeList(item) => {
            let mut p = path.to_vec();
            p.push("element".into());
            if let Some(id) = id_of(item) {
                out.insert(p.clone(), id);
            }
            collect_type(item.data_type(), &p, out);
        }
        DataType::Map(entries, _) => {
            if let DataType::Struct(kv) = entries.data_type() {
                for (f, name) in kv.iter().zip(["key", "value"]) {
                    let mut p = path.to_vec();
                    p.push(name.into());
                    if let Some(id) = id_of(f) {
                        out.insert(p.clone(), id);
                    }
                    collect_type(f.data_type(), &p, out);
                }
            }
        }
        _ => {}
    }
}

/// True when every top-level field has an id.
pub fn has_field_ids(schema: &Schema) -> bool {
    !schema.fields().is_empty() && schema.fields().iter().all(|f| id_of(f).is_some())
}

/// The ids of `schema`: its own, or by position when it has none.
fn ids_of(schema: &Schema) -> Ids {
    let numbered;
    let schema = if has_field_ids(schema) {
        schema
    } else {
        numbered = with_field_ids(schema, None);
        &numbered
    };
    let mut out = Ids::new();
    collect(schema.fields(), &[], &mut out);
    out
}

struct Assigner {
    known: Ids,
    next: i32,
}

impl Assigner {
    fn id(&mut self, path: &[String]) -> i32 {
        if let Some(&id) = self.known.get(path) {
            return id;
        }
        let id = self.next;
        self.next += 1;
        self.known.insert(path.to_vec(), id);
        id
    }

    fn with_id(f: &Field, data_type: DataType, id: i32) -> Field {
        let mut meta = f.metadata().clone();
        meta.insert(FIELD_ID.to_string(), id.to_string());
        Field::new(f.name(), data_type, f.is_nullable()).with_metadata(meta)
    }

    /// A struct level's fields get their ids first, then their children (Iceberg's order).
    fn fields(&mut self, fields: &Fields, path: &[String]) -> Fields {
        let paths: Vec<Vec<String>> = fields
            .iter()
            .map(|f| {
                let mut p = path.to_vec();
                p.push(f.name().clone());
                p
            })
            .collect();
        let ids: Vec<i32> = paths.iter().map(|p| self.id(p)).collect();
        fields
            .iter()
            .zip(paths.iter().zip(ids))
            .map(|(f, (p, id))| {
                let t = self.data_type(f.data_type(), p);
                Arc::new(Self::with_id(f, t, id))
            })
            .collect()
    }

    fn data_type(&mut self, t: &DataType, path: &[String]) -> DataType {
        let child = |name: &str| {
            let mut p = path.to_vec();
            p.push(name.into());
            p
        };
        match t {
            DataType::Struct(fs) => DataType::Struct(self.fields(fs, path)),
            DataType::List(item) | DataType::LargeList(item) => {
                let p = child("element");
                let id = self.id(&p);
                let inner = self.data_type(item.data_type(), &p);
                let item = Arc::new(Self::with_id(item, inner, id));
                match t {
                    DataType::List(_) => DataType::List(item),
                    _ => DataType::LargeList(item),
                }
            }
            DataType::Map(entries, sorted) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => {
                    let (pk, pv) = (child("key"), child("value"));
                    let (ik, iv) = (self.id(&pk), self.id(&pv));
                    let tk = self.data_type(kv[0].data_type(), &pk);
                    let tv = self.data_type(kv[1].data_type(), &pv);
                    let kv: Fields = vec![
                        Arc::new(Self::with_id(&kv[0], tk, ik)),
                        Arc::new(Self::with_id(&kv[1], tv, iv)),
                    ]
                    .into();
                    let entries = Field::new(entries.name(), DataType::Struct(kv), false);
                    DataType::Map(Arc::new(entries), *sorted)
                }
                _ => t.clone(),
            },
            _ => t.clone(),
        }
    }
}

/// `schema` with a field id on every field, nested ones too: a column of `base` keeps its id
/// (by name and position in the nesting), any other gets the next id after the largest of
/// `base`. Without a base (a first schema), ids count from 1 in Iceberg's order.
pub fn with_field_ids(schema: &Schema, base: Option<&Schema>) -> Schema {
    let known = base.map(ids_of).unwrap_or_default();
    let next = known.values().copied().max().unwrap_or(0) + 1;
    let mut a = Assigner { known, next };
    Schema::new_with_metadata(a.fields(schema.fields(), &[]), schema.metadata().clone())
}

/// Columns whose field id in `next` disagrees with `base` (both with ids): a column of both
/// with another id, or a new column with an id `base` gives another column. Such files were
/// numbered on top of an older version than the one they are published on (another run added
/// columns meanwhile). Empty when either schema has no ids.
pub fn id_conflicts(base: &Schema, next: &Schema) -> Vec<String> {
    if !has_field_ids(base) || !has_field_ids(next) {
        return Vec::new();
    }
    let (old, new) = (ids_of(base), ids_of(next));
    let owner: BTreeMap<i32, &Vec<String>> = old.iter().map(|(p, id)| (*id, p)).collect();
    new.iter()
        .filter(|(path, id)| match old.get(*path) {
            Some(o) => o != *id,
            None => owner.contains_key(id),
        })
        .map(|(path, id)| {
            format!(
                "`{}` has field id {id} in this run's files, {} in the version it is published on",
                path.join("."),
                old.get(path).map_or_else(
                    || format!("which is `{}`'s", owner[id].join(".")),
                    |o| o.to_string()
                )
            )
        })
        .collect()
}

/// The largest field id of `schema` (0 for none).
pub fn last_column_id(schema: &Schema) -> i32 {
    ids_of(schema).values().copied().max().unwrap_or(0)
}

/// The id of top-level column `name`.
pub fn column_id(schema: &Schema, name: &str) -> Option<i32> {
    ids_of(schema).get(&vec![name.to_string()]).copied()
}

/// An Iceberg primitive type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prim {
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Date,
    /// Microseconds, without (`false`) or with a time zone (UTC).
    Timestamp(bool),
    String,
    Binary,
    Decimal(u8, i8),
    Fixed(i32),
}

impl Prim {
    fn name(self) -> String {
        match self {
            Prim::Boolean => "boolean".into(),
            Prim::Int => "int".into(),
            Prim::Long => "long".into(),
            Prim::Float => "float".into(),
            Prim::Double => "double".into(),
            Prim::Date => "date".into(),
            Prim::Timestamp(false) => "timestamp".into(),
            Prim::Timestamp(true) => "timestamptz".into(),
            Prim::String => "string".into(),
            Prim::Binary => "binary".into(),
            Prim::Decimal(p, s) => format!("decimal({p}, {s})"),
            Prim::Fixed(n) => format!("fixed[{n}]"),
        }
    }

    /// The Avro type of a value of this type (in a partition tuple).
    pub fn avro(self, name: &str) -> Value {
        match self {
            Prim::Boolean => "boolean".into(),
            Prim::Int => "int".into(),
            Prim::Long => "long".into(),
            Prim::Float => "float".into(),
            Prim::Double => "double".into(),
            Prim::Date => json!({"type": "int", "logicalType": "date"}),
            Prim::Timestamp(utc) => {
                json!({"type": "long", "logicalType": "timestamp-micros", "adjust-to-utc": utc})
            }
            Prim::String => "string".into(),
            Prim::Binary => "bytes".into(),
            Prim::Decimal(p, s) => json!({
                "type": "fixed", "name": format!("decimal_{name}"), "size": decimal_bytes(p),
                "logicalType": "decimal", "precision": p, "scale": s,
            }),
            Prim::Fixed(n) => json!({"type": "fixed", "name": format!("fixed_{name}"), "size": n}),
        }
    }
}

/// Bytes of the smallest two's complement integer that holds every `precision`-digit number.
fn decimal_bytes(precision: u8) -> usize {
    let max = 10f64.powi(i32::from(precision));
    (1..=16).find(|n| 2f64.powi(8 * n - 1) >= max).unwrap_or(16) as usize
}

/// The Iceberg primitive of an Arrow type (`None`: nested, or refused by [`check_type`]).
/// Second and millisecond timestamps count as microseconds: projected tables write them so.
pub fn prim(t: &DataType) -> Option<Prim> {
    Some(match t {
        DataType::Boolean => Prim::Boolean,
        DataType::Int8 | DataType::Int16 | DataType::Int32 => Prim::Int,
        DataType::Int64 => Prim::Long,
        DataType::Float32 => Prim::Float,
        DataType::Float64 => Prim::Double,
        DataType::Date32 => Prim::Date,
        DataType::Timestamp(TimeUnit::Nanosecond, _) => return None,
        DataType::Timestamp(_, tz) => Prim::Timestamp(tz.is_some()),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Prim::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Prim::Binary,
        DataType::Decimal128(p, s) if *s >= 0 && *p <= 38 => Prim::Decimal(*p, *s),
        DataType::FixedSizeBinary(n) => Prim::Fixed(*n),
        _ => return None,
    })
}

fn refuse(column: &str, t: &DataType, hint: &str) -> IcebergError {
    IcebergError::Type {
        column: column.to_string(),
        data_type: t.to_string(),
        hint: hint.to_string(),
    }
}

/// Why an Iceberg v2 table cannot hold a column of type `t`, if it cannot.
fn check_type(column: &str, t: &DataType) -> Result<(), IcebergError> {
    if prim(t).is_some() {
        return Ok(());
    }
    match t {
        DataType::Struct(fs) => fs
            .iter()
            .try_for_each(|f| check_type(column, f.data_type())),
        DataType::List(f) | DataType::LargeList(f) => check_type(column, f.data_type()),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => kv
                .iter()
                .try_for_each(|f| check_type(column, f.data_type())),
            _ => Err(refuse(column, t, "a map without key and value fields")),
        },
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Err(refuse(
            column,
            t,
            "Iceberg v2 timestamps are microseconds; cast it in the transform, e.g. \
             arrow_cast(col, 'Timestamp(Microsecond, None)') (or 'Timestamp(Microsecond, \
             Some(\"UTC\"))' for a time zone)",
        )),
        DataType::UInt8 | DataType::UInt16 => Err(refuse(
            column,
            t,
            "Iceberg has no unsigned integers; cast it to INT",
        )),
        DataType::UInt32 | DataType::UInt64 => Err(refuse(
            column,
            t,
            "Iceberg has no unsigned integers; cast it to BIGINT (or DECIMAL(20,0) for UBIGINT)",
        )),
        DataType::Null => Err(refuse(
            column,
            t,
            "give the column a type, e.g. CAST(NULL AS VARCHAR)",
        )),
        DataType::Date64 => Err(refuse(column, t, "cast it to DATE")),
        DataType::Decimal128(..) | DataType::Decimal256(..) => Err(refuse(
            column,
            t,
            "Iceberg decimals have at most 38 digits and a scale >= 0",
        )),
        _ => Err(refuse(
            column,
            t,
            "cast it to a string, integer, decimal, date or timestamp",
        )),
    }
}

/// Every column of `schema` that an Iceberg v2 table cannot hold.
pub fn check_schema(schema: &Schema) -> Vec<IcebergError> {
    schema
        .fields()
        .iter()
        .filter_map(|f| check_type(f.name(), f.data_type()).err())
        .collect()
}

fn type_json(t: &DataType) -> Value {
    if let Some(p) = prim(t) {
        return p.name().into();
    }
    match t {
        DataType::Struct(fs) => json!({"type": "struct", "fields": fields_json(fs)}),
        DataType::List(f) | DataType::LargeList(f) => json!({
            "type": "list",
            "element-id": id_of(f).unwrap_or(0),
            "element": type_json(f.data_type()),
            "element-required": !f.is_nullable(),
        }),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => json!({
                "type": "map",
                "key-id": id_of(&kv[0]).unwrap_or(0),
                "key": type_json(kv[0].data_type()),
                "value-id": id_of(&kv[1]).unwrap_or(0),
                "value": type_json(kv[1].data_type()),
                "value-required": !kv[1].is_nullable(),
            }),
            _ => Value::Null,
        },
        _ => Value::Null,
    }
}

fn fields_json(fields: &Fields) -> Vec<Value> {
    fields
        .iter()
        .map(|f| {
            json!({
                "id": id_of(f).unwrap_or(0),
                "name": f.name(),
                "required": !f.is_nullable(),
                "type": type_json(f.data_type()),
            })
        })
        .collect()
}

/// `schema` with its ids (its own, or by position).
pub fn numbered(schema: &Schema) -> Schema {
    if has_field_ids(schema) {
        schema.clone()
    } else {
        with_field_ids(schema, None)
    }
}

/// The Iceberg schema (a struct with `schema-id`) of an Arrow schema. Checked types only.
pub fn schema_json(schema: &Schema, schema_id: i32) -> Value {
    let schema = numbered(schema);
    json!({"type": "struct", "schema-id": schema_id, "fields": fields_json(schema.fields())})
}

/// `schema.name-mapping.default`: every field id with its name, so that files without field
/// ids are read by name.
pub fn name_mapping(schema: &Schema) -> Value {
    fn mapping(fields: &Fields) -> Vec<Value> {
        fields
            .iter()
            .map(|f| {
                let mut m = json!({"field-id": id_of(f).unwrap_or(0), "names": [f.name()]});
                let nested = nested_mapping(f.data_type());
                if !nested.is_empty() {
                    m["fields"] = Value::Array(nested);
                }
                m
            })
            .collect()
    }
    fn nested_mapping(t: &DataType) -> Vec<Value> {
        match t {
            DataType::Struct(fs) => mapping(fs),
            DataType::List(f) | DataType::LargeList(f) => {
                let mut m = json!({"field-id": id_of(f).unwrap_or(0), "names": ["element"]});
                let nested = nested_mapping(f.data_type());
                if !nested.is_empty() {
                    m["fields"] = Value::Array(nested);
                }
                vec![m]
            }
            DataType::Map(entries, _) => match entries.data_type() {
                DataType::Struct(kv) if kv.len() == 2 => kv
                    .iter()
                    .zip(["key", "value"])
                    .map(|(f, name)| {
                        let mut m = json!({"field-id": id_of(f).unwrap_or(0), "names": [name]});
                        let nested = nested_mapping(f.data_type());
                        if !nested.is_empty() {
                            m["fields"] = Value::Array(nested);
                        }
                        m
                    })
                    .collect(),
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }
    Value::Array(mapping(numbered(schema).fields()))
}

/// A typed value, for partition tuples, bounds and their order.
#[derive(Debug, Clone, PartialEq, PartialOrd)]
pub enum Typed {
    Bool(bool),
    /// int, long, date (days), timestamps (microseconds).
    Int(i64),
    Decimal(i128),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
}

impl Typed {
    /// Iceberg's single-value serialization (bounds, partition summaries).
    pub fn bound(&self, p: Prim) -> Vec<u8> {
        match (self, p) {
            (Typed::Bool(b), _) => vec![u8::from(*b)],
            (Typed::Int(v), Prim::Int | Prim::Date) => (*v as i32).to_le_bytes().to_vec(),
            (Typed::Int(v), _) => v.to_le_bytes().to_vec(),
            (Typed::Float(v), Prim::Float) => (*v as f32).to_le_bytes().to_vec(),
            (Typed::Float(v), _) => v.to_le_bytes().to_vec(),
            (Typed::Decimal(v), _) => minimal_be(*v),
            (Typed::Str(s), _) => s.as_bytes().to_vec(),
            (Typed::Bytes(b), _) => b.clone(),
        }
    }

    /// The Avro value of this value in a partition tuple of type `p`.
    pub fn datum(&self, p: Prim) -> Datum {
        match (self, p) {
            (Typed::Bool(b), _) => Datum::Bool(*b),
            (Typed::Int(v), Prim::Int | Prim::Date) => Datum::Int(*v as i32),
            (Typed::Int(v), _) => Datum::Long(*v),
            (Typed::Float(v), Prim::Float) => Datum::Float(*v as f32),
            (Typed::Float(v), _) => Datum::Double(*v),
            (Typed::Decimal(v), Prim::Decimal(precision, _)) => {
                let n = decimal_bytes(precision);
                let full = v.to_be_bytes();
                Datum::Bytes(full[16 - n..].to_vec())
            }
            (Typed::Decimal(v), _) => Datum::Bytes(minimal_be(*v)),
            (Typed::Str(s), _) => Datum::string(s),
            (Typed::Bytes(b), _) => Datum::Bytes(b.clone()),
        }
    }
}

/// The shortest big-endian two's complement bytes of `v`.
fn minimal_be(v: i128) -> Vec<u8> {
    let full = v.to_be_bytes();
    let mut start = 0;
    while start < 15 {
        let (b, next) = (full[start], full[start + 1]);
        if (b == 0 && next & 0x80 == 0) || (b == 0xff && next & 0x80 != 0) {
            start += 1;
        } else {
            break;
        }
    }
    full[start..].to_vec()
}

/// A decimal's text as its unscaled integer at `scale`.
fn parse_decimal(text: &str, scale: i8) -> Option<i128> {
    let (neg, digits) = match text.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (int, frac) = digits.split_once('.').unwrap_or((digits, ""));
    let scale = scale.max(0) as usize;
    if frac.len() > scale || (int.is_empty() && frac.is_empty()) {
        return None;
    }
    let all = format!("{int}{frac:0<scale$}");
    let v: i128 = if all.is_empty() { 0 } else { all.parse().ok()? };
    Some(if neg { -v } else { v })
}

fn micros_of_text(text: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.naive_utc())
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S%.f"))
        .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%d %H:%M:%S%.f"))
        .ok()
        .map(|t| t.and_utc().timestamp_micros())
}

/// A partition value from the manifest's text (as the writer rendered it).
pub fn partition_value(p: Prim, text: &str) -> Option<Typed> {
    Some(match p {
        Prim::Boolean => Typed::Bool(text.parse().ok()?),
        Prim::Int | Prim::Long => Typed::Int(text.parse().ok()?),
        Prim::Float | Prim::Double => Typed::Float(text.parse().ok()?),
        Prim::Date => Typed::Int(
            NaiveDate::parse_from_str(text, "%Y-%m-%d")
                .ok()?
                .signed_duration_since(NaiveDate::from_ymd_opt(1970, 1, 1)?)
                .num_days(),
        ),
        Prim::Timestamp(_) => Typed::Int(micros_of_text(text)?),
        Prim::String => Typed::Str(text.to_string()),
        Prim::Decimal(_, s) => Typed::Decimal(parse_decimal(text, s)?),
        Prim::Binary | Prim::Fixed(_) => Typed::Bytes(text.as_bytes().to_vec()),
    })
}

/// A footer statistic (physical form, see [`ColumnStats`]) as a typed bound of a column of
/// Arrow type `t`; `upper`: a maximum (a string too long to keep is left out then).
pub fn stat_value(t: &DataType, v: &Value, upper: bool) -> Option<Typed> {
    let p = prim(t)?;
    Some(match p {
        Prim::Boolean => Typed::Bool(v.as_bool()?),
        Prim::Int | Prim::Long | Prim::Date => Typed::Int(v.as_i64()?),
        Prim::Float | Prim::Double => {
            let f = v.as_f64()?;
            if f.is_nan() {
                return None;
            }
            Typed::Float(f)
        }
        Prim::Timestamp(_) => {
            let raw = v.as_i64()?;
            Typed::Int(match t {
                DataType::Timestamp(TimeUnit::Second, _) => raw.checked_mul(1_000_000)?,
                DataType::Timestamp(TimeUnit::Millisecond, _) => raw.checked_mul(1_000)?,
                _ => raw,
            })
        }
        Prim::Decimal(..) => Typed::Decimal(v.as_str()?.parse().ok()?),
        Prim::String => {
            let s = v.as_str()?;
            if s.chars().count() <= BOUND_CHARS {
                Typed::Str(s.to_string())
            } else if upper {
                return None;
            } else {
                Typed::Str(s.chars().take(BOUND_CHARS).collect())
            }
        }
        Prim::Binary | Prim::Fixed(_) => return None,
    })
}

/// Column metrics of one data file: value counts, null counts, lower and upper bounds, keyed
/// by field id (top-level primitive columns; only exact footer values).
pub struct Metrics {
    pub values: Vec<(i32, i64)>,
    pub nulls: Vec<(i32, i64)>,
    pub lower: Vec<(i32, Vec<u8>)>,
    pub upper: Vec<(i32, Vec<u8>)>,
}

pub fn metrics(schema: &Schema, rows: u64, stats: &BTreeMap<String, ColumnStats>) -> Metrics {
    let mut m = Metrics {
        values: Vec::new(),
        nulls: Vec::new(),
        lower: Vec::new(),
        upper: Vec::new(),
    };
    for f in numbered(schema).fields() {
        let (Some(id), Some(p)) = (id_of(f), prim(f.data_type())) else {
            continue;
        };
        let Some(s) = stats.get(f.name()) else {
            continue;
        };
        m.values.push((id, rows as i64));
        if let Some(n) = s.nulls {
            m.nulls.push((id, n as i64));
        }
        if let Some(v) = s
            .min
            .as_ref()
            .and_then(|v| stat_value(f.data_type(), v, false))
        {
            m.lower.push((id, v.bound(p)));
        }
        if let Some(v) = s
            .max
            .as_ref()
            .and_then(|v| stat_value(f.data_type(), v, true))
        {
            m.upper.push((id, v.bound(p)));
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(name: &str, t: DataType) -> Field {
        Field::new(name, t, true)
    }

    #[test]
    fn ids_are_kept_and_new_columns_get_new_ones() {
        let point = DataType::Struct(
            vec![field("x", DataType::Float64), field("y", DataType::Float64)].into(),
        );
        let first = Schema::new(vec![
            field("id", DataType::Int64),
            field("at", point.clone()),
            field(
                "tags",
                DataType::List(Arc::new(field("item", DataType::Utf8))),
            ),
        ]);
        let one = with_field_ids(&first, None);
        let ids = ids_of(&one);
        // Top level first, then nested, as Iceberg numbers them.
        assert_eq!(ids[&vec!["id".to_string()]], 1);
        assert_eq!(ids[&vec!["at".to_string()]], 2);
        assert_eq!(ids[&vec!["tags".to_string()]], 3);
        assert_eq!(ids[&vec!["at".to_string(), "x".to_string()]], 4);
        assert_eq!(ids[&vec!["tags".to_string(), "element".to_string()]], 6);
        // A schema without ids numbers like a first one.
        assert_eq!(ids_of(&first), ids);

        let second = Schema::new(vec![
            field("new", DataType::Utf8),
            field("id", DataType::Int64),
            field("at", point),
            field(
                "tags",
                DataType::List(Arc::new(field("item", DataType::Utf8))),
            ),
        ]);
        let two = with_field_ids(&second, Some(&one));
        let ids2 = ids_of(&two);
        assert_eq!(ids2[&vec!["id".to_string()]], 1);
        assert_eq!(ids2[&vec!["new".to_string()]], 7);
        assert_eq!(last_column_id(&two), 7);
        // Based on a schema without ids: the same ids, by position.
        assert_eq!(ids_of(&with_field_ids(&second, Some(&first))), ids2);
        assert!(id_conflicts(&one, &two).is_empty());
        // Numbered on top of `one` while another run added `other` as 7: a conflict.
        let third = with_field_ids(
            &Schema::new(vec![field("other", DataType::Utf8)]),
            Some(&one),
        );
        let base = Schema::new([one.fields().to_vec(), third.fields().to_vec()].concat());
        let problems = id_conflicts(&base, &two);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(
            problems[0].contains("`new`") && problems[0].contains("`other`"),
            "{problems:?}"
        );
        let json = schema_json(&two, 1);
        assert_eq!(json["fields"][0]["id"], 7);
        assert_eq!(json["fields"][3]["type"]["element-id"], 6);
        let mapping = name_mapping(&two);
        assert_eq!(mapping[2]["fields"][1]["names"][0], "y");
    }

    #[test]
    fn unsupported_types_are_named_with_a_cast() {
        let s = Schema::new(vec![
            field("ok", DataType::Int32),
            field("ns", DataType::Timestamp(TimeUnit::Nanosecond, None)),
            field("u", DataType::UInt64),
        ]);
        let problems = check_schema(&s);
        assert_eq!(problems.len(), 2);
        assert!(problems[0].to_string().contains("`ns`"));
        assert!(problems[1].to_string().contains("BIGINT"));
    }

    #[test]
    fn values_and_bounds_serialize_as_the_spec_says() {
        assert_eq!(
            partition_value(Prim::Date, "1970-01-03"),
            Some(Typed::Int(2))
        );
        assert_eq!(
            partition_value(Prim::Decimal(9, 2), "-7.25"),
            Some(Typed::Decimal(-725))
        );
        assert_eq!(
            partition_value(Prim::Decimal(9, 2), "3.5"),
            Some(Typed::Decimal(350))
        );
        assert_eq!(partition_value(Prim::Decimal(9, 2), "3.555"), None);
        assert_eq!(
            partition_value(Prim::Timestamp(true), "1970-01-01T00:00:01Z"),
            Some(Typed::Int(1_000_000))
        );
        assert_eq!(Typed::Int(2).bound(Prim::Date), vec![2, 0, 0, 0]);
        assert_eq!(
            Typed::Int(2).bound(Prim::Long),
            vec![2, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            Typed::Decimal(-725).bound(Prim::Decimal(9, 2)),
            vec![0xfd, 0x2b]
        );
        assert_eq!(
            Typed::Decimal(128).bound(Prim::Decimal(9, 2)),
            vec![0x00, 0x80]
        );
        assert_eq!(decimal_bytes(9), 4);
        assert_eq!(decimal_bytes(38), 16);
        assert_eq!(
            Typed::Decimal(-725).datum(Prim::Decimal(9, 2)),
            Datum::Bytes(vec![0xff, 0xff, 0xfd, 0x2b])
        );
        let ms = DataType::Timestamp(TimeUnit::Millisecond, None);
        assert_eq!(
            stat_value(&ms, &Value::from(5), false),
            Some(Typed::Int(5000))
        );
        let long = "x".repeat(100);
        assert_eq!(
            stat_value(&DataType::Utf8, &Value::from(long.clone()), true),
            None
        );
        assert_eq!(
            stat_value(&DataType::Utf8, &Value::from(long), false),
            Some(Typed::Str("x".repeat(64)))
        );
    }
}
