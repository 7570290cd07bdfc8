//! `wap_key(a, b, ...)`: a surrogate key derived from business keys, the lowercase hex SHA-256 of
//! an unambiguous encoding of its arguments. Each argument, in order, adds to the hash:
//!
//! - NULL: the single byte `0x00`;
//! - any other value: the byte `0x01`, the length in bytes of its text (as `CAST(x AS VARCHAR)`
//!   writes it) as a big-endian `u64`, then that UTF-8 text.
//!
//! So `('a-b', 'c')` and `('a', 'b-c')` differ, NULL and `''` differ, and the same values give
//! the same key in every run, on every machine, whatever the order of the rows.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, StringArray, StringBuilder};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDFImpl, Signature, Volatility,
};
use sha2::{Digest, Sha256};

/// The SQL name of [`WapKey`].
pub const WAP_KEY: &str = "wap_key";

/// The `wap_key` function.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct WapKey {
    signature: Signature,
}

impl Default for WapKey {
    fn default() -> Self {
        WapKey {
            signature: Signature::variadic_any(Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for WapKey {
    fn name(&self) -> &str {
        WAP_KEY
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        Ok(ColumnarValue::Array(keys(&arrays, args.number_rows)?))
    }
}

/// The keys of `rows` rows of `arrays`.
pub fn keys(arrays: &[ArrayRef], rows: usize) -> DfResult<ArrayRef> {
    if arrays.is_empty() {
        return Err(DataFusionError::Plan(
            "wap_key() needs at least one argument".into(),
        ));
    }
    let texts = arrays
        .iter()
        .map(|a| {
            let t = cast(a, &DataType::Utf8)?;
            Ok(t.as_any()
                .downcast_ref::<StringArray>()
                .expect("cast to Utf8 gives a StringArray")
                .clone())
        })
        .collect::<DfResult<Vec<StringArray>>>()?;
    let mut out = StringBuilder::with_capacity(rows, rows * 64);
    let mut hex = [0u8; 64];
    for row in 0..rows {
        let mut h = Sha256::new();
        for t in &texts {
            if t.is_null(row) {
                h.update([0u8]);
            } else {
                let v = t.value(row).as_bytes();
                h.update([1u8]);
                h.update((v.len() as u64).to_be_bytes());
                h.update(v);
            }
        }
        for (i, b) in h.finalize().iter().enumerate() {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            hex[2 * i] = DIGITS[(b >> 4) as usize];
            hex[2 * i + 1] = DIGITS[(b & 15) as usize];
        }
        out.append_value(std::str::from_utf8(&hex).expect("hex is ASCII"));
    }
    Ok(Arc::new(out.finish()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Int64Array;

    fn key_of(arrays: Vec<ArrayRef>) -> Vec<String> {
        let out = keys(&arrays, arrays[0].len()).unwrap();
        let s = out.as_any().downcast_ref::<StringArray>().unwrap();
        (0..s.len()).map(|i| s.value(i).to_string()).collect()
    }

    #[test]
    fn separators_nulls_and_empty_strings_differ() {
        let a: ArrayRef = Arc::new(StringArray::from(vec![
            Some("a-b"),
            Some("a"),
            None,
            Some(""),
        ]));
        let b: ArrayRef = Arc::new(StringArray::from(vec![
            Some("c"),
            Some("b-c"),
            Some("x"),
            Some("x"),
        ]));
        let k = key_of(vec![a, b]);
        assert_eq!(k.len(), 4);
        assert_ne!(k[0], k[1]);
        assert_ne!(k[2], k[3]);
        assert!(
            k.iter()
                .all(|s| s.len() == 64 && s.chars().all(|c| c.is_ascii_hexdigit()))
        );
        // The documented encoding, by hand: 0x01, u64 BE length, bytes.
        let mut h = Sha256::new();
        h.update([1u8]);
        h.update(3u64.to_be_bytes());
        h.update(b"a-b");
        h.update([1u8]);
        h.update(1u64.to_be_bytes());
        h.update(b"c");
        assert_eq!(k[0], crate::manifest::hex(&h.finalize()));
    }

    #[test]
    fn numbers_hash_as_their_text() {
        let n: ArrayRef = Arc::new(Int64Array::from(vec![42]));
        let s: ArrayRef = Arc::new(StringArray::from(vec!["42"]));
        assert_eq!(key_of(vec![n]), key_of(vec![s]));
    }
}
