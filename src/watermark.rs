//! The watermark of an incremental job (pure data: the publish step compares them too): where a run starts reading (the stored watermark minus
//! the lookback, or `initial`), and where the table's watermark is after it (the greater of the
//! stored one and the batch's largest cursor). Values are kept as the body of a SQL literal of
//! the cursor's type: `2024-01-01T00:00:00` (timestamp), `2024-01-01` (date), digits (integer).

use arrow::datatypes::DataType;
use chrono::{NaiveDate, NaiveDateTime};

use crate::conf::{IncrementalConf, Lookback};

/// The prefix of the watermarks map keys holding incremental watermarks.
pub const PREFIX: &str = "incremental.";

/// The watermarks map key holding an incremental job's watermark: `incremental.<cursor>`.
pub fn key(cursor: &str) -> String {
    format!("{PREFIX}{cursor}")
}

/// A watermark value of one of the cursor kinds, ordered within its kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mark {
    Integer(i64),
    Date(NaiveDate),
    Timestamp(NaiveDateTime),
}

const TIMESTAMP: &str = "%Y-%m-%dT%H:%M:%S%.f";

impl Mark {
    /// Parses a literal body: digits, `YYYY-MM-DD`, or an ISO 8601 timestamp without zone
    /// (`T` or a space between date and time).
    pub fn parse(text: &str) -> Option<Mark> {
        let t = text.trim();
        if let Ok(n) = t.parse::<i64>() {
            return Some(Mark::Integer(n));
        }
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return Some(Mark::Date(d));
        }
        NaiveDateTime::parse_from_str(t, TIMESTAMP)
            .or_else(|_| NaiveDateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f"))
            .ok()
            .map(Mark::Timestamp)
    }

    /// The SQL literal body.
    pub fn render(&self) -> String {
        match self {
            Mark::Integer(n) => n.to_string(),
            Mark::Date(d) => d.format("%Y-%m-%d").to_string(),
            Mark::Timestamp(t) => t.format(TIMESTAMP).to_string(),
        }
    }

    /// The kind's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Mark::Integer(_) => "integer",
            Mark::Date(_) => "date",
            Mark::Timestamp(_) => "timestamp",
        }
    }

    /// This mark moved back by `lookback`; `None` when the lookback does not fit the kind.
    pub fn minus(&self, lookback: Lookback) -> Option<Mark> {
        Some(match (self, lookback) {
            (Mark::Integer(n), Lookback::Count(c)) => Mark::Integer(n.checked_sub(c)?),
            (Mark::Date(d), Lookback::Count(0)) => Mark::Date(*d),
            (Mark::Timestamp(t), Lookback::Count(0)) => Mark::Timestamp(*t),
            (Mark::Date(d), Lookback::Duration(a)) => {
                // Whole days, rounded up: a date cursor re-reads every day the lookback touches.
                let days = (a.seconds + 86_399) / 86_400;
                Mark::Date(d.checked_sub_days(chrono::Days::new(days as u64))?)
            }
            (Mark::Timestamp(t), Lookback::Duration(a)) => {
                Mark::Timestamp(t.checked_sub_signed(chrono::TimeDelta::seconds(a.seconds))?)
            }
            (Mark::Integer(_), Lookback::Duration(_)) | (_, Lookback::Count(_)) => return None,
        })
    }
}

/// True when a column of type `t` can be the cursor of a watermark of `kind`.
pub fn cursor_type_fits(t: &DataType, mark: &Mark) -> bool {
    match mark {
        Mark::Integer(_) => t.is_integer(),
        Mark::Date(_) => matches!(t, DataType::Date32 | DataType::Date64),
        Mark::Timestamp(_) => matches!(t, DataType::Timestamp(_, _)),
    }
}

/// Where an incremental run starts: the stored watermark (or `initial`) and the value that
/// fills `{watermark}` (that minus the lookback).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The table's watermark before the run (`initial` when none was published).
    pub before: Mark,
    /// The literal body the transform reads from.
    pub from: String,
}

/// Errors computing the window.
#[derive(Debug, thiserror::Error)]
pub enum WatermarkError {
    #[error(
        "incremental.initial `{0}` is not a watermark: expected a timestamp such as \
         2024-01-01T00:00:00, a date such as 2024-01-01, or an integer"
    )]
    Initial(String),
    #[error("the published watermark `{0}` of {1} is not a {2} like `initial`")]
    Stored(String, String, &'static str),
    #[error(
        "incremental.lookback does not fit a {0} cursor (use a duration for timestamps and dates, a number for integers)"
    )]
    Lookback(&'static str),
}

/// The window of a run, given the watermarks of the current version.
pub fn window(
    conf: &IncrementalConf,
    published: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<Window, WatermarkError> {
    let initial =
        Mark::parse(&conf.initial).ok_or_else(|| WatermarkError::Initial(conf.initial.clone()))?;
    let key = key(&conf.cursor);
    let before = match published.and_then(|w| w.get(&key)) {
        None => initial,
        Some(text) => match Mark::parse(text) {
            Some(m) if std::mem::discriminant(&m) == std::mem::discriminant(&initial) => m,
            _ => return Err(WatermarkError::Stored(text.clone(), key, initial.kind())),
        },
    };
    let from = before
        .minus(conf.lookback)
        .ok_or(WatermarkError::Lookback(initial.kind()))?
        .render();
    Ok(Window { before, from })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conf::rules::MaxAge;

    fn inc(initial: &str, lookback: Lookback) -> IncrementalConf {
        IncrementalConf {
            cursor: "updated_at".into(),
            lookback,
            initial: initial.into(),
        }
    }

    #[test]
    fn windows_of_each_kind() {
        let two_hours = Lookback::Duration(MaxAge::parse("2h").unwrap());
        let w = window(&inc("2024-01-01T00:00:00", two_hours), None).unwrap();
        assert_eq!(w.from, "2023-12-31T22:00:00");
        let stored = [(key("updated_at"), "2024-03-01T10:30:00.5".to_string())].into();
        let w = window(&inc("2024-01-01T00:00:00", two_hours), Some(&stored)).unwrap();
        assert_eq!(w.from, "2024-03-01T08:30:00.500");
        assert_eq!(w.before.render(), "2024-03-01T10:30:00.500");
        let w = window(&inc("2024-01-05", two_hours), None).unwrap();
        assert_eq!(w.from, "2024-01-04");
        let w = window(&inc("100", Lookback::Count(10)), None).unwrap();
        assert_eq!(w.from, "90");
        assert!(window(&inc("100", two_hours), None).is_err());
        assert!(window(&inc("soon", Lookback::Count(0)), None).is_err());
        let bad = [(key("updated_at"), "7".to_string())].into();
        assert!(window(&inc("2024-01-05", Lookback::Count(0)), Some(&bad)).is_err());
    }

    #[test]
    fn marks_parse_and_order() {
        let a = Mark::parse("2024-01-01T00:00:00").unwrap();
        let b = Mark::parse("2024-01-01 00:00:01").unwrap();
        assert!(a < b);
        assert!(Mark::parse("9") > Mark::parse("10").map(|_| Mark::Integer(8)));
    }
}
