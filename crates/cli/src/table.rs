//! Plain aligned tables and human times for the remote commands.
//!
//! Invariants:
//! - Every cell goes through [`runner::report::printable`]: names, tags and reasons come from
//!   other users and agents, and must not drive the terminal.
//! - Columns are separated by two spaces and padded by character count; lines carry no
//!   trailing spaces.
//! - Times are rendered from a `now` passed in, so rendering is a pure function.

use proto::Millis;
use runner::report::printable;

/// Rows under a header, rendered as aligned columns.
#[derive(Debug, Clone)]
pub struct Table {
    header: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new(header: &[&'static str]) -> Table {
        Table {
            header: header.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; missing cells are empty, extra cells are dropped.
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells: Vec<String> = cells.iter().map(|c| printable(c)).collect();
        cells.resize(self.header.len(), String::new());
        self.rows.push(cells);
    }

    pub fn render(&self) -> String {
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let mut out = String::new();
        let mut line = |cells: &mut dyn Iterator<Item = &str>| {
            let mut text = String::new();
            for (cell, w) in cells.zip(&widths) {
                text.push_str(cell);
                let pad = w.saturating_sub(cell.chars().count()) + 2;
                text.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(text.trim_end());
            out.push('\n');
        };
        line(&mut self.header.iter().copied());
        for row in &self.rows {
            line(&mut row.iter().map(String::as_str));
        }
        out
    }
}

/// The current time.
pub fn now() -> Millis {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Millis(u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// `12s ago`, `5m ago`, `3h ago`, `2d ago`; older than a week (or in the future): RFC 3339.
pub fn ago(now: Millis, then: Millis) -> String {
    if then > now {
        return rfc3339(then);
    }
    let s = (now.0 - then.0) / 1000;
    match s {
        0..60 => format!("{s}s ago"),
        60..3_600 => format!("{}m ago", s / 60),
        3_600..86_400 => format!("{}h ago", s / 3_600),
        86_400..604_800 => format!("{}d ago", s / 86_400),
        _ => rfc3339(then),
    }
}

/// `now`, `in 40s`, `in 5m`, `in 3h`; further ahead (or in the past): RFC 3339.
pub fn ahead(now: Millis, then: Millis) -> String {
    if then < now {
        return rfc3339(then);
    }
    let s = (then.0 - now.0) / 1000;
    match s {
        0 => "now".to_owned(),
        1..60 => format!("in {s}s"),
        60..3_600 => format!("in {}m", s / 60),
        3_600..86_400 => format!("in {}h", s / 3_600),
        _ => rfc3339(then),
    }
}

/// `2026-11-22T06:18:03Z` (UTC, whole seconds).
pub fn rfc3339(t: Millis) -> String {
    let secs = t.0 / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem / 60 % 60,
        rem % 60
    )
}

/// `2026-11-22T06:18:03Z (5m ago)`.
pub fn when(now: Millis, t: Millis) -> String {
    let relative = ago(now, t);
    if relative.ends_with(" ago") {
        format!("{} ({relative})", rfc3339(t))
    } else {
        relative
    }
}

/// Year, month, day of a day count since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    // Shift to an era starting 0000-03-01, so leap days end each 4/100/400-year cycle.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = u32::try_from(day_of_year - (153 * month_index + 2) / 5 + 1).unwrap_or(1);
    let month = u32::try_from(if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    })
    .unwrap_or(1);
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_aligned_without_trailing_spaces() {
        let mut t = Table::new(&["ID", "NAME", "STATE"]);
        t.row(vec!["7".into(), "smoke-test".into(), "running".into()]);
        t.row(vec!["12".into(), "x".into(), String::new()]);
        assert_eq!(
            t.render(),
            "ID  NAME        STATE\n7   smoke-test  running\n12  x\n"
        );
    }

    #[test]
    fn cells_cannot_drive_the_terminal() {
        let mut t = Table::new(&["NAME"]);
        t.row(vec!["evil\x1b[2Jname\n".into()]);
        let out = t.render();
        assert!(!out.contains('\x1b'));
        assert_eq!(out.lines().count(), 2);
    }

    #[test]
    fn wide_characters_count_once() {
        let mut t = Table::new(&["A", "B"]);
        t.row(vec!["ééé".into(), "x".into()]);
        assert_eq!(t.render(), "A    B\nééé  x\n");
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(Millis(0)), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(Millis(951_782_400_000)), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(Millis(1_700_000_000_999)), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(Millis(4_107_542_400_000)), "2100-03-01T00:00:00Z");
    }

    #[test]
    fn recent_times_are_relative() {
        let now = Millis(1_000_000_000_000);
        let before = |s: u64| Millis(now.0 - s * 1000);
        assert_eq!(ago(now, before(12)), "12s ago");
        assert_eq!(ago(now, before(300)), "5m ago");
        assert_eq!(ago(now, before(3 * 3600 + 5)), "3h ago");
        assert_eq!(ago(now, before(2 * 86_400)), "2d ago");
        assert_eq!(ago(now, before(30 * 86_400)), rfc3339(before(30 * 86_400)));
        assert_eq!(
            ago(now, Millis(now.0 + 5_000)),
            rfc3339(Millis(now.0 + 5_000))
        );
        assert_eq!(
            when(now, before(12)),
            format!("{} (12s ago)", rfc3339(before(12)))
        );
    }
}
