//! The few parts of Apache Avro that Iceberg's manifests and manifest lists need: the binary
//! encoding of records, arrays, unions and primitives, and the object container file (one block,
//! no compression), both ways. Decoding is driven by the writer's schema, which the file carries.
//!
//! Deterministic: the same values and metadata give the same bytes (metadata keys sorted, the
//! sync marker derived from the content).

use std::collections::BTreeMap;

use serde_json::Value;
use sha2::{Digest, Sha256};

const MAGIC: &[u8; 4] = b"Obj\x01";

/// A value in Avro's data model.
#[derive(Debug, Clone, PartialEq)]
pub enum Datum {
    Null,
    Bool(bool),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    /// `bytes`, `string` and `fixed` values.
    Bytes(Vec<u8>),
    Record(Vec<Datum>),
    Array(Vec<Datum>),
    /// The branch index in the union and its value.
    Union(u32, Box<Datum>),
}

impl Datum {
    pub fn string(s: &str) -> Datum {
        Datum::Bytes(s.as_bytes().to_vec())
    }

    /// `["null", T]` with a value (branch 1) or without (branch 0).
    pub fn optional(v: Option<Datum>) -> Datum {
        match v {
            Some(v) => Datum::Union(1, Box::new(v)),
            None => Datum::Union(0, Box::new(Datum::Null)),
        }
    }

    /// The value of an optional (or the value itself).
    pub fn some(&self) -> Option<&Datum> {
        match self {
            Datum::Union(_, v) if **v == Datum::Null => None,
            Datum::Union(_, v) => Some(v),
            Datum::Null => None,
            v => Some(v),
        }
    }

    pub fn as_long(&self) -> Option<i64> {
        match self.some()? {
            Datum::Long(v) => Some(*v),
            Datum::Int(v) => Some(i64::from(*v)),
            _ => None,
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self.some()? {
            Datum::Bytes(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }

    pub fn field(&self, i: usize) -> Option<&Datum> {
        match self.some()? {
            Datum::Record(f) => f.get(i),
            _ => None,
        }
    }
}

/// Errors reading an Avro file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AvroError {
    #[error("not an Avro object container file")]
    Magic,
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("unsupported or invalid schema: {0}")]
    Schema(String),
    #[error("invalid data at byte {at}: {message}")]
    Data { at: usize, message: String },
}

/// An Avro schema, parsed from its JSON form (named types are not referenced again in the files
/// this module reads, so names are ignored).
#[derive(Debug, Clone, PartialEq)]
enum Schema {
    Null,
    Boolean,
    Int,
    Long,
    Float,
    Double,
    Bytes,
    Fixed(usize),
    Record(Vec<Schema>),
    Array(Box<Schema>),
    Map(Box<Schema>),
    Union(Vec<Schema>),
}

fn parse_schema(v: &Value) -> Result<Schema, AvroError> {
    let bad = || AvroError::Schema(v.to_string());
    Ok(match v {
        Value::String(s) => primitive(s).ok_or_else(bad)?,
        Value::Array(branches) => Schema::Union(
            branches
                .iter()
                .map(parse_schema)
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) => match o.get("type").ok_or_else(bad)? {
            Value::String(t) => match t.as_str() {
                "record" => Schema::Record(
                    o.get("fields")
                        .and_then(Value::as_array)
                        .ok_or_else(bad)?
                        .iter()
                        .map(|f| parse_schema(f.get("type").ok_or_else(bad)?))
                        .collect::<Result<_, _>>()?,
                ),
                "array" => Schema::Array(Box::new(parse_schema(o.get("items").ok_or_else(bad)?)?)),
                "map" => Schema::Map(Box::new(parse_schema(o.get("values").ok_or_else(bad)?)?)),
                "fixed" => {
                    Schema::Fixed(o.get("size").and_then(Value::as_u64).ok_or_else(bad)? as usize)
                }
                "enum" => Schema::Int,
                p => primitive(p).ok_or_else(bad)?,
            },
            nested => parse_schema(nested)?,
        },
        _ => return Err(bad()),
    })
}

fn primitive(name: &str) -> Option<Schema> {
    Some(match name {
        "null" => Schema::Null,
        "boolean" => Schema::Boolean,
        "int" => Schema::Int,
        "long" => Schema::Long,
        "float" => Schema::Float,
        "double" => Schema::Double,
        "bytes" | "string" => Schema::Bytes,
        _ => return None,
    })
}

fn put_long(out: &mut Vec<u8>, v: i64) {
    let mut z = ((v << 1) ^ (v >> 63)) as u64;
    loop {
        let b = (z & 0x7f) as u8;
        z >>= 7;
        if z == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_long(out, b.len() as i64);
    out.extend_from_slice(b);
}

/// Appends the binary encoding of `d` (every byte value with its length).
fn encode(out: &mut Vec<u8>, d: &Datum) {
    match d {
        Datum::Null => {}
        Datum::Bool(b) => out.push(u8::from(*b)),
        Datum::Int(v) => put_long(out, i64::from(*v)),
        Datum::Long(v) => put_long(out, *v),
        Datum::Float(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Double(v) => out.extend_from_slice(&v.to_le_bytes()),
        Datum::Bytes(b) => put_bytes(out, b),
        Datum::Record(fields) => fields.iter().for_each(|f| encode(out, f)),
        Datum::Array(items) => {
            if !items.is_empty() {
                put_long(out, items.len() as i64);
                items.iter().for_each(|i| encode(out, i));
            }
            out.push(0);
        }
        Datum::Union(i, v) => {
            put_long(out, i64::from(*i));
            encode(out, v);
        }
    }
}

/// A byte key of `d` (equal values, equal keys), for sets of values.
pub fn key(d: &Datum) -> Vec<u8> {
    let mut out = Vec::new();
    encode(&mut out, d);
    out
}

/// Encodes `d` against `schema`, so that fixed values are written raw.
fn encode_with(out: &mut Vec<u8>, d: &Datum, schema: &Schema) {
    match (schema, d) {
        (Schema::Fixed(_), Datum::Bytes(b)) => out.extend_from_slice(b),
        (Schema::Record(fs), Datum::Record(ds)) => {
            for (f, d) in fs.iter().zip(ds) {
                encode_with(out, d, f);
            }
        }
        (Schema::Array(item), Datum::Array(ds)) => {
            if !ds.is_empty() {
                put_long(out, ds.len() as i64);
                ds.iter().for_each(|d| encode_with(out, d, item));
            }
            out.push(0);
        }
        (Schema::Union(bs), Datum::Union(i, v)) => {
            put_long(out, i64::from(*i));
            match bs.get(*i as usize) {
                Some(b) => encode_with(out, v, b),
                None => encode(out, v),
            }
        }
        (_, d) => encode(out, d),
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], AvroError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|&e| e <= self.bytes.len())
            .ok_or(AvroError::Truncated(self.at))?;
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn long(&mut self) -> Result<i64, AvroError> {
        let mut z: u64 = 0;
        for shift in (0..64).step_by(7) {
            let b = self.take(1)?[0];
            z |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(((z >> 1) as i64) ^ -((z & 1) as i64));
            }
        }
        Err(self.invalid("varint longer than 10 bytes"))
    }

    fn len(&mut self) -> Result<usize, AvroError> {
        let n = self.long()?;
        usize::try_from(n).map_err(|_| self.invalid("negative length"))
    }

    fn bytes(&mut self) -> Result<Vec<u8>, AvroError> {
        let n = self.len()?;
        Ok(self.take(n)?.to_vec())
    }

    fn invalid(&self, message: &str) -> AvroError {
        AvroError::Data {
            at: self.at,
            message: message.to_string(),
        }
    }

    /// Block counts of arrays and maps (a negative count is followed by the block's size).
    fn block_count(&mut self) -> Result<usize, AvroError> {
        let n = self.long()?;
        if n < 0 {
            self.long()?;
        }
        usize::try_from(n.unsigned_abs()).map_err(|_| self.invalid("block too large"))
    }

    fn datum(&mut self, schema: &Schema) -> Result<Datum, AvroError> {
        Ok(match schema {
            Schema::Null => Datum::Null,
            Schema::Boolean => Datum::Bool(self.take(1)?[0] != 0),
            Schema::Int => Datum::Int(
                i32::try_from(self.long()?).map_err(|_| self.invalid("int out of range"))?,
            ),
            Schema::Long => Datum::Long(self.long()?),
            Schema::Float => Datum::Float(f32::from_le_bytes(self.take(4)?.try_into().unwrap())),
            Schema::Double => Datum::Double(f64::from_le_bytes(self.take(8)?.try_into().unwrap())),
            Schema::Bytes => Datum::Bytes(self.bytes()?),
            Schema::Fixed(n) => Datum::Bytes(self.take(*n)?.to_vec()),
            Schema::Record(fields) => Datum::Record(
                fields
                    .iter()
                    .map(|f| self.datum(f))
                    .collect::<Result<_, _>>()?,
            ),
            Schema::Array(item) => {
                let mut items = Vec::new();
                loop {
                    let n = self.block_count()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        items.push(self.datum(item)?);
                    }
                }
                Datum::Array(items)
            }
            Schema::Map(value) => {
                let mut items = Vec::new();
                loop {
                    let n = self.block_count()?;
                    if n == 0 {
                        break;
                    }
                    for _ in 0..n {
                        let k = Datum::Bytes(self.bytes()?);
                        items.push(Datum::Record(vec![k, self.datum(value)?]));
                    }
                }
                Datum::Array(items)
            }
            Schema::Union(branches) => {
                let i = self.long()?;
                let b = usize::try_from(i)
                    .ok()
                    .and_then(|i| branches.get(i))
                    .ok_or_else(|| self.invalid("union branch out of range"))?;
                Datum::Union(i as u32, Box::new(self.datum(b)?))
            }
        })
    }
}

/// An object container file: `schema` (Avro JSON), key-value `metadata` (besides
/// `avro.schema` and `avro.codec`) and the records.
pub fn write_file(
    schema: &Value,
    metadata: &BTreeMap<String, String>,
    records: &[Datum],
) -> Vec<u8> {
    let parsed = parse_schema(schema).expect("the writers' schemas are valid");
    let schema_text = schema.to_string();
    let mut meta: BTreeMap<&str, &[u8]> = metadata
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_bytes()))
        .collect();
    meta.insert("avro.schema", schema_text.as_bytes());
    meta.insert("avro.codec", b"null");
    let mut data = Vec::new();
    for r in records {
        encode_with(&mut data, r, &parsed);
    }
    let mut digest = Sha256::new();
    digest.update(schema_text.as_bytes());
    for (k, v) in &meta {
        digest.update(k.as_bytes());
        digest.update(v);
    }
    digest.update(&data);
    let sync: [u8; 16] = digest.finalize()[..16].try_into().unwrap();

    let mut out = Vec::with_capacity(data.len() + schema_text.len() + 256);
    out.extend_from_slice(MAGIC);
    put_long(&mut out, meta.len() as i64);
    for (k, v) in &meta {
        put_bytes(&mut out, k.as_bytes());
        put_bytes(&mut out, v);
    }
    out.push(0);
    out.extend_from_slice(&sync);
    if !records.is_empty() {
        put_long(&mut out, records.len() as i64);
        put_long(&mut out, data.len() as i64);
        out.extend_from_slice(&data);
        out.extend_from_slice(&sync);
    }
    out
}

/// A container file read back: its metadata (including `avro.schema`) and records.
#[derive(Debug)]
pub struct File {
    pub metadata: BTreeMap<String, String>,
    pub records: Vec<Datum>,
}

/// Reads an object container file without compression.
pub fn read_file(bytes: &[u8]) -> Result<File, AvroError> {
    if !bytes.starts_with(MAGIC) {
        return Err(AvroError::Magic);
    }
    let mut r = Reader { bytes, at: 4 };
    let mut metadata = BTreeMap::new();
    loop {
        let n = r.block_count()?;
        if n == 0 {
            break;
        }
        for _ in 0..n {
            let k = String::from_utf8_lossy(&r.bytes()?).into_owned();
            let v = String::from_utf8_lossy(&r.bytes()?).into_owned();
            metadata.insert(k, v);
        }
    }
    if metadata.get("avro.codec").is_some_and(|c| c != "null") {
        return Err(AvroError::Schema(format!(
            "codec {} (only uncompressed files are read)",
            metadata["avro.codec"]
        )));
    }
    let schema_json: Value = metadata
        .get("avro.schema")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| AvroError::Schema("no avro.schema".into()))?;
    let schema = parse_schema(&schema_json)?;
    let sync = r.take(16)?.to_vec();
    let mut records = Vec::new();
    while r.at < bytes.len() {
        let n = r.len()?;
        let _size = r.len()?;
        for _ in 0..n {
            records.push(r.datum(&schema)?);
        }
        if r.take(16)? != sync.as_slice() {
            return Err(r.invalid("sync marker does not match"));
        }
    }
    Ok(File { metadata, records })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({"type": "record", "name": "r", "fields": [
            {"name": "a", "type": "int"},
            {"name": "b", "type": ["null", "long"]},
            {"name": "c", "type": "string"},
            {"name": "d", "type": {"type": "array", "items": {"type": "record", "name": "kv",
                "fields": [{"name": "key", "type": "int"}, {"name": "value", "type": "bytes"}]}}},
            {"name": "e", "type": {"type": "fixed", "name": "f", "size": 3}},
            {"name": "g", "type": "boolean"},
            {"name": "h", "type": "double"}
        ]})
    }

    fn record(i: i32) -> Datum {
        Datum::Record(vec![
            Datum::Int(i),
            Datum::optional((i % 2 == 0).then_some(Datum::Long(-(i64::from(i)) << 40))),
            Datum::string(&format!("row {i} ü")),
            Datum::Array(
                (0..i % 3)
                    .map(|k| Datum::Record(vec![Datum::Int(k), Datum::Bytes(vec![k as u8; 2])]))
                    .collect(),
            ),
            Datum::Bytes(vec![1, 2, i as u8]),
            Datum::Bool(i % 3 == 0),
            Datum::Double(f64::from(i) / 3.0),
        ])
    }

    #[test]
    fn files_read_back_and_are_deterministic() {
        let records: Vec<Datum> = (-70..70).map(record).collect();
        let meta = BTreeMap::from([("format-version".to_string(), "2".to_string())]);
        let bytes = write_file(&schema(), &meta, &records);
        assert_eq!(bytes, write_file(&schema(), &meta, &records));
        let file = read_file(&bytes).unwrap();
        assert_eq!(file.records, records);
        assert_eq!(file.metadata["format-version"], "2");
        assert_eq!(file.metadata["avro.codec"], "null");
        let empty = read_file(&write_file(&schema(), &meta, &[])).unwrap();
        assert!(empty.records.is_empty());
    }

    #[test]
    fn zigzag_matches_the_specification() {
        let enc = |v: i64| {
            let mut o = Vec::new();
            put_long(&mut o, v);
            o
        };
        assert_eq!(enc(0), [0]);
        assert_eq!(enc(-1), [1]);
        assert_eq!(enc(1), [2]);
        assert_eq!(enc(-64), [0x7f]);
        assert_eq!(enc(64), [0x80, 0x01]);
        assert_eq!(enc(i64::MIN).len(), 10);
    }

    #[test]
    fn damage_is_an_error() {
        let bytes = write_file(&schema(), &BTreeMap::new(), &[record(4)]);
        assert!(matches!(read_file(&bytes[1..]), Err(AvroError::Magic)));
        assert!(read_file(&bytes[..bytes.len() - 3]).is_err());
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        assert!(read_file(&bad).is_err());
    }
}
