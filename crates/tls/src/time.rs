//! Instants as whole seconds since the Unix epoch, shown in RFC 3339 (UTC).
//!
//! Certificates only carry second precision, so seconds are the unit for every validity check.
//! The calendar conversion is done here rather than through a date crate: it is the one
//! formatting this crate needs.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::UnixTime;

/// An instant in whole seconds since 1970-01-01T00:00:00Z; negative before the epoch.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

impl Timestamp {
    pub const fn from_unix_seconds(seconds: i64) -> Self {
        Self(seconds)
    }

    pub const fn unix_seconds(self) -> i64 {
        self.0
    }

    pub fn to_system_time(self) -> SystemTime {
        let magnitude = Duration::from_secs(self.0.unsigned_abs());
        if self.0 >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
    }
}

impl From<UnixTime> for Timestamp {
    fn from(time: UnixTime) -> Self {
        // Saturate: a clock beyond year 292 billion is not a case worth an error.
        Self(i64::try_from(time.as_secs()).unwrap_or(i64::MAX))
    }
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day).
///
/// Howard Hinnant's `civil_from_days`, exact for every `i64` day count we can meet.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let shifted = days + 719_468; // count from 0000-03-01, so leap days fall at the end of a year
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted.rem_euclid(146_097);
    let year_of_era = (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 { month_from_march + 3 } else { month_from_march - 9 };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (year, month, day) = civil_from_days(self.0.div_euclid(86_400));
        let second_of_day = self.0.rem_euclid(86_400);
        let (hour, minute, second) = (second_of_day / 3_600, second_of_day / 60 % 60, second_of_day % 60);
        write!(f, "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}Z")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_epoch_is_shown_as_1970() {
        assert_eq!(Timestamp::from_unix_seconds(0).to_string(), "1970-01-01T00:00:00Z");
    }

    #[test]
    fn a_leap_day_and_a_time_of_day_are_shown_exactly() {
        // 2024-02-29T13:14:15Z
        assert_eq!(Timestamp::from_unix_seconds(1_709_212_455).to_string(), "2024-02-29T13:14:15Z");
    }

    #[test]
    fn the_last_second_of_a_century_year_rolls_into_the_next_year() {
        // 2000-12-31T23:59:59Z: 2000 is a leap year although it is a century.
        assert_eq!(Timestamp::from_unix_seconds(978_307_199).to_string(), "2000-12-31T23:59:59Z");
        assert_eq!(Timestamp::from_unix_seconds(978_307_200).to_string(), "2001-01-01T00:00:00Z");
    }

    #[test]
    fn instants_before_the_epoch_count_backwards() {
        assert_eq!(Timestamp::from_unix_seconds(-1).to_string(), "1969-12-31T23:59:59Z");
        // rcgen's default not_before.
        assert_eq!(Timestamp::from_unix_seconds(157_766_400).to_string(), "1975-01-01T00:00:00Z");
    }

    #[test]
    fn far_future_not_after_dates_are_shown() {
        // 4096-01-01T00:00:00Z, rcgen's default not_after.
        assert_eq!(Timestamp::from_unix_seconds(67_090_118_400).to_string(), "4096-01-01T00:00:00Z");
    }

    #[test]
    fn system_time_conversion_keeps_the_sign() {
        assert_eq!(Timestamp::from_unix_seconds(-10).to_system_time(), UNIX_EPOCH - Duration::from_secs(10));
        assert_eq!(Timestamp::from_unix_seconds(10).to_system_time(), UNIX_EPOCH + Duration::from_secs(10));
    }
}
