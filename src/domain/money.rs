//! Money as integer minor units.
//!
//! Amounts never pass through a float: a JSON number such as `200.00` is read from its text into
//! minor units (20000) and written back as text with exactly two decimals. A number with more than
//! two decimals, an exponent, or a sign where none is allowed is refused while parsing.

use std::fmt;

use schemars::JsonSchema;
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;

/// The largest amount accepted, in minor units: far above any order, far below `i64::MAX`, so sums
/// of 100 items times their quantities cannot overflow.
const MAX_MINOR: i64 = 1_000_000_000_000;

/// A non-negative amount of money in minor units (1/100 of the currency unit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Money(i64);

/// Why a text is not an amount of money.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoneyError {
    /// The text is not a plain decimal number.
    #[error("`{0}` is not a plain decimal amount such as 200.00")]
    NotDecimal(String),
    /// More than two digits after the decimal point.
    #[error("`{0}` has more than 2 decimals")]
    TooPrecise(String),
    /// A negative amount.
    #[error("`{0}` is negative")]
    Negative(String),
    /// Above the largest accepted amount.
    #[error("`{0}` is too large")]
    TooLarge(String),
}

impl Money {
    /// Zero.
    pub const ZERO: Money = Money(0);

    /// An amount from minor units; `None` when negative or too large.
    pub fn from_minor(minor: i64) -> Option<Money> {
        (0..=MAX_MINOR).contains(&minor).then_some(Money(minor))
    }

    /// The amount in minor units.
    pub fn minor(self) -> i64 {
        self.0
    }

    /// `self * quantity`, `None` on overflow past the accepted range.
    pub fn times(self, quantity: u32) -> Option<Money> {
        self.0
            .checked_mul(i64::from(quantity))
            .and_then(Money::from_minor)
    }

    /// `self + other`, `None` on overflow past the accepted range.
    pub fn plus(self, other: Money) -> Option<Money> {
        self.0.checked_add(other.0).and_then(Money::from_minor)
    }

    /// Parses the JSON text of a number: digits, optionally a point and one or two decimals.
    pub fn parse(text: &str) -> Result<Money, MoneyError> {
        let text = text.trim();
        if let Some(rest) = text.strip_prefix('-') {
            return Err(if Money::parse(rest).is_ok() {
                MoneyError::Negative(text.to_owned())
            } else {
                MoneyError::NotDecimal(text.to_owned())
            });
        }
        let (units, decimals) = text.split_once('.').unwrap_or((text, ""));
        let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if units.is_empty() || !all_digits(units) || !all_digits(decimals) {
            return Err(MoneyError::NotDecimal(text.to_owned()));
        }
        if text.contains('.') && decimals.is_empty() {
            return Err(MoneyError::NotDecimal(text.to_owned()));
        }
        // Trailing zeros carry no precision: 1.500 is 1.50.
        let decimals = decimals.trim_end_matches('0');
        if decimals.len() > 2 {
            return Err(MoneyError::TooPrecise(text.to_owned()));
        }
        let too_large = || MoneyError::TooLarge(text.to_owned());
        let units: i64 = units.parse().map_err(|_| too_large())?;
        let cents: i64 = format!("{decimals:0<2}").parse().unwrap_or(0);
        units
            .checked_mul(100)
            .and_then(|u| u.checked_add(cents))
            .and_then(Money::from_minor)
            .ok_or_else(too_large)
    }
}

impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:02}", self.0 / 100, self.0 % 100)
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        // A raw number keeps the two decimals (200.00) that a float would drop.
        let raw = RawValue::from_string(self.to_string()).map_err(serde::ser::Error::custom)?;
        raw.serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Money {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Money, D::Error> {
        let raw = Box::<RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        if text.starts_with('"') {
            return Err(D::Error::custom(format!(
                "amount {text} must be a JSON number, not a string"
            )));
        }
        Money::parse(text).map_err(D::Error::custom)
    }
}

impl JsonSchema for Money {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Money".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "description": "An amount in the order's currency with at most two decimals, e.g. 200.00.",
            "type": "number",
            "minimum": 0,
            "maximum": MAX_MINOR / 100,
            "multipleOf": 0.01
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_decimals_into_minor_units() {
        assert_eq!(Money::parse("200").unwrap().minor(), 20000);
        assert_eq!(Money::parse("200.5").unwrap().minor(), 20050);
        assert_eq!(Money::parse("0.01").unwrap().minor(), 1);
        assert_eq!(Money::parse("19.99").unwrap().minor(), 1999);
        assert_eq!(Money::parse("1.500").unwrap().minor(), 150);
    }

    #[test]
    fn refuses_what_is_not_an_exact_amount() {
        assert!(matches!(
            Money::parse("1.005"),
            Err(MoneyError::TooPrecise(_))
        ));
        assert!(matches!(
            Money::parse("-1.00"),
            Err(MoneyError::Negative(_))
        ));
        assert!(matches!(
            Money::parse("1e2"),
            Err(MoneyError::NotDecimal(_))
        ));
        assert!(matches!(Money::parse("1."), Err(MoneyError::NotDecimal(_))));
        assert!(matches!(Money::parse(".5"), Err(MoneyError::NotDecimal(_))));
        assert!(matches!(
            Money::parse("99999999999999999999"),
            Err(MoneyError::TooLarge(_))
        ));
    }

    #[test]
    fn writes_two_decimals_as_a_json_number() {
        let json = serde_json::to_string(&Money::parse("200").unwrap()).unwrap();
        assert_eq!(json, "200.00");
        let back: Money = serde_json::from_str("12.30").unwrap();
        assert_eq!(back.minor(), 1230);
        assert!(serde_json::from_str::<Money>("\"12.30\"").is_err());
    }

    #[test]
    fn arithmetic_stays_in_range() {
        let price = Money::parse("100.00").unwrap();
        assert_eq!(price.times(2).unwrap().minor(), 20000);
        assert_eq!(price.plus(price).unwrap().minor(), 20000);
        assert!(Money::from_minor(MAX_MINOR).unwrap().times(2).is_none());
    }
}
