//! UTC calendar time from Unix time, for file names: Howard Hinnant's
//! `civil_from_days` (<https://howardhinnant.github.io/date_algorithms.html>), so no
//! date crate is needed for one format.

/// `YYYYMMDDTHHMMSSZ` of a wall-clock time in nanoseconds since the epoch (the
/// second it falls in; times before 1970 work too).
pub fn compact_utc(wall_ns: i64) -> String {
    let secs = wall_ns.div_euclid(1_000_000_000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60
    )
}

/// (year, month 1-12, day 1-31) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11], from March
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn formats_known_instants() {
        assert_eq!(compact_utc(0), "19700101T000000Z");
        assert_eq!(compact_utc(S - 1), "19700101T000000Z");
        assert_eq!(compact_utc(-1), "19691231T235959Z");
        // 2000-02-29 (a leap day of a century divisible by 400) 12:34:56.
        assert_eq!(compact_utc(951_827_696 * S), "20000229T123456Z");
        assert_eq!(compact_utc(1_709_251_199 * S), "20240229T235959Z");
        assert_eq!(compact_utc(1_709_251_200 * S), "20240301T000000Z");
        // 2100 is not a leap year.
        assert_eq!(compact_utc(4_107_542_400 * S), "21000301T000000Z");
        assert_eq!(compact_utc(i64::MAX), "22620411T234716Z");
    }

    #[test]
    fn days_count_through_four_centuries() {
        // Walk day by day and check the calendar steps as it should.
        let (mut y, mut m, mut d) = civil_from_days(-146_097);
        assert_eq!((y, m, d), (1570, 1, 1));
        for z in -146_096..146_097 {
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = match m {
                2 if leap => 29,
                2 => 28,
                4 | 6 | 9 | 11 => 30,
                _ => 31,
            };
            (d, m, y) = if d < len {
                (d + 1, m, y)
            } else if m < 12 {
                (1, m + 1, y)
            } else {
                (1, 1, y + 1)
            };
            assert_eq!(civil_from_days(z), (y, m, d), "day {z}");
        }
    }
}
