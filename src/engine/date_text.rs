//! `CAST(<date> AS <string>)` without chrono's formatter.
//!
//! Transforms often derive a partition value from a date that way (`substr(CAST(d AS VARCHAR),
//! 1, 7)` for a month). Arrow formats each date through `NaiveDate`'s `Debug` behind a
//! `dyn Write`, a cost paid for every row of such a transform. Dates of the
//! years 0000 to 9999 (in practice every date of a column) are written here as `YYYY-MM-DD`
//! straight into the string array; an array holding any other date (signed or five-digit years,
//! or beyond chrono's range) is cast by Arrow as before, so that the text, and the error, stay
//! exactly Arrow's. `TRY_CAST`, dictionary-encoded dates and target fields with metadata are
//! left to Arrow.
//!
//! [`DateCastRewrite`] swaps the cast for [`DateText`] while the plan is analysed; the
//! expression keeps its name.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, GenericStringArray, OffsetSizeTrait, StringViewArray,
};
use datafusion::arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Date32Type};
use datafusion::arrow::util::display::FormatOptions;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult};
use datafusion::logical_expr::expr::Cast;
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::{
    ColumnarValue, Expr, ExprSchemable, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Volatility,
};

/// Days from 1970-01-01 to 0000-01-01 and to 9999-12-31: the dates written as `YYYY-MM-DD`.
pub(super) const FIRST: i32 = -719_528;
pub(super) const LAST: i32 = 2_932_896;

/// Bytes of `YYYY-MM-DD`.
const WIDTH: usize = 10;

/// Rewrites `CAST(e AS Utf8 | Utf8View | LargeUtf8)` of a `Date32` expression `e` into
/// [`DateText`]. Register with `SessionContext::register_function_rewrite`.
#[derive(Debug, Default)]
pub struct DateCastRewrite;

impl FunctionRewrite for DateCastRewrite {
    fn name(&self) -> &str {
        "wap_date_cast"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> DfResult<Transformed<Expr>> {
        let Some((inner, from, to)) = arrow_cast(&expr, schema) else {
            return Ok(Transformed::no(expr));
        };
        let is_text = matches!(
            to,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8
        );
        if !is_text || from != DataType::Date32 {
            return Ok(Transformed::no(expr));
        }
        let udf = ScalarUDF::from(DateText::new(to.clone()));
        Ok(Transformed::yes(udf.call(vec![inner.clone()])))
    }
}

/// `(e, type of e, target type)` of `expr` if it is a plain `CAST(e AS target)` done by Arrow's
/// cast: not `TRY_CAST`, and not to a field with metadata (which may name an extension type,
/// whose cast is not Arrow's). Shared by the rewrites of casts into faster functions.
pub(super) fn arrow_cast<'a>(
    expr: &'a Expr,
    schema: &DFSchema,
) -> Option<(&'a Expr, DataType, &'a DataType)> {
    let Expr::Cast(Cast { expr: inner, field }) = expr else {
        return None;
    };
    if !field.metadata().is_empty() {
        return None;
    }
    let from = inner.get_type(schema).ok()?;
    Some((inner.as_ref(), from, field.data_type()))
}

/// `Date32` to text (`Utf8`, `Utf8View` or `LargeUtf8`, fixed per instance), exactly as
/// Arrow's cast writes it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateText {
    to: DataType,
    signature: Signature,
}

impl DateText {
    /// To `to`, one of the string types.
    pub fn new(to: DataType) -> Self {
        DateText {
            to,
            signature: Signature::exact(vec![DataType::Date32], Volatility::Immutable),
        }
    }
}

impl ScalarUDFImpl for DateText {
    fn name(&self) -> &str {
        match self.to {
            DataType::Utf8View => "wap_date_text_view",
            DataType::LargeUtf8 => "wap_date_text_large",
            _ => "wap_date_text",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(self.to.clone())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = date_text(&arrays[0], &self.to)?;
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&out, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(out),
        })
    }
}

/// `dates` (`Date32`) as text of type `to`, as `CAST(dates AS to)` gives it.
pub fn date_text(dates: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    let days = dates.as_primitive::<Date32Type>();
    let valid = |i: usize| !days.is_null(i);
    let (lo, hi) = (0..days.len())
        .filter(|&i| valid(i))
        .map(|i| days.value(i))
        .fold((i32::MAX, i32::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
    if lo < FIRST || hi > LAST {
        // What a plain CAST does (not TRY_CAST: errors are errors).
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        return Ok(cast_with_options(dates, to, &options)?);
    }
    // Dates of a batch often span fewer days than it has rows (a day's or a month's data): each
    // day is then written once, and rows look theirs up.
    let table: Option<Vec<[u8; WIDTH]>> =
        (lo <= hi && ((hi - lo) as usize) < days.len()).then(|| (lo..=hi).map(ymd).collect());
    let text = |i: usize| {
        valid(i).then(|| match &table {
            Some(table) => table[(days.value(i) - lo) as usize],
            None => ymd(days.value(i)),
        })
    };
    Ok(match to {
        DataType::Utf8View => {
            let views: Vec<u128> = (0..days.len())
                .map(|i| text(i).map_or(0, inline_view))
                .collect();
            Arc::new(StringViewArray::try_new(
                ScalarBuffer::from(views),
                Vec::new(),
                days.nulls().cloned(),
            )?)
        }
        DataType::LargeUtf8 => Arc::new(plain::<i64>(days.len(), days.nulls(), text)?),
        _ => Arc::new(plain::<i32>(days.len(), days.nulls(), text)?),
    })
}

/// A string array of `len` values, `text(i)` each (`None` where `nulls` has a NULL).
fn plain<O: OffsetSizeTrait>(
    len: usize,
    nulls: Option<&NullBuffer>,
    text: impl Fn(usize) -> Option<[u8; WIDTH]>,
) -> DfResult<GenericStringArray<O>> {
    let mut values = Vec::with_capacity(len * WIDTH);
    let mut offsets = Vec::with_capacity(len + 1);
    offsets.push(O::usize_as(0));
    for i in 0..len {
        if let Some(t) = text(i) {
            values.extend_from_slice(&t);
        }
        offsets.push(O::usize_as(values.len()));
    }
    Ok(GenericStringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
        nulls.cloned(),
    )?)
}

/// The view of a string of at most 12 bytes: its length, then its bytes, inline.
fn inline_view(text: [u8; WIDTH]) -> u128 {
    let mut view = [0u8; 16];
    view[..4].copy_from_slice(&(WIDTH as u32).to_le_bytes());
    view[4..4 + WIDTH].copy_from_slice(&text);
    u128::from_le_bytes(view)
}

/// `YYYY-MM-DD` of `days` since 1970-01-01, for days in `FIRST..=LAST`.
fn ymd(days: i32) -> [u8; WIDTH] {
    let (year, month, day) = civil(days);
    let two = |v: u32| [b'0' + (v / 10) as u8, b'0' + (v % 10) as u8];
    let [y0, y1] = two(year / 100);
    let [y2, y3] = two(year % 100);
    let [m0, m1] = two(month);
    let [d0, d1] = two(day);
    [y0, y1, y2, y3, b'-', m0, m1, b'-', d0, d1]
}

/// (year, month, day) of `days` since 1970-01-01, for days in `FIRST..=LAST` (proleptic
/// Gregorian calendar; H. Hinnant's `civil_from_days`, counted from 0000-03-01 minus five
/// 400-year eras so that it stays in unsigned 32-bit arithmetic).
pub(super) fn civil(days: i32) -> (u32, u32, u32) {
    const ERAS: u32 = 5;
    let z = (i64::from(days) + 719_468 + 146_097 * i64::from(ERAS)) as u32;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u32::from(month <= 2) - ERAS * 400;
    (year, month, day)
}

/// Date columns for the tests of the date functions: `spread`, then a spread over the
/// years 0000-9999 with NULLs, batches spanning fewer days than rows around 0000-01-01,
/// 2000-02-29 and 9999-12-31 (NULLs holding other dates), only NULLs, and none.
#[cfg(test)]
pub(super) fn columns_around(spread: Vec<Option<i32>>) -> Vec<ArrayRef> {
    let with_nulls: Vec<Option<i32>> = (0..2000)
        .map(|i| (i % 3 != 0).then_some(FIRST + i * 1463))
        .collect();
    let narrow = |from: i32| -> Vec<Option<i32>> {
        (0..3000)
            .map(|i| (i % 7 != 0).then_some(from + (i * 13) % 900))
            .collect()
    };
    [
        spread,
        with_nulls,
        narrow(FIRST),
        narrow(10_600),
        narrow(LAST - 899),
        vec![None, None],
        Vec::new(),
    ]
    .into_iter()
    .map(|c| Arc::new(datafusion::arrow::array::Date32Array::from(c)) as ArrayRef)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Date32Array;

    fn arrow_cast(dates: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
        let options = CastOptions {
            safe: false,
            format_options: FormatOptions::default(),
        };
        cast_with_options(dates, to, &options).map_err(|e| e.to_string())
    }

    const TEXT: [DataType; 3] = [DataType::Utf8, DataType::Utf8View, DataType::LargeUtf8];

    #[test]
    fn dates_are_written_as_arrow_writes_them() {
        // Every day around the range's ends, around 1970 and over two centuries (leap years,
        // 1900 and 2000 included), and a spread over the rest.
        let mut days: Vec<Option<i32>> = Vec::new();
        for range in [
            FIRST - 400..FIRST + 800,
            -25_567..47_482,
            LAST - 800..LAST + 400,
        ] {
            days.extend(range.map(Some));
        }
        days.extend((FIRST..=LAST).step_by(997).map(Some));
        for dates in &columns_around(days) {
            for to in &TEXT {
                let fast = date_text(dates, to).unwrap();
                assert_eq!(fast.data_type(), to);
                assert_eq!(&fast, &arrow_cast(dates, to).unwrap(), "to {to}");
            }
        }
        // Only years 0000 to 9999 take the fast path (the others checked above are Arrow's own).
        assert_eq!(&ymd(FIRST), b"0000-01-01");
        assert_eq!(&ymd(LAST), b"9999-12-31");
        assert_eq!(&ymd(0), b"1970-01-01");
        assert_eq!(&ymd(11_016), b"2000-02-29");
    }

    #[test]
    fn nulls_slices_and_dates_out_of_range_are_as_arrow_has_them() {
        // A NULL slot may hold any value: it must neither show nor send the array to Arrow.
        let garbage = Date32Array::new(
            ScalarBuffer::from(vec![0, i32::MIN, 10_000, i32::MAX]),
            Some(vec![true, false, true, false].into()),
        );
        let sliced =
            Date32Array::from((0..100).map(|d| Some(d * 31)).collect::<Vec<_>>()).slice(37, 20);
        let signed = Date32Array::from(vec![Some(0), Some(FIRST - 1), Some(LAST + 1), None]);
        for dates in [garbage, sliced, signed] {
            let dates: ArrayRef = Arc::new(dates);
            for to in &TEXT {
                assert_eq!(
                    &date_text(&dates, to).unwrap(),
                    &arrow_cast(&dates, to).unwrap()
                );
            }
        }
        // Dates chrono cannot hold fail as Arrow's cast fails.
        let huge: ArrayRef = Arc::new(Date32Array::from(vec![Some(0), Some(i32::MAX)]));
        let ours = date_text(&huge, &DataType::Utf8).unwrap_err().to_string();
        let arrows = arrow_cast(&huge, &DataType::Utf8).unwrap_err();
        assert!(ours.contains(&arrows), "{ours} vs {arrows}");
    }
}
