//! `to_char(<date>, '<format>')` (and its alias `date_format`) without chrono's formatter.
//!
//! Transforms derive partition values from dates this way (`to_char(d, '%Y-%m')` for a month).
//! DataFusion formats every value through Arrow's display of a `NaiveDate`, which parses the
//! format string again and goes through `dyn Write` for each row. [`ToChar`] takes the place of
//! the built-in function: for a `Date32` column with a constant format made only of the
//! specifiers below, and dates of the years 0000 to 9999, it parses the format once and writes
//! each distinct day once; anything else (other specifiers, padding modifiers, time fields,
//! other types, a format column, dates outside those years) goes to DataFusion's own
//! `to_char`, so the text, and the errors, stay exactly DataFusion's.
//!
//! Specifiers: `%Y %C %y %m %d %e %j %F %D %b %h %B %a %A %u %w %% %n %t`, with chrono's
//! meaning for a date.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringArray};
use datafusion::arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Date32Type};
use datafusion::common::{Result as DfResult, ScalarValue};
use datafusion::logical_expr::{
    ColumnarValue, Documentation, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
};

use super::date_text::{FIRST, LAST, civil};

/// `to_char` with a fast path for dates (see the module documentation).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct ToChar {
    inner: Arc<ScalarUDF>,
}

impl Default for ToChar {
    fn default() -> Self {
        ToChar {
            inner: datafusion::functions::datetime::to_char(),
        }
    }
}

impl ScalarUDFImpl for ToChar {
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

    fn documentation(&self) -> Option<&Documentation> {
        self.inner.documentation()
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let [
            ColumnarValue::Array(dates),
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(f))),
        ] = args.args.as_slice()
            && dates.data_type() == &DataType::Date32
            && let Some(items) = parse(f)
            && let Some(out) = format_dates(dates, &items)
        {
            return Ok(ColumnarValue::Array(out));
        }
        self.inner.invoke_with_args(args)
    }
}

/// One piece of a parsed format.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Item {
    Literal(Vec<u8>),
    Year,
    Century,
    YearOfCentury,
    Month,
    Day,
    DaySpacePadded,
    DayOfYear,
    MonthAbbrev,
    MonthName,
    WeekdayAbbrev,
    WeekdayName,
    /// `%u`: Monday 1 to Sunday 7.
    WeekdayFromMonday,
    /// `%w`: Sunday 0 to Saturday 6.
    WeekdayFromSunday,
}

/// The items of `format`, or `None` when it holds anything this module does not write
/// (DataFusion's `to_char` then formats it).
fn parse(format: &str) -> Option<Vec<Item>> {
    let mut items = Vec::new();
    let mut literal = Vec::new();
    let mut chars = format.chars();
    let flush = |literal: &mut Vec<u8>, items: &mut Vec<Item>| {
        if !literal.is_empty() {
            items.push(Item::Literal(std::mem::take(literal)));
        }
    };
    while let Some(c) = chars.next() {
        if c != '%' {
            let mut buf = [0u8; 4];
            literal.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            continue;
        }
        let spec = chars.next()?;
        let item = match spec {
            '%' | 'n' | 't' => {
                literal.push(match spec {
                    'n' => b'\n',
                    't' => b'\t',
                    _ => b'%',
                });
                continue;
            }
            'Y' => Item::Year,
            'C' => Item::Century,
            'y' => Item::YearOfCentury,
            'm' => Item::Month,
            'd' => Item::Day,
            'e' => Item::DaySpacePadded,
            'j' => Item::DayOfYear,
            'b' | 'h' => Item::MonthAbbrev,
            'B' => Item::MonthName,
            'a' => Item::WeekdayAbbrev,
            'A' => Item::WeekdayName,
            'u' => Item::WeekdayFromMonday,
            'w' => Item::WeekdayFromSunday,
            // Shorthands, as chrono spells them out.
            'F' | 'D' => {
                flush(&mut literal, &mut items);
                items.extend(parse(if spec == 'F' { "%Y-%m-%d" } else { "%m/%d/%y" })?);
                continue;
            }
            _ => return None,
        };
        flush(&mut literal, &mut items);
        items.push(item);
    }
    flush(&mut literal, &mut items);
    Some(items)
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];

/// Monday first.
const WEEKDAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

/// Appends `days` (since 1970-01-01, within `FIRST..=LAST`) formatted by `items` to `out`.
fn write_day(days: i32, items: &[Item], out: &mut Vec<u8>) {
    let (year, month, day) = civil(days);
    let two = |out: &mut Vec<u8>, v: u32| {
        out.extend_from_slice(&[b'0' + (v / 10) as u8, b'0' + (v % 10) as u8])
    };
    // 1970-01-01 was a Thursday (Monday = 0).
    let weekday = (i64::from(days) + 3).rem_euclid(7) as usize;
    for item in items {
        match item {
            Item::Literal(bytes) => out.extend_from_slice(bytes),
            Item::Year => {
                two(out, year / 100);
                two(out, year % 100);
            }
            Item::Century => two(out, year / 100),
            Item::YearOfCentury => two(out, year % 100),
            Item::Month => two(out, month),
            Item::Day => two(out, day),
            Item::DaySpacePadded => {
                out.push(if day < 10 {
                    b' '
                } else {
                    b'0' + (day / 10) as u8
                });
                out.push(b'0' + (day % 10) as u8);
            }
            Item::DayOfYear => {
                let doy = (days - days_from_civil(year, 1, 1) + 1) as u32;
                out.push(b'0' + (doy / 100) as u8);
                two(out, doy % 100);
            }
            Item::MonthAbbrev => out.extend_from_slice(&MONTHS[month as usize - 1].as_bytes()[..3]),
            Item::MonthName => out.extend_from_slice(MONTHS[month as usize - 1].as_bytes()),
            Item::WeekdayAbbrev => out.extend_from_slice(&WEEKDAYS[weekday].as_bytes()[..3]),
            Item::WeekdayName => out.extend_from_slice(WEEKDAYS[weekday].as_bytes()),
            Item::WeekdayFromMonday => out.push(b'1' + weekday as u8),
            Item::WeekdayFromSunday => out.push(b'0' + ((weekday + 1) % 7) as u8),
        }
    }
}

/// Days from 1970-01-01 to `year-month-day` (H. Hinnant's `days_from_civil`).
pub(super) fn days_from_civil(year: u32, month: u32, day: u32) -> i32 {
    let y = i64::from(year) - i64::from(month <= 2);
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) as i32
}

/// `dates` formatted by `items`, or `None` when a date is outside the years 0000 to 9999.
fn format_dates(dates: &ArrayRef, items: &[Item]) -> Option<ArrayRef> {
    let days = dates.as_primitive::<Date32Type>();
    let valid = |i: usize| !days.is_null(i);
    let (lo, hi) = (0..days.len())
        .filter(|&i| valid(i))
        .map(|i| days.value(i))
        .fold((i32::MAX, i32::MIN), |(lo, hi), d| (lo.min(d), hi.max(d)));
    if lo <= hi && (lo < FIRST || hi > LAST) {
        return None;
    }
    let mut values = Vec::with_capacity(days.len() * 8);
    let mut offsets: Vec<i32> = Vec::with_capacity(days.len() + 1);
    offsets.push(0);
    // A batch often spans fewer days than it has rows: each day is formatted once.
    if lo <= hi && ((hi - lo) as usize) < days.len() {
        let mut table = Vec::new();
        let mut bounds = Vec::with_capacity((hi - lo) as usize + 2);
        bounds.push(0usize);
        for d in lo..=hi {
            write_day(d, items, &mut table);
            bounds.push(table.len());
        }
        for i in 0..days.len() {
            if valid(i) {
                let k = (days.value(i) - lo) as usize;
                values.extend_from_slice(&table[bounds[k]..bounds[k + 1]]);
            }
            offsets.push(i32::try_from(values.len()).ok()?);
        }
    } else {
        for i in 0..days.len() {
            if valid(i) {
                write_day(days.value(i), items, &mut values);
            }
            offsets.push(i32::try_from(values.len()).ok()?);
        }
    }
    let array = StringArray::try_new(
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Buffer::from_vec(values),
        days.nulls().cloned(),
    )
    .ok()?;
    Some(Arc::new(array))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::Date32Array;
    use datafusion::arrow::datatypes::Field;
    use datafusion::config::ConfigOptions;

    /// DataFusion's own `to_char` of `dates` by `format`.
    fn theirs(dates: &ArrayRef, format: &str) -> DfResult<ArrayRef> {
        call(&ToChar::default().inner, dates, format)
    }

    fn ours(dates: &ArrayRef, format: &str) -> DfResult<ArrayRef> {
        call(&ScalarUDF::from(ToChar::default()), dates, format)
    }

    fn call(udf: &ScalarUDF, dates: &ArrayRef, format: &str) -> DfResult<ArrayRef> {
        let args = ScalarFunctionArgs {
            args: vec![
                ColumnarValue::Array(Arc::clone(dates)),
                ColumnarValue::Scalar(ScalarValue::Utf8(Some(format.to_string()))),
            ],
            arg_fields: vec![
                Arc::new(Field::new("d", DataType::Date32, true)),
                Arc::new(Field::new("f", DataType::Utf8, false)),
            ],
            number_rows: dates.len(),
            return_field: Arc::new(Field::new("to_char", DataType::Utf8, true)),
            config_options: Arc::new(ConfigOptions::default()),
        };
        match udf.invoke_with_args(args)? {
            ColumnarValue::Array(a) => Ok(a),
            ColumnarValue::Scalar(s) => s.to_array(),
        }
    }

    const FORMATS: &[&str] = &[
        "%Y-%m",
        "%Y-%m-%d",
        "%F",
        "%D",
        "%Y%m%d",
        "%y/%m",
        "%C|%y",
        "%e.%m.%Y",
        "%j",
        "%Y-%j",
        "%b %Y",
        "%h %d",
        "%B %e, %Y",
        "%a %A %u %w",
        "week day %u of %Y",
        "100%% %Y%n%t",
        "année %Y, mois %m",
        "",
        "no specifier",
    ];

    #[test]
    fn dates_are_formatted_as_datafusion_formats_them() {
        let mut days: Vec<Option<i32>> = Vec::new();
        for range in [
            FIRST..FIRST + 800,
            -25_567..-23_000,
            10_900..12_000,
            LAST - 800..LAST + 1,
        ] {
            days.extend(range.map(Some));
        }
        days.extend((FIRST..=LAST).step_by(997).map(Some));
        let mut cases = super::super::date_text::columns_around(days);
        cases.push(Arc::new(
            Date32Array::from((0..3000).map(|d| Some(d * 3)).collect::<Vec<_>>()).slice(37, 2000),
        ));
        for dates in &cases {
            for f in FORMATS {
                assert!(parse(f).is_some(), "{f} takes the fast path");
                let got = ours(dates, f).unwrap();
                assert_eq!(&got, &theirs(dates, f).unwrap(), "format {f:?}");
            }
        }
    }

    #[test]
    fn everything_else_is_datafusion_s() {
        // Time fields, padding modifiers, unknown and dangling specifiers: not parsed here.
        for f in ["%H:%M", "%Y-%m %S", "%-d", "%_m", "%x", "%G-W%V", "%Q", "%"] {
            assert!(parse(f).is_none(), "{f}");
        }
        let dates: ArrayRef = Arc::new(Date32Array::from(vec![Some(0), None, Some(19_000)]));
        for f in ["%H:%M", "%Y-%m %S", "%-d", "%G-W%V"] {
            assert_eq!(
                ours(&dates, f).map_err(|e| e.to_string()),
                theirs(&dates, f).map_err(|e| e.to_string()),
                "{f}"
            );
        }
        // Dates outside the years 0000-9999 go to DataFusion (its text or its error).
        let far: ArrayRef = Arc::new(Date32Array::from(vec![Some(FIRST - 1), Some(LAST + 1)]));
        assert!(format_dates(&far, &parse("%Y").unwrap()).is_none());
        assert_eq!(
            ours(&far, "%Y-%m").map_err(|e| e.to_string()),
            theirs(&far, "%Y-%m").map_err(|e| e.to_string())
        );
    }

    #[test]
    fn days_from_civil_inverts_civil() {
        for d in (FIRST..=LAST).step_by(37) {
            let (y, m, dd) = civil(d);
            assert_eq!(days_from_civil(y, m, dd), d);
        }
    }
}
