//! Human output: tables with aligned columns, relative times ("12s ago"), durations and sizes.

use std::fmt::Write as _;

/// A table: a header row and rows of cells, printed with columns aligned on two spaces.
#[derive(Debug)]
pub struct Table {
    headers: Vec<&'static str>,
    rows: Vec<Vec<String>>,
}

// === impl Table ===

impl Table {
    /// A table with these column headers (upper case by convention).
    pub fn new(headers: &[&'static str]) -> Self {
        Self {
            headers: headers.to_vec(),
            rows: Vec::new(),
        }
    }

    /// Adds a row; cells are made single-line, missing cells are empty.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows
            .push(cells.into_iter().map(|c| one_line(&c)).collect());
    }

    /// Whether no row was added.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The table as text, each line ending in a newline; the last column is not padded.
    pub fn render(&self) -> String {
        let columns = self.headers.len();
        let mut widths: Vec<usize> = self.headers.iter().map(|h| width(h)).collect();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate().take(columns) {
                widths[i] = widths[i].max(width(cell));
            }
        }
        let mut out = String::new();
        let header: Vec<String> = self.headers.iter().map(|h| h.to_string()).collect();
        for row in std::iter::once(&header).chain(&self.rows) {
            let mut line = String::new();
            for (i, w) in widths.iter().enumerate() {
                let cell = row.get(i).map(String::as_str).unwrap_or("");
                if i + 1 == columns {
                    line.push_str(cell);
                } else {
                    let _ = write!(line, "{cell}{:pad$}  ", "", pad = w - width(cell));
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// `key: value` lines with the values aligned, each value on one line (a detail view).
pub fn fields(fields: &[(&str, String)]) -> String {
    let width = fields.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    fields
        .iter()
        .map(|(k, v)| format!("{:<width$} {}\n", format!("{k}:"), v.replace('\n', " ")))
        .collect()
}

/// Display width of a cell: characters, which is right for the ASCII and the few symbols the
/// tables use.
fn width(text: &str) -> usize {
    text.chars().count()
}

/// `text` on one line: newlines and tabs become spaces.
fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// `text` cut to `max` characters, with `…` when cut.
pub fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_string();
    }
    let mut cut: String = text.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// An optional part of a line: `value` between `before` and `after` when it is set, else
/// nothing (`optional(": ", reason, "")`).
pub fn optional(before: &str, value: &str, after: &str) -> String {
    if value.is_empty() {
        String::new()
    } else {
        format!("{before}{value}{after}")
    }
}

/// `-` for an empty value.
pub fn or_dash(text: &str) -> String {
    if text.is_empty() {
        "-".into()
    } else {
        text.to_string()
    }
}

/// How long ago `ms` (unix milliseconds) was, from `now_ms`: `just now` within a second, `12s
/// ago`, `3m ago`, `2h ago`, `4d ago`; `in 5m` for a time to come; `-` for 0 (never).
pub fn ago(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    if ms > now_ms {
        let ahead = ms - now_ms;
        // A clock a little ahead of ours is "now", not "in 0s".
        if ahead < 1000 {
            return "just now".into();
        }
        return format!("in {}", span(ahead));
    }
    if now_ms - ms < 1000 {
        return "just now".into();
    }
    format!("{} ago", span(now_ms - ms))
}

/// A span of milliseconds in its largest unit, rounded to the nearest: `12s`, `3m`, `2h`, `4d`
/// (so a token minted for 8h expires "in 8h", not "in 7h").
fn span(ms: u64) -> String {
    let secs = (ms + 500) / 1000;
    let rounded = |unit: u64| (secs + unit / 2) / unit;
    match secs {
        0..60 => format!("{secs}s"),
        60..3570 => format!("{}m", rounded(60)),
        3570..84_600 => format!("{}h", rounded(3600)),
        _ => format!("{}d", rounded(86_400)),
    }
}

/// A duration in milliseconds, precise enough to compare jobs: `850ms`, `3.2s`, `4m05s`,
/// `2h03m`.
pub fn duration(ms: u64) -> String {
    let secs = ms / 1000;
    if ms < 1000 {
        format!("{ms}ms")
    } else if secs < 60 {
        format!("{}.{}s", secs, (ms % 1000) / 100)
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// A size in bytes with a binary unit: `512 B`, `1.5 KiB`, `15.6 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Unix milliseconds as RFC 3339 in UTC to the second (`2026-05-01T12:00:03Z`).
pub fn timestamp(ms: u64) -> String {
    let Ok(time) = time::OffsetDateTime::from_unix_timestamp((ms / 1000) as i64) else {
        return ms.to_string();
    };
    time.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| ms.to_string())
}

/// When `ms` was, absolutely and relatively to `now_ms`: `2026-05-01T12:00:03Z (3m ago)`; `-`
/// for 0 (never).
pub fn when(ms: u64, now_ms: u64) -> String {
    if ms == 0 {
        return "-".into();
    }
    format!("{} ({})", timestamp(ms), ago(ms, now_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_and_the_last_is_not_padded() {
        let mut table = Table::new(&["HOST", "STATE", "LABELS"]);
        table.row(vec!["web-1".into(), "online".into(), "role=web".into()]);
        table.row(vec!["db-10".into(), "offline".into(), String::new()]);
        assert_eq!(
            table.render(),
            "HOST   STATE    LABELS\n\
             web-1  online   role=web\n\
             db-10  offline\n"
        );
    }

    #[test]
    fn times_read_as_people_say_them() {
        let now = 1_000_000_000;
        assert_eq!(ago(now - 12_000, now), "12s ago");
        assert_eq!(ago(now - 180_000, now), "3m ago");
        assert_eq!(ago(now - 7_200_000, now), "2h ago");
        assert_eq!(ago(now - 4 * 86_400_000, now), "4d ago");
        assert_eq!(ago(now + 300_000, now), "in 5m");
        assert_eq!(ago(now + 8 * 3_600_000 - 1_500, now), "in 8h");
        assert_eq!(ago(now - 3_560_000, now), "59m ago");
        assert_eq!(ago(now - 3_580_000, now), "1h ago");
        assert_eq!(ago(0, now), "-");
        assert_eq!(ago(now - 300, now), "just now");
        assert_eq!(duration(850), "850ms");
        assert_eq!(duration(3_250), "3.2s");
        assert_eq!(duration(245_000), "4m05s");
        assert_eq!(bytes(16_750_000_000), "15.6 GiB");
        assert_eq!(timestamp(1_777_636_803_000), "2026-05-01T12:00:03Z");
    }

    #[test]
    fn cells_stay_on_one_line_and_long_ones_are_clipped() {
        let mut table = Table::new(&["CMD"]);
        table.row(vec!["echo a\necho b".into()]);
        assert_eq!(table.render(), "CMD\necho a echo b\n");
        assert_eq!(clip("abcdef", 4), "abc…");
        assert_eq!(clip("abc", 4), "abc");
    }
}
