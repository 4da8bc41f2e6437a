//! Wall-clock strings for the report and snapshots: RFC 3339 in UTC, computed here (civil date from
//! days since the epoch) so the report needs no time-zone database and no extra crate.

/// `2024-03-01T12:00:00.123Z` for nanoseconds since the Unix epoch.
pub fn rfc3339(wall_ns: i128) -> String {
    let ms = wall_ns.div_euclid(1_000_000);
    let (secs, milli) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// `12:00:00` (UTC), for chart axes.
pub fn hms(wall_ns: i128) -> String {
    let sod = wall_ns.div_euclid(1_000_000_000).rem_euclid(86_400);
    format!("{:02}:{:02}:{:02}", sod / 3600, sod % 3600 / 60, sod % 60)
}

/// Howard Hinnant's `civil_from_days`: (year, month, day) of a day count from
/// 1970-01-01, valid for any proleptic Gregorian date.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            rfc3339(1_709_294_400_123_456_789),
            "2024-03-01T12:00:00.123Z"
        );
        // A leap day, and the end of a century year.
        assert_eq!(
            rfc3339(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00.000Z"
        );
        assert_eq!(rfc3339(-1_000_000), "1969-12-31T23:59:59.999Z");
        assert_eq!(
            hms(1_709_294_400_123_456_789 + 3_723 * 1_000_000_000),
            "13:02:03"
        );
    }
}
