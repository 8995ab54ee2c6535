//! Conversions between `SystemTime` (what callers pass in) and the whole seconds X.509 stores.
//!
//! Certificates hold times to the second, so every time the CA reports back is floored to a
//! second first: what `IssuedSvid` says is exactly what the certificate says.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use time::OffsetDateTime;

use crate::CaError;

/// Seconds since the Unix epoch, floored (so times before 1970 round towards the past).
pub(crate) fn unix_seconds(time: SystemTime) -> i64 {
    match time.duration_since(UNIX_EPOCH) {
        Ok(after) => i64::try_from(after.as_secs()).unwrap_or(i64::MAX),
        Err(before) => {
            let before = before.duration();
            let whole = before.as_secs() + u64::from(before.subsec_nanos() > 0);
            i64::try_from(whole).map_or(i64::MIN, |seconds| -seconds)
        }
    }
}

pub(crate) fn from_unix_seconds(seconds: i64) -> SystemTime {
    let magnitude = Duration::from_secs(seconds.unsigned_abs());
    if seconds >= 0 { UNIX_EPOCH + magnitude } else { UNIX_EPOCH - magnitude }
}

/// `time` floored to a whole second.
pub(crate) fn floor_second(time: SystemTime) -> SystemTime {
    from_unix_seconds(unix_seconds(time))
}

/// The `time` crate's form, which rcgen writes into certificates.
pub(crate) fn to_offset(what: &'static str, time: SystemTime) -> Result<OffsetDateTime, CaError> {
    // X.509 GeneralizedTime stops at year 9999; refuse rather than let the encoder misbehave.
    const YEAR_10000: i64 = 253_402_300_800;
    let seconds = unix_seconds(time);
    if !(0..YEAR_10000).contains(&seconds) {
        return Err(CaError::TimeOutOfRange { what, time });
    }
    OffsetDateTime::from_unix_timestamp(seconds).map_err(|_| CaError::TimeOutOfRange { what, time })
}

/// A certificate time from x509-parser.
pub(crate) fn from_asn1(time: x509_parser::time::ASN1Time) -> SystemTime {
    from_unix_seconds(time.timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floor_second_drops_the_fraction_on_both_sides_of_the_epoch() {
        let after = UNIX_EPOCH + Duration::from_millis(1_500);
        assert_eq!(floor_second(after), UNIX_EPOCH + Duration::from_secs(1));
        let before = UNIX_EPOCH - Duration::from_millis(1_500);
        assert_eq!(floor_second(before), UNIX_EPOCH - Duration::from_secs(2));
    }

    #[test]
    fn times_outside_what_x509_can_hold_are_refused_not_wrapped() {
        let far = UNIX_EPOCH + Duration::from_secs(300_000_000_000);
        assert!(matches!(to_offset("not after", far), Err(CaError::TimeOutOfRange { .. })));
        let early = UNIX_EPOCH - Duration::from_secs(1);
        assert!(matches!(to_offset("not before", early), Err(CaError::TimeOutOfRange { .. })));
    }
}

/// A time shown as RFC 3339 UTC with whole seconds (`2026-11-23T11:26:36Z`), the form error
/// messages and `zmesh cert inspect` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rfc3339(pub SystemTime);

impl std::fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let seconds = unix_seconds(self.0);
        match OffsetDateTime::from_unix_timestamp(seconds) {
            Ok(t) => write!(
                f,
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second()
            ),
            Err(_) => write!(f, "{seconds} seconds after the Unix epoch"),
        }
    }
}
