//! UTC calendar days (see `verge_protocol::time`): the recorder names folders by day and
//! rolls over at midnight UTC.

/// A UTC calendar day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

const MS_PER_DAY: i64 = 86_400_000;

impl Day {
    /// The UTC day of `unix_ms`.
    pub fn of_unix_ms(unix_ms: u64) -> Self {
        Self::from_days(unix_ms as i64 / MS_PER_DAY)
    }

    /// Days since 1970-01-01.
    pub fn from_days(days: i64) -> Self {
        let (year, month, day) = verge_protocol::time::civil_from_days(days);
        Self { year, month, day }
    }

    /// Days since 1970-01-01.
    pub fn to_days(self) -> i64 {
        verge_protocol::time::days_from_civil(self.year, self.month, self.day)
    }

    /// Where this day starts, in Unix ms.
    pub fn start_unix_ms(self) -> u64 {
        (self.to_days() * MS_PER_DAY).max(0) as u64
    }

    /// `yyyy/mm/dd`, the folder under a stream's recordings.
    pub fn path(self) -> String {
        format!("{:04}/{:02}/{:02}", self.year, self.month, self.day)
    }

    /// Parses `yyyy`, `mm`, `dd` folder names.
    pub fn parse(year: &str, month: &str, day: &str) -> Option<Self> {
        let day = Self {
            year: year.parse().ok()?,
            month: month.parse().ok()?,
            day: day.parse().ok()?,
        };
        // Only real dates (a round trip through days since the epoch keeps them).
        (Self::from_days(day.to_days()) == day).then_some(day)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_known_dates() {
        assert_eq!(
            Day::of_unix_ms(0),
            Day {
                year: 1970,
                month: 1,
                day: 1
            }
        );
        // 2026-12-01T00:00:00Z and one ms before it.
        let midnight = 1_796_083_200_000;
        assert_eq!(Day::of_unix_ms(midnight).path(), "2026/12/01");
        assert_eq!(Day::of_unix_ms(midnight - 1).path(), "2026/11/30");
        assert_eq!(Day::of_unix_ms(midnight).start_unix_ms(), midnight);
        // 2024-02-29 exists, 2026-02-29 does not.
        assert!(Day::parse("2024", "02", "29").is_some());
        assert!(Day::parse("2026", "02", "29").is_none());
        assert!(Day::parse("2026", "13", "01").is_none());
        assert!(Day::parse("x", "1", "1").is_none());
        for days in -1000..30_000 {
            assert_eq!(Day::from_days(days).to_days(), days);
        }
    }
}
