//! The `Year(16) | Month(8) | Day(8)` field of Login Response and Route Direction.

use bytes::BufMut;

use crate::codec::Reader;
use crate::error::{DecodeError, EncodeError};

/// A calendar date (e.g. certificate expiry in a Login Response). On the wire all
/// zeros means "none", so fields of this type are `Option<Date>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Date {
    /// Year, ≥ 1.
    pub year: u16,
    /// 1–12.
    pub month: u8,
    /// 1–31, depending on the month.
    pub day: u8,
}

impl Date {
    /// A validated date (year ≥ 1, Gregorian calendar).
    pub fn new(year: u16, month: u8, day: u8) -> Option<Date> {
        let d = Date { year, month, day };
        d.is_valid().then_some(d)
    }

    /// True when this is a real calendar date with year ≥ 1.
    pub fn is_valid(&self) -> bool {
        let leap = (self.year.is_multiple_of(4) && !self.year.is_multiple_of(100))
            || self.year.is_multiple_of(400);
        let days = match self.month {
            1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
            4 | 6 | 9 | 11 => 30,
            2 if leap => 29,
            2 => 28,
            _ => return false,
        };
        self.year >= 1 && self.day >= 1 && self.day <= days
    }
}

pub(crate) fn put_opt_date(w: &mut impl BufMut, d: Option<Date>) -> Result<(), EncodeError> {
    let d = match d {
        Some(d) if !d.is_valid() => {
            return Err(EncodeError::BadDate {
                year: d.year,
                month: d.month,
                day: d.day,
            })
        }
        Some(d) => d,
        None => Date {
            year: 0,
            month: 0,
            day: 0,
        },
    };
    w.put_u16(d.year);
    w.put_u8(d.month);
    w.put_u8(d.day);
    Ok(())
}

pub(crate) fn read_opt_date(r: &mut Reader<'_>) -> Result<Option<Date>, DecodeError> {
    let (year, month, day) = (r.u16()?, r.u8()?, r.u8()?);
    if (year, month, day) == (0, 0, 0) {
        return Ok(None);
    }
    Date::new(year, month, day)
        .map(Some)
        .ok_or(DecodeError::BadDate { year, month, day })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar() {
        assert!(Date::new(2024, 2, 29).is_some());
        assert!(Date::new(2023, 2, 29).is_none());
        assert!(Date::new(2000, 2, 29).is_some());
        assert!(Date::new(1900, 2, 29).is_none());
        assert!(Date::new(2026, 4, 31).is_none());
        assert!(Date::new(2026, 13, 1).is_none());
        assert!(Date::new(2026, 1, 0).is_none());
        assert!(Date::new(0, 1, 1).is_none());
    }
}
