use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{DomainError, invalid};

/// A product's stock-keeping unit: a positive 32-bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Sku(u32);

impl Sku {
    pub fn parse(v: u64) -> Result<Self, DomainError> {
        match u32::try_from(v) {
            Ok(n) if n > 0 => Ok(Sku(n)),
            _ => Err(invalid(format!("sku must be 1..={}, got {v}", u32::MAX))),
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

impl std::fmt::Display for Sku {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// Units in one request line: 1..=65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Count(u32);

impl Count {
    pub const MAX: u32 = 65_535;
    pub fn parse(v: u64) -> Result<Self, DomainError> {
        match u32::try_from(v) {
            Ok(n) if (1..=Self::MAX).contains(&n) => Ok(Count(n)),
            _ => Err(invalid(format!("count must be 1..={}, got {v}", Self::MAX))),
        }
    }
    pub fn get(self) -> u32 {
        self.0
    }
}

/// Money in minor units (cents): 0..=10^13, so totals of many lines still fit in i64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Price(u64);

impl Price {
    pub const MAX: u64 = 10_000_000_000_000;
    pub fn parse(v: u64) -> Result<Self, DomainError> {
        if v > Self::MAX {
            return Err(invalid(format!("price must be 0..={}, got {v}", Self::MAX)));
        }
        Ok(Price(v))
    }
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Characters no name needs, that hide, fake or reorder text: control characters, line and
/// paragraph separators, bidirectional controls, zero-width space, word joiner and invisible
/// operators, the byte-order mark, interlinear annotation marks, soft hyphen, blank fillers
/// (Hangul fillers, Khmer inherent vowels, braille blank).
fn is_forbidden_in_name(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{00AD}'
                | '\u{061C}'
                | '\u{115F}'
                | '\u{1160}'
                | '\u{17B4}'
                | '\u{17B5}'
                | '\u{200B}'
                | '\u{200E}'
                | '\u{200F}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202A}'..='\u{202E}'
                | '\u{2060}'..='\u{2064}'
                | '\u{2066}'..='\u{206F}'
                | '\u{2800}'
                | '\u{3164}'
                | '\u{FEFF}'
                | '\u{FFA0}'
                | '\u{FFF9}'..='\u{FFFB}'
        )
}

/// Characters that show nothing by themselves but shape the characters around them: joiners
/// (Persian, Indic scripts, emoji sequences), the grapheme joiner, variation selectors, tags
/// (flag sequences). Allowed only after a non-ASCII character (joiners: between two), so that
/// they cannot make `Berlin` and `Ber<joiner>lin` two names that look the same; a name must
/// have more than them.
fn is_shaping_mark(c: char) -> bool {
    matches!(
        c,
        '\u{034F}'
            | '\u{180B}'..='\u{180F}'
            | '\u{200C}'
            | '\u{200D}'
            | '\u{FE00}'..='\u{FE0F}'
            | '\u{E0000}'..='\u{E007F}'
            | '\u{E0100}'..='\u{E01EF}'
    )
}

/// Other format characters that show nothing by themselves (prepended number signs, musical
/// formatting): allowed, but a name must have a visible character besides them.
fn is_invisible(c: char) -> bool {
    c.is_whitespace()
        || is_shaping_mark(c)
        || matches!(
            c,
            '\u{0600}'..='\u{0605}' | '\u{06DD}' | '\u{070F}' | '\u{1D173}'..='\u{1D17A}'
        )
}

fn bounded_text(what: &str, s: &str, max: usize) -> Result<String, DomainError> {
    let t = s.trim();
    if t.is_empty() || t.chars().count() > max {
        return Err(invalid(format!("{what} must be 1..={max} characters")));
    }
    if t.chars().any(is_forbidden_in_name) {
        return Err(invalid(format!(
            "{what} must not contain control, bidirectional, zero-width or blank-filler \
             characters"
        )));
    }
    let chars: Vec<char> = t.chars().collect();
    // A mark modifies the character before it (a joiner also joins the one after): that
    // character must not be ASCII.
    let stray_mark = chars.iter().enumerate().any(|(i, &c)| {
        let after_non_ascii = i > 0 && !chars[i - 1].is_ascii();
        let joins_non_ascii = chars.get(i + 1).is_some_and(|n| !n.is_ascii());
        match c {
            '\u{200C}' | '\u{200D}' => !(after_non_ascii && joins_non_ascii),
            _ => is_shaping_mark(c) && !after_non_ascii,
        }
    });
    if stray_mark {
        return Err(invalid(format!(
            "{what}: joiners only between, and variation selectors only after, non-ASCII \
             characters"
        )));
    }
    if t.chars().all(is_invisible) {
        return Err(invalid(format!("{what} must contain a visible character")));
    }
    Ok(t.to_string())
}

/// A product name: 1..=200 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProductName(String);

impl ProductName {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        bounded_text("name", s, 200).map(ProductName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A warehouse name: 1..=100 characters, trimmed, no control characters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseName(String);

impl WarehouseName {
    pub fn parse(s: &str) -> Result<Self, DomainError> {
        bounded_text("name", s, 100).map(WarehouseName)
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// An admin's change of on-hand stock: non-zero, at most a billion units either way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StockDelta(i64);

impl StockDelta {
    pub const MAX: i64 = 1_000_000_000;
    pub fn parse(v: i64) -> Result<Self, DomainError> {
        // `unsigned_abs`: `i64::MIN.abs()` overflows (and wraps to itself in release builds).
        if v == 0 || v.unsigned_abs() > Self::MAX.unsigned_abs() {
            return Err(invalid(format!(
                "delta must be non-zero and within ±{}, got {v}",
                Self::MAX
            )));
        }
        Ok(StockDelta(v))
    }
    pub fn get(self) -> i64 {
        self.0
    }
}

/// The earliest sale time kept: the unix epoch (Redis keeps sale times in unix milliseconds).
pub const SALE_TIME_MIN_MS: i64 = 0;
/// The latest: 9999-12-31T23:59:59.999Z, the end of MySQL's DATETIME.
pub const SALE_TIME_MAX_MS: i64 = 253_402_300_799_999;

/// A sale window: a sale price valid in [starts_at, ends_at), optionally a per-customer limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SaleWindow {
    pub sale_price: Price,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
    pub per_customer_limit: Option<u32>,
}

impl SaleWindow {
    pub fn parse(
        sale_price: u64,
        starts_at: DateTime<Utc>,
        ends_at: DateTime<Utc>,
        per_customer_limit: Option<u64>,
    ) -> Result<Self, DomainError> {
        // Kept to the millisecond, so compared as kept.
        let (starts_at, ends_at) = (truncate_ms(starts_at), truncate_ms(ends_at));
        for (name, t) in [("starts_at", starts_at), ("ends_at", ends_at)] {
            if !(SALE_TIME_MIN_MS..=SALE_TIME_MAX_MS).contains(&t.timestamp_millis()) {
                return Err(invalid(format!(
                    "{name} must be within 1970-01-01T00:00:00Z..=9999-12-31T23:59:59.999Z"
                )));
            }
        }
        if ends_at <= starts_at {
            return Err(invalid("ends_at must be after starts_at"));
        }
        let per_customer_limit = per_customer_limit
            .map(|l| Count::parse(l).map(Count::get))
            .transpose()
            .map_err(|_| invalid(format!("per_customer_limit must be 1..={}", Count::MAX)))?;
        Ok(SaleWindow {
            sale_price: Price::parse(sale_price)?,
            starts_at,
            ends_at,
            per_customer_limit,
        })
    }

    pub fn is_active(&self, now: DateTime<Utc>) -> bool {
        now >= self.starts_at && now < self.ends_at
    }

    /// The price charged at `now`: the sale price while the window is open.
    pub fn price_at(&self, regular: Price, now: DateTime<Utc>) -> Price {
        if self.is_active(now) {
            self.sale_price
        } else {
            regular
        }
    }
}

/// Times are kept to the millisecond (MySQL DATETIME(3), Redis unix ms).
pub fn truncate_ms(t: DateTime<Utc>) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(t.timestamp_millis()).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn sku_is_positive_u32() {
        assert!(Sku::parse(0).is_err());
        assert!(Sku::parse(u64::from(u32::MAX) + 1).is_err());
        assert_eq!(Sku::parse(42).unwrap().get(), 42);
    }

    #[test]
    fn count_bounds() {
        assert!(Count::parse(0).is_err());
        assert!(Count::parse(65_536).is_err());
        assert_eq!(Count::parse(65_535).unwrap().get(), 65_535);
    }

    #[test]
    fn names_are_trimmed_and_bounded() {
        assert_eq!(ProductName::parse("  TV ").unwrap().as_str(), "TV");
        assert!(ProductName::parse("   ").is_err());
        assert!(ProductName::parse(&"x".repeat(201)).is_err());
        assert!(ProductName::parse("a\u{0}b").is_err());
        assert!(WarehouseName::parse(&"x".repeat(101)).is_err());
        for name in [
            "\u{200B}",
            "\u{2060}\u{FEFF}",
            "\u{200D}",
            "a\u{202E}b",
            "\u{E0041}",
        ] {
            assert!(ProductName::parse(name).is_err(), "{name:?}");
        }
        assert!(ProductName::parse("\u{1F469}\u{200D}\u{1F4BB}").is_ok());
        assert!(ProductName::parse("\u{0645}\u{06CC}\u{200C}\u{062E}\u{0648}").is_ok());
        assert!(ProductName::parse("\u{2764}\u{FE0F}\u{1F381} Mug").is_ok());
    }

    #[test]
    fn price_and_delta_bounds() {
        assert!(Price::parse(Price::MAX + 1).is_err());
        assert_eq!(Price::parse(0).unwrap().get(), 0);
        assert!(StockDelta::parse(0).is_err());
        assert!(StockDelta::parse(-StockDelta::MAX - 1).is_err());
        assert_eq!(StockDelta::parse(-5).unwrap().get(), -5);
        assert!(StockDelta::parse(i64::MIN).is_err());
        assert!(StockDelta::parse(i64::MAX).is_err());
        assert_eq!(
            StockDelta::parse(-StockDelta::MAX).unwrap().get(),
            -StockDelta::MAX
        );
    }

    #[test]
    fn sale_window_rules() {
        let now = Utc::now();
        assert!(SaleWindow::parse(100, now, now, None).is_err());
        let min = DateTime::from_timestamp_millis(SALE_TIME_MIN_MS).unwrap();
        let max = DateTime::from_timestamp_millis(SALE_TIME_MAX_MS).unwrap();
        assert_eq!(max.to_rfc3339(), "9999-12-31T23:59:59.999+00:00");
        assert!(SaleWindow::parse(1, min, max, None).is_ok());
        assert!(SaleWindow::parse(1, min - Duration::milliseconds(1), max, None).is_err());
        assert!(SaleWindow::parse(1, min, max + Duration::milliseconds(1), None).is_err());
        assert!(SaleWindow::parse(100, now, now + Duration::hours(1), Some(0)).is_err());
        let w = SaleWindow::parse(100, now, now + Duration::hours(1), Some(2)).unwrap();
        assert!(w.is_active(now + Duration::minutes(1)));
        assert!(!w.is_active(now + Duration::hours(1)));
        let regular = Price::parse(500).unwrap();
        assert_eq!(w.price_at(regular, now + Duration::minutes(1)).get(), 100);
        assert_eq!(w.price_at(regular, now - Duration::minutes(1)).get(), 500);
    }
}
