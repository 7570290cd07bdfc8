//! `date_trunc` to a week, month, quarter or year, and `CAST(<timestamp> AS DATE)`, of
//! timestamps without a time zone, by day arithmetic instead of chrono per row.
//!
//! Both are how transforms derive a month or a day from an event time, and from a date:
//! `date_trunc` takes a date as a timestamp (DataFusion casts it first, one multiplication).
//! DataFusion truncates to a week or longer by building a `NaiveDateTime` per row and clearing
//! its fields one by one; Arrow casts a timestamp to a date through a `NaiveDateTime` per row
//! too. Here a value's day is one floor division, the truncated day comes from the civil
//! calendar once per run of equal days (rows of a batch often share their day), and the result
//! is one multiplication.
//!
//! The results, and the errors, stay exactly DataFusion's and Arrow's: an array holding any
//! value outside the years 0000 to 9999, or whose truncation DataFusion could not represent
//! (it works in nanoseconds), is handed to DataFusion's function or Arrow's cast whole.
//! Timestamps with a time zone, the finer granularities (already arithmetic in DataFusion),
//! scalars and `TRY_CAST` are left to them as well.
//!
//! [`DateTrunc`] takes the built-in's place under its names; [`TimestampDateRewrite`] swaps
//! the cast for [`TimestampDate`] while the plan is analysed, keeping the expression's name.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, Date32Array, PrimitiveArray};
use datafusion::arrow::buffer::{NullBuffer, ScalarBuffer};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{
    DataType, FieldRef, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
    TimestampNanosecondType, TimestampSecondType,
};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr_rewriter::FunctionRewrite;
use datafusion::logical_expr::sort_properties::{ExprProperties, SortProperties};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, Expr, ReturnFieldArgs, ScalarFunctionArgs, ScalarUDF,
    ScalarUDFImpl, Signature, Volatility,
};

use super::date_format::days_from_civil;
use super::date_text::{FIRST, LAST, arrow_cast, civil};

/// The truncations done here: to a day that the civil calendar gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coarse {
    /// The Monday of the week (ISO weeks, as DataFusion's `week`).
    Week,
    Month,
    Quarter,
    Year,
}

impl Coarse {
    /// The granularity of `date_trunc`'s first argument, as DataFusion reads it (any case).
    fn parse(granularity: &str) -> Option<Coarse> {
        match granularity.to_lowercase().as_str() {
            "week" => Some(Coarse::Week),
            "month" => Some(Coarse::Month),
            "quarter" => Some(Coarse::Quarter),
            "year" => Some(Coarse::Year),
            _ => None,
        }
    }

    /// The first day of the period holding `days` (since 1970-01-01, in `FIRST..=LAST`).
    fn first_day(self, days: i32) -> i32 {
        if self == Coarse::Week {
            // 1970-01-01 was a Thursday: three days after a Monday.
            return days - (days + 3).rem_euclid(7);
        }
        let (year, month, _) = civil(days);
        let month = match self {
            Coarse::Month => month,
            Coarse::Quarter => (month - 1) / 3 * 3 + 1,
            _ => 1,
        };
        days_from_civil(year, month, 1)
    }
}

/// Units of `unit` in a day, and nanoseconds in one unit.
fn per_day(unit: TimeUnit) -> (i64, i64) {
    match unit {
        TimeUnit::Second => (86_400, 1_000_000_000),
        TimeUnit::Millisecond => (86_400_000, 1_000_000),
        TimeUnit::Microsecond => (86_400_000_000, 1_000),
        TimeUnit::Nanosecond => (86_400_000_000_000, 1),
    }
}

/// The timestamps (`unit`) of `values` (NULL where `nulls` says so: those slots may hold
/// anything and are never looked at) mapped day by day: `f(day)` for the day of each value
/// (since 1970-01-01), computed once per run of equal days; `None` as soon as a day is outside
/// the years 0000 to 9999 or `f` gives `None`.
fn by_day<T: Copy + Default>(
    values: &[i64],
    nulls: Option<&NullBuffer>,
    unit: TimeUnit,
    mut f: impl FnMut(i32) -> Option<T>,
) -> Option<Vec<T>> {
    let (day, _) = per_day(unit);
    let mut out = Vec::with_capacity(values.len());
    let mut last: Option<(i64, T)> = None;
    for (i, &v) in values.iter().enumerate() {
        if nulls.is_some_and(|n| n.is_null(i)) {
            out.push(T::default());
            continue;
        }
        let d = v.div_euclid(day);
        let mapped = match last {
            Some((ld, t)) if ld == d => t,
            _ => {
                let days = i32::try_from(d)
                    .ok()
                    .filter(|d| (FIRST..=LAST).contains(d))?;
                let t = f(days)?;
                last = Some((d, t));
                t
            }
        };
        out.push(mapped);
    }
    Some(out)
}

/// The values of `array`, a timestamp array of `unit`.
fn raw(array: &dyn Array, unit: TimeUnit) -> &[i64] {
    match unit {
        TimeUnit::Second => array.as_primitive::<TimestampSecondType>().values(),
        TimeUnit::Millisecond => array.as_primitive::<TimestampMillisecondType>().values(),
        TimeUnit::Microsecond => array.as_primitive::<TimestampMicrosecondType>().values(),
        TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().values(),
    }
}

/// `array` (timestamps of `unit` without a time zone) truncated to `coarse`, or `None` when a
/// value is outside the years 0000 to 9999 or DataFusion could not truncate it (its
/// nanoseconds, before or after, out of range).
fn truncate(array: &dyn Array, unit: TimeUnit, coarse: Coarse) -> Option<ArrayRef> {
    let (day, nanos) = per_day(unit);
    let values = raw(array, unit);
    // DataFusion truncates in nanoseconds: every value must have them (a day can straddle
    // the end of their range), and so must every first day (below, once per day).
    let (lo, hi) = (0..values.len())
        .filter(|&i| array.is_valid(i))
        .fold((i64::MAX, i64::MIN), |(lo, hi), i| {
            (lo.min(values[i]), hi.max(values[i]))
        });
    if lo <= hi {
        lo.checked_mul(nanos)?;
        hi.checked_mul(nanos)?;
    }
    let out = by_day(values, array.nulls(), unit, |days| {
        let first = i64::from(coarse.first_day(days)).checked_mul(day)?;
        first.checked_mul(nanos)?;
        Some(first)
    })?;
    let (values, nulls) = (ScalarBuffer::from(out), array.nulls().cloned());
    Some(match unit {
        TimeUnit::Second => Arc::new(PrimitiveArray::<TimestampSecondType>::new(values, nulls)),
        TimeUnit::Millisecond => Arc::new(PrimitiveArray::<TimestampMillisecondType>::new(
            values, nulls,
        )),
        TimeUnit::Microsecond => Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(
            values, nulls,
        )),
        TimeUnit::Nanosecond => Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(
            values, nulls,
        )),
    })
}

/// `date_trunc` with a fast path for timestamps without a time zone truncated to a week, month,
/// quarter or year (see the module documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct DateTrunc {
    inner: Arc<ScalarUDF>,
}

impl Default for DateTrunc {
    fn default() -> Self {
        DateTrunc {
            inner: datafusion::functions::datetime::date_trunc(),
        }
    }
}

impl ScalarUDFImpl for DateTrunc {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn aliases(&self) -> &[String] {
        self.inner.aliases()
    }

    fn signature(&self) -> &Signature {
        self.inner.signature()
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        self.inner.return_type(arg_types)
    }

    fn return_field_from_args(&self, args: ReturnFieldArgs) -> DfResult<FieldRef> {
        self.inner.return_field_from_args(args)
    }

    fn output_ordering(&self, input: &[ExprProperties]) -> DfResult<SortProperties> {
        self.inner.output_ordering(input)
    }

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let [
            ColumnarValue::Scalar(granularity),
            ColumnarValue::Array(array),
        ] = args.args.as_slice()
            && let Some(Some(g)) = granularity.try_as_str()
            && let Some(coarse) = Coarse::parse(g)
            && let DataType::Timestamp(unit, None) = array.data_type()
            && let Some(out) = truncate(array.as_ref(), *unit, coarse)
        {
            return Ok(ColumnarValue::Array(out));
        }
        self.inner.invoke_with_args(args)
    }
}

/// Rewrites `CAST(e AS DATE)` of an expression `e` of type `Timestamp(_, None)` into
/// [`TimestampDate`]. Register with `SessionContext::register_function_rewrite`.
#[derive(Debug, Default)]
pub struct TimestampDateRewrite;

impl FunctionRewrite for TimestampDateRewrite {
    fn name(&self) -> &str {
        "wap_timestamp_date_cast"
    }

    fn rewrite(
        &self,
        expr: Expr,
        schema: &DFSchema,
        _config: &ConfigOptions,
    ) -> DfResult<Transformed<Expr>> {
        let Some((inner, DataType::Timestamp(unit, None), DataType::Date32)) =
            arrow_cast(&expr, schema)
        else {
            return Ok(Transformed::no(expr));
        };
        let udf = ScalarUDF::from(TimestampDate::new(unit));
        Ok(Transformed::yes(udf.call(vec![inner.clone()])))
    }
}

/// `Timestamp(unit, None)` to `Date32` (the unit fixed per instance), exactly as Arrow's cast
/// gives it.
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct TimestampDate {
    unit: TimeUnit,
    signature: Signature,
}

impl TimestampDate {
    pub fn new(unit: TimeUnit) -> Self {
        TimestampDate {
            unit,
            signature: Signature::exact(
                vec![DataType::Timestamp(unit, None)],
                Volatility::Immutable,
            ),
        }
    }
}

impl ScalarUDFImpl for TimestampDate {
    fn name(&self) -> &str {
        match self.unit {
            TimeUnit::Second => "wap_timestamp_s_date",
            TimeUnit::Millisecond => "wap_timestamp_ms_date",
            TimeUnit::Microsecond => "wap_timestamp_us_date",
            TimeUnit::Nanosecond => "wap_timestamp_ns_date",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Date32)
    }

    /// A day is a floor division: the dates keep the timestamps' order, as the cast does.
    fn output_ordering(&self, input: &[ExprProperties]) -> DfResult<SortProperties> {
        Ok(input[0].sort_properties)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let out = timestamp_date(&arrays[0])?;
        Ok(match &args.args[0] {
            ColumnarValue::Scalar(_) => {
                ColumnarValue::Scalar(ScalarValue::try_from_array(&out, 0)?)
            }
            ColumnarValue::Array(_) => ColumnarValue::Array(out),
        })
    }
}

/// `timestamps` (of a unit, without a time zone) as dates, as `CAST(timestamps AS DATE)`
/// gives them.
pub fn timestamp_date(timestamps: &ArrayRef) -> DfResult<ArrayRef> {
    if let DataType::Timestamp(unit, None) = timestamps.data_type() {
        let values = raw(timestamps.as_ref(), *unit);
        let days = by_day(values, timestamps.nulls(), *unit, Some);
        if let Some(days) = days {
            let dates = Date32Array::new(ScalarBuffer::from(days), timestamps.nulls().cloned());
            return Ok(Arc::new(dates));
        }
    }
    // What a plain CAST does (not TRY_CAST: errors are errors).
    let options = CastOptions {
        safe: false,
        ..CastOptions::default()
    };
    Ok(cast_with_options(timestamps, &DataType::Date32, &options)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    const UNITS: [TimeUnit; 4] = [
        TimeUnit::Second,
        TimeUnit::Millisecond,
        TimeUnit::Microsecond,
        TimeUnit::Nanosecond,
    ];

    /// `values` (and NULL where `valid` is false) as timestamps of `unit`.
    fn timestamps(unit: TimeUnit, values: &[i64], valid: Option<Vec<bool>>) -> ArrayRef {
        let v = ScalarBuffer::from(values.to_vec());
        let n = valid.map(NullBuffer::from);
        match unit {
            TimeUnit::Second => Arc::new(PrimitiveArray::<TimestampSecondType>::new(v, n)),
            TimeUnit::Millisecond => {
                Arc::new(PrimitiveArray::<TimestampMillisecondType>::new(v, n))
            }
            TimeUnit::Microsecond => {
                Arc::new(PrimitiveArray::<TimestampMicrosecondType>::new(v, n))
            }
            TimeUnit::Nanosecond => Arc::new(PrimitiveArray::<TimestampNanosecondType>::new(v, n)),
        }
    }

    /// Values of `unit` around every interesting day: each day for years around 1970, 2000
    /// (leap years, 1900) and the ends of the nanosecond range, at several times of the day,
    /// including just before and after midnight; sorted, so that runs of a day are long.
    fn spread(unit: TimeUnit) -> Vec<i64> {
        let (day, nanos) = per_day(unit);
        let mut out = Vec::new();
        let ns_days = i64::MAX / 86_400_000_000_000;
        for range in [
            -25_567..-25_000i64,
            -800..800,
            10_500..11_400,
            -ns_days - 2..-ns_days + 400,
            ns_days - 400..ns_days + 2,
        ] {
            for d in range {
                for offset in [0, 1, day / 3, day - 1] {
                    if let Some(v) = d.checked_mul(day).and_then(|v| v.checked_add(offset)) {
                        out.push(v);
                    }
                }
            }
        }
        // The years 0000-9999 where the unit reaches them, and beyond.
        let step = (i64::from(LAST - FIRST) / 997).max(1);
        let mut d = i64::from(FIRST) - 3 * step;
        while d <= i64::from(LAST) + 3 * step {
            if let Some(v) = d.checked_mul(day) {
                out.push(v);
            }
            d += step;
        }
        if nanos == 1 {
            out.extend([i64::MIN, i64::MIN + 1, i64::MAX]);
        }
        out
    }

    fn builtin_trunc(granularity: &str, ts: &ArrayRef) -> Result<ArrayRef, String> {
        call(
            &datafusion::functions::datetime::date_trunc(),
            granularity,
            ts,
        )
    }

    fn call(udf: &ScalarUDF, granularity: &str, ts: &ArrayRef) -> Result<ArrayRef, String> {
        let args = vec![
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(granularity.to_string()))),
            ColumnarValue::Array(Arc::clone(ts)),
        ];
        let arg_fields = vec![
            Arc::new(Field::new("g", DataType::Utf8, false)),
            Arc::new(Field::new("t", ts.data_type().clone(), true)),
        ];
        let return_field = Arc::new(Field::new("r", ts.data_type().clone(), true));
        udf.invoke_with_args(ScalarFunctionArgs {
            args,
            arg_fields,
            number_rows: ts.len(),
            return_field,
            config_options: Arc::new(ConfigOptions::default()),
        })
        .and_then(|v| v.into_array(ts.len()))
        .map_err(|e| e.to_string())
    }

    #[test]
    fn truncations_are_datafusions_value_for_value_and_error_for_error() {
        let ours = ScalarUDF::from(DateTrunc::default());
        for unit in UNITS {
            let all = spread(unit);
            // Every value alone (so that one value out of range does not send the others
            // to DataFusion), then all at once, sliced, and with NULLs holding any value.
            for granularity in ["week", "MONTH", "quarter", "year"] {
                for v in &all {
                    let ts = timestamps(unit, &[*v], None);
                    assert_eq!(
                        call(&ours, granularity, &ts),
                        builtin_trunc(granularity, &ts),
                        "{granularity} of {v} ({unit:?})"
                    );
                }
                let in_range: Vec<i64> = all
                    .iter()
                    .copied()
                    .filter(|v| builtin_trunc(granularity, &timestamps(unit, &[*v], None)).is_ok())
                    .collect();
                let valid: Vec<bool> = (0..in_range.len()).map(|i| i % 5 != 0).collect();
                let mut garbage = in_range.clone();
                for (g, ok) in garbage.iter_mut().zip(&valid) {
                    if !ok {
                        *g = i64::MIN;
                    }
                }
                for ts in [
                    timestamps(unit, &in_range, None),
                    timestamps(unit, &in_range, None).slice(17, in_range.len() / 2),
                    timestamps(unit, &garbage, Some(valid.clone())),
                ] {
                    let expected = builtin_trunc(granularity, &ts).unwrap();
                    assert_eq!(&call(&ours, granularity, &ts).unwrap(), &expected);
                }
            }
        }
        // Other granularities are DataFusion's.
        let ts = timestamps(
            TimeUnit::Microsecond,
            &[-1, 0, 86_400_000_001, 1 << 50],
            None,
        );
        for granularity in ["day", "hour", "second"] {
            assert_eq!(
                call(&ours, granularity, &ts),
                builtin_trunc(granularity, &ts)
            );
        }
        // The fast path is taken where it should be, and not past the years 0000-9999.
        let ts = timestamps(TimeUnit::Second, &[0, 86_400 * 40], None);
        assert!(truncate(ts.as_ref(), TimeUnit::Second, Coarse::Month).is_some());
        let far = timestamps(TimeUnit::Second, &[86_400 * i64::from(LAST + 1)], None);
        assert!(truncate(far.as_ref(), TimeUnit::Second, Coarse::Month).is_none());
    }

    #[test]
    fn casts_to_dates_are_arrows_value_for_value_and_error_for_error() {
        let options = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        let arrow = |ts: &ArrayRef| {
            cast_with_options(ts, &DataType::Date32, &options).map_err(|e| e.to_string())
        };
        for unit in UNITS {
            let mut all = spread(unit);
            all.extend([i64::MIN, i64::MAX, i64::MIN / 7]);
            for v in &all {
                let ts = timestamps(unit, &[*v], None);
                match (timestamp_date(&ts), arrow(&ts)) {
                    (Ok(ours), Ok(arrows)) => assert_eq!(&ours, &arrows, "{v} ({unit:?})"),
                    // DataFusion's error holding Arrow's.
                    (Err(ours), Err(arrows)) => {
                        assert!(ours.to_string().contains(&arrows), "{ours} vs {arrows}")
                    }
                    (ours, arrows) => panic!("{v} ({unit:?}): {ours:?} vs {arrows:?}"),
                }
            }
            let ok: Vec<i64> = all
                .iter()
                .copied()
                .filter(|v| arrow(&timestamps(unit, &[*v], None)).is_ok())
                .collect();
            let valid: Vec<bool> = (0..ok.len()).map(|i| i % 3 != 1).collect();
            let garbage: Vec<i64> = ok
                .iter()
                .zip(&valid)
                .map(|(v, ok)| if *ok { *v } else { i64::MAX })
                .collect();
            for ts in [
                timestamps(unit, &ok, None),
                timestamps(unit, &garbage, Some(valid)),
            ] {
                assert_eq!(&timestamp_date(&ts).unwrap(), &arrow(&ts).unwrap());
            }
        }
    }
}
