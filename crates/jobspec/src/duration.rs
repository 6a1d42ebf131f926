//! Durations as written in job files.
//!
//! Three spellings are accepted wherever a timeout is expected:
//! - LAVA's mapping: `{days: 0, hours: 1, minutes: 30, seconds: 0}` (any subset, summed;
//!   `skip:` is accepted and ignored with a warning);
//! - the short form: a string of number+unit pairs, largest unit first, each unit once:
//!   `"2d"`, `"1h30m"`, `"90s"`, `"1h 30m"`, or a string of digits meaning seconds (`"90"`);
//! - a bare YAML integer, meaning seconds.
//!
//! Invariants: a parsed duration is a whole number of seconds, strictly positive, and
//! computed without overflow (an overflowing value is an error, not a wrap).

use std::time::Duration;

use crate::JobError;
use crate::fields::{Ctx, Fields, Path};
use crate::yaml::Value;

const UNITS: [(char, u64, &str); 4] = [
    ('d', 86_400, "days"),
    ('h', 3_600, "hours"),
    ('m', 60, "minutes"),
    ('s', 1, "seconds"),
];

/// Parses a short-form duration: `"5m"`, `"30s"`, `"1h30m"`, `"2d"`, or `"90"` (seconds).
///
/// Errors are plain sentences, for the caller to put in context.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration".to_owned());
    }
    if s.bytes().all(|b| b.is_ascii_digit()) {
        let secs = s
            .parse::<u64>()
            .map_err(|_| format!("duration '{text}' is too large"))?;
        return positive(secs, text);
    }
    let mut total: u64 = 0;
    let mut next_unit = 0; // index into UNITS: units must come largest first, once each
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "invalid duration '{text}' (use e.g. 90, 30s, 5m, 1h30m, 2d)"
            ));
        }
        let (num, after) = rest.split_at(digits);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("duration '{text}' is too large"))?;
        let unit_char = after.chars().next().ok_or_else(|| {
            format!("duration '{text}' has a number without a unit (use d, h, m or s)")
        })?;
        let Some(pos) = UNITS.iter().position(|(c, _, _)| *c == unit_char) else {
            return Err(format!(
                "invalid unit '{unit_char}' in duration '{text}' (use d, h, m or s)"
            ));
        };
        if pos < next_unit {
            return Err(format!(
                "duration '{text}': units must appear once each, largest first (e.g. 1h30m)"
            ));
        }
        next_unit = pos + 1;
        total = n
            .checked_mul(UNITS[pos].1)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("duration '{text}' is too large"))?;
        rest = after[unit_char.len_utf8()..].trim_start();
    }
    positive(total, text)
}

fn positive(secs: u64, text: &str) -> Result<Duration, String> {
    if secs == 0 {
        Err(format!("duration '{text}' must be greater than zero"))
    } else {
        Ok(Duration::from_secs(secs))
    }
}

/// A timeout in any of the three spellings, with errors naming `path`.
pub(crate) fn timeout(cx: &mut Ctx, path: &Path, v: Value) -> Result<Duration, JobError> {
    match v {
        Value::Int(n) => {
            let secs = u64::try_from(n)
                .map_err(|_| cx.err(path, format!("timeout {n} must be greater than zero")))?;
            positive(secs, &n.to_string()).map_err(|e| cx.err(path, e))
        }
        Value::Str(s) => parse_duration(&s).map_err(|e| cx.err(path, e)),
        Value::Map(_) => {
            let mut f = Fields::new(cx, path.clone(), v)?;
            let mut total: u64 = 0;
            for (_, mult, name) in UNITS {
                let Some(n) = f.take(name) else { continue };
                let npath = f.at(name);
                let n = match n {
                    Value::Int(n) => u64::try_from(n).map_err(|_| {
                        cx.err(&npath, format!("{name} must not be negative, found {n}"))
                    })?,
                    other => return Err(cx.expected(&npath, "an integer", &other)),
                };
                total = n
                    .checked_mul(mult)
                    .and_then(|v| total.checked_add(v))
                    .ok_or_else(|| cx.err(&npath, "timeout is too large"))?;
            }
            f.ignore(
                cx,
                &[(
                    "skip",
                    "a timeout that fires ends the job; the action is not skipped",
                )],
            );
            if let Some(key) = f.keys().next() {
                return Err(cx.err(
                    &f.at(key),
                    format!("unknown timeout unit '{key}' (use days, hours, minutes or seconds)"),
                ));
            }
            if total == 0 {
                return Err(cx.err(path, "timeout must be greater than zero"));
            }
            Ok(Duration::from_secs(total))
        }
        other => Err(cx.expected(
            path,
            "a timeout (e.g. {minutes: 5}, \"5m\" or a number of seconds)",
            &other,
        )),
    }
}

/// `5m`, `1h30m`, `45s`: the short form, for messages.
pub(crate) fn display(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".to_owned();
    }
    let mut out = String::new();
    for (c, mult, _) in UNITS {
        if secs >= mult {
            out.push_str(&format!("{}{c}", secs / mult));
            secs %= mult;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn short_forms() {
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration(" 2d "), Ok(Duration::from_secs(172_800)));
        assert_eq!(
            parse_duration("1d2h3m4s"),
            Ok(Duration::from_secs(86_400 + 7_200 + 180 + 4))
        );
    }

    #[test]
    fn bad_forms() {
        for bad in [
            "",
            "0",
            "0m",
            "-5m",
            "m",
            "5x",
            "5m5m",
            "30m1h",
            "1.5h",
            "5 m x",
            "h5",
            "99999999999999999999",
            "999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should fail");
        }
        assert!(
            parse_duration("1h30")
                .unwrap_err()
                .contains("without a unit")
        );
        assert!(
            parse_duration("0s")
                .unwrap_err()
                .contains("greater than zero")
        );
    }

    #[test]
    fn display_round_trips() {
        for s in ["5m", "1h30m", "2d", "45s", "1d1h1m1s"] {
            assert_eq!(display(parse_duration(s).unwrap()), s);
        }
    }
}
