//! Human-readable quantities in the config file: rates (`100/second`, `5/10s`,
//! `20 per 2 minutes`, `1000/500ms`) and durations (`25ms`, `2s`, `1m`).
//!
//! Parsing is strict: anything we do not understand is an error naming what was
//! expected, never a guess.

use std::fmt;
use std::time::Duration;

/// Largest count a single rate may allow. Beyond this a limit is meaningless and
/// usually a typo (an extra zero or two).
pub(crate) const MAX_RATE_COUNT: u64 = 1_000_000_000;
/// Longest period a rate may span. Limiter state lives at most this long.
pub(crate) const MAX_RATE_PERIOD: Duration = Duration::from_secs(31 * 24 * 3600);

/// `count` events per `period`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Rate {
    pub(crate) count: u64,
    pub(crate) period: Duration,
}

impl Rate {
    /// Nanoseconds between two events at the sustained rate, rounded up so
    /// that a limit is never faster than configured.
    pub(crate) fn emission_interval_ns(&self) -> u64 {
        self.period
            .as_nanos()
            .div_ceil(u128::from(self.count.max(1))) as u64
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, format_duration(self.period))
    }
}

/// Renders a duration the way an operator would write it (`1s`, `10m`, `500ms`).
pub(crate) fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if d.subsec_millis() != 0 || ms == 0 {
        return format!("{}ms", ms);
    }
    let secs = d.as_secs();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60)] {
        if secs.is_multiple_of(size) {
            return format!("{}{}", secs / size, unit);
        }
    }
    format!("{}s", secs)
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum UnitError {
    #[error("{0:?} is not a rate: write COUNT/PERIOD such as 100/second, 5/10s, 20 per 2 minutes or 1000/500ms")]
    RateSyntax(String),
    #[error("{0:?} is not a duration: write a number and a unit such as 25ms, 2s, 5m, 1h")]
    DurationSyntax(String),
    #[error(
        "unknown time unit {0:?}: use ms, s, m, h or d (or millisecond, second, minute, hour, day)"
    )]
    UnknownUnit(String),
    #[error("a rate must allow at least 1 request")]
    ZeroCount,
    #[error("a rate of {0} per period is absurd (at most {MAX_RATE_COUNT})")]
    CountTooLarge(u64),
    #[error("the period must be longer than zero")]
    ZeroPeriod,
    #[error("a period of {0} is too long (at most 31 days)")]
    PeriodTooLong(String),
    #[error("{0} is faster than one request per nanosecond")]
    TooFast(String),
}

/// Parses a rate such as `100/second`, `5/10s`, `20 per 2 minutes` or `1000/500ms`.
pub(crate) fn parse_rate(text: &str) -> Result<Rate, UnitError> {
    let syntax = || UnitError::RateSyntax(text.to_string());
    let trimmed = text.trim();
    let (count, period) = if let Some((c, p)) = trimmed.split_once('/') {
        (c, p)
    } else if let Some((c, p)) = split_word(trimmed, "per") {
        (c, p)
    } else {
        return Err(syntax());
    };
    let count: u64 = count.trim().parse().map_err(|_| syntax())?;
    let period = parse_period(period.trim()).map_err(|e| match e {
        UnitError::DurationSyntax(_) => syntax(),
        other => other,
    })?;
    if count == 0 {
        return Err(UnitError::ZeroCount);
    }
    if count > MAX_RATE_COUNT {
        return Err(UnitError::CountTooLarge(count));
    }
    if period.is_zero() {
        return Err(UnitError::ZeroPeriod);
    }
    if period > MAX_RATE_PERIOD {
        return Err(UnitError::PeriodTooLong(format_duration(period)));
    }
    let rate = Rate { count, period };
    if u128::from(rate.count) > rate.period.as_nanos() {
        return Err(UnitError::TooFast(rate.to_string()));
    }
    Ok(rate)
}

/// Parses a duration such as `25ms`, `2s`, `1.5s`, `5 minutes`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let trimmed = text.trim();
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| UnitError::DurationSyntax(text.to_string()))?;
    let (number, unit) = trimmed.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| UnitError::DurationSyntax(text.to_string()))?;
    let unit_ns = unit_nanos(unit.trim())?;
    let nanos = number * unit_ns as f64;
    if !nanos.is_finite() || nanos > u64::MAX as f64 {
        return Err(UnitError::DurationSyntax(text.to_string()));
    }
    Ok(Duration::from_nanos(nanos.round() as u64))
}

/// A rate's period: a bare unit (`second`, `minute`) means one of it.
fn parse_period(text: &str) -> Result<Duration, UnitError> {
    if text.starts_with(|c: char| c.is_ascii_digit() || c == '.') {
        parse_duration(text)
    } else if text.is_empty() {
        Err(UnitError::DurationSyntax(text.to_string()))
    } else {
        Ok(Duration::from_nanos(unit_nanos(text)?))
    }
}

fn unit_nanos(unit: &str) -> Result<u64, UnitError> {
    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;
    Ok(match unit.to_ascii_lowercase().as_str() {
        "ns" => 1,
        "us" | "µs" => 1_000,
        "ms" | "millisecond" | "milliseconds" => MS,
        "s" | "sec" | "secs" | "second" | "seconds" => S,
        "m" | "min" | "mins" | "minute" | "minutes" => 60 * S,
        "h" | "hr" | "hrs" | "hour" | "hours" => 3_600 * S,
        "d" | "day" | "days" => 86_400 * S,
        "" => return Err(UnitError::DurationSyntax(unit.to_string())),
        other => return Err(UnitError::UnknownUnit(other.to_string())),
    })
}

/// Splits `a per b` on the standalone word `per`.
fn split_word<'a>(text: &'a str, word: &str) -> Option<(&'a str, &'a str)> {
    let lower = text.to_ascii_lowercase();
    let pattern = format!(" {word} ");
    let at = lower.find(&pattern)?;
    Some((&text[..at], &text[at + pattern.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u64, period_ms: u64) -> Rate {
        Rate {
            count,
            period: Duration::from_millis(period_ms),
        }
    }

    #[test]
    fn slash_with_unit_word() {
        assert_eq!(parse_rate("100/second"), Ok(rate(100, 1_000)));
        assert_eq!(parse_rate("1000/hour"), Ok(rate(1000, 3_600_000)));
        assert_eq!(parse_rate("10/minute"), Ok(rate(10, 60_000)));
    }

    #[test]
    fn slash_with_number_and_unit() {
        assert_eq!(parse_rate("5/10s"), Ok(rate(5, 10_000)));
        assert_eq!(parse_rate("1000/500ms"), Ok(rate(1000, 500)));
        assert_eq!(parse_rate(" 3 / 2 m "), Ok(rate(3, 120_000)));
    }

    #[test]
    fn per_with_words() {
        assert_eq!(parse_rate("20 per 2 minutes"), Ok(rate(20, 120_000)));
        assert_eq!(parse_rate("7 per day"), Ok(rate(7, 86_400_000)));
    }

    #[test]
    fn zero_count_is_refused() {
        assert_eq!(parse_rate("0/second"), Err(UnitError::ZeroCount));
    }

    #[test]
    fn zero_period_is_refused() {
        assert_eq!(parse_rate("5/0s"), Err(UnitError::ZeroPeriod));
    }

    #[test]
    fn absurd_counts_and_periods_are_refused() {
        assert!(matches!(
            parse_rate("99999999999/second"),
            Err(UnitError::CountTooLarge(_))
        ));
        assert!(matches!(
            parse_rate("1/400d"),
            Err(UnitError::PeriodTooLong(_))
        ));
        assert!(matches!(
            parse_rate("1000000000/1ms"),
            Err(UnitError::TooFast(_))
        ));
    }

    #[test]
    fn unknown_unit_is_named() {
        assert_eq!(
            parse_rate("10/fortnight"),
            Err(UnitError::UnknownUnit("fortnight".into()))
        );
    }

    #[test]
    fn garbage_is_a_syntax_error() {
        for text in ["", "ten/second", "10", "10/", "/s", "10 every second"] {
            assert!(
                matches!(parse_rate(text), Err(UnitError::RateSyntax(_))),
                "{text:?}"
            );
        }
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("25ms"), Ok(Duration::from_millis(25)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2 minutes"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("10").is_err());
    }

    #[test]
    fn rates_display_as_written() {
        assert_eq!(parse_rate("100/second").unwrap().to_string(), "100/1s");
        assert_eq!(parse_rate("5/10m").unwrap().to_string(), "5/10m");
        assert_eq!(parse_rate("1000/500ms").unwrap().to_string(), "1000/500ms");
    }
}
