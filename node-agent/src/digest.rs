//! The digest of a search: every matching line normalised (timestamps, UUIDs, hex, IP addresses, numbers become placeholders) and counted by its normalised form, rarest first.
//!
//! The normaliser is a hand-written byte scanner (no regex per line): it walks the line once and
//! at each position tries the token shapes that can start there. Placeholders:
//!
//! | placeholder | replaces |
//! |---|---|
//! | `<ts>` | ISO 8601 dates and date-times (`2024-11-21T12:00:01.5Z`, `2024/11/21 12:00:01,123`), syslog stamps (`Nov 21 12:00:01`, with an optional weekday before and year after), Apache stamps (`21/Nov/2024:12:00:01 +0000`), times of day (`12:00:01`), epoch-like numbers (10, 13, 16 or 19 digits starting with 1, optionally with a fraction) |
//! | `<uuid>` | `8-4-4-4-12` hex UUIDs |
//! | `<hex>` | `0x…` numbers, words of at least 8 hex characters with both a digit and a letter, MAC addresses |
//! | `<ip>` | IPv4 addresses (with an optional `/prefix`), IPv6 addresses that contain `::` or all eight groups |
//! | `<n>` | every other run of digits, with an optional decimal fraction, also inside words (`web-12` → `web-<n>`, `sda1` → `sda<n>`) |
//!
//! Only the first `max_line_bytes` of a line are normalised, so lines that differ only past that
//! point share a group. Memory is bounded: at most [`MAX_HELD_GROUPS`] groups and
//! [`MAX_HELD_BYTES`] of keys and examples are held; lines of a new shape past either limit are
//! counted as ungrouped instead.

use std::borrow::Cow;
use std::collections::HashMap;

use execmesh_proto::pb;

use crate::files::clamp;

/// Groups returned when the request names no limit.
pub const DEFAULT_MAX_GROUPS: u32 = 200;
/// Most groups one reply may carry.
pub const MAX_GROUPS: u32 = 10_000;
/// Most distinct groups held while searching; lines of a new shape past it are ungrouped.
pub const MAX_HELD_GROUPS: usize = 10_000;
/// Most bytes of keys and examples held while searching.
pub const MAX_HELD_BYTES: usize = 8 * 1024 * 1024;
/// Original lines kept per group.
pub const EXAMPLES: usize = 3;
/// Bytes a group costs besides its strings (map entry, vector, counters), for the memory bound.
const GROUP_OVERHEAD: usize = 96;

const TS: &str = "<ts>";
const UUID: &str = "<uuid>";
const HEX: &str = "<hex>";
const IP: &str = "<ip>";
const N: &str = "<n>";

/// Matching lines grouped by their normalised form.
pub struct Digest {
    groups: HashMap<String, Group>,
    /// Bytes of keys and examples held.
    held_bytes: usize,
    /// Lines of a new shape seen after the hold limits were reached.
    ungrouped: u64,
    /// Longest part of a line that is normalised and kept as an example.
    max_line_bytes: usize,
    /// Reused for each line's key, so a line of a known shape allocates nothing.
    key: String,
}

/// The lines of one shape.
struct Group {
    lines: u64,
    examples: Vec<String>,
}

/// A finished digest, ready for the reply.
#[derive(Debug, Default)]
pub struct Summary {
    /// Rarest first, cut at the group and byte limits.
    pub groups: Vec<pb::DigestGroup>,
    /// Distinct groups held, including those cut.
    pub total: u64,
    /// Lines not grouped because the hold limits were reached.
    pub ungrouped: u64,
    /// Groups were left out for the reply's byte budget (not only for `max_groups`).
    pub cut_for_bytes: bool,
}

// === impl Digest ===

impl Digest {
    pub fn new(max_line_bytes: usize) -> Digest {
        Digest {
            groups: HashMap::new(),
            held_bytes: 0,
            ungrouped: 0,
            max_line_bytes,
            key: String::new(),
        }
    }

    /// Counts one matching line (without its terminator).
    pub fn add(&mut self, line: &[u8]) {
        let keep = clamp::cut_point(line, self.max_line_bytes);
        let prefix = String::from_utf8_lossy(&line[..keep]);
        normalize(&prefix, &mut self.key);
        if let Some(group) = self.groups.get_mut(self.key.as_str()) {
            group.lines += 1;
            if group.examples.len() < EXAMPLES && !group.examples.iter().any(|e| *e == prefix) {
                let example = example(line, keep, prefix);
                self.held_bytes += example.len();
                group.examples.push(example);
            }
            return;
        }
        let cost = GROUP_OVERHEAD + self.key.len() + line.len().min(self.max_line_bytes + 64);
        if self.groups.len() >= MAX_HELD_GROUPS || self.held_bytes + cost > MAX_HELD_BYTES {
            self.ungrouped += 1;
            return;
        }
        let example = example(line, keep, prefix);
        self.held_bytes += GROUP_OVERHEAD + self.key.len() + example.len();
        self.groups.insert(
            self.key.clone(),
            Group {
                lines: 1,
                examples: vec![example],
            },
        );
    }

    /// The groups rarest first (ties by key), at most `max_groups` of them and at most
    /// `max_bytes` of keys and examples.
    pub fn finish(self, max_groups: usize, max_bytes: usize) -> Summary {
        let total = self.groups.len() as u64;
        let mut groups: Vec<(String, Group)> = self.groups.into_iter().collect();
        groups.sort_unstable_by(|a, b| a.1.lines.cmp(&b.1.lines).then_with(|| a.0.cmp(&b.0)));
        let mut summary = Summary {
            total,
            ungrouped: self.ungrouped,
            ..Summary::default()
        };
        let mut bytes = 0;
        for (key, group) in groups.into_iter().take(max_groups) {
            let size = 16 + key.len() + group.examples.iter().map(|e| e.len() + 2).sum::<usize>();
            if bytes + size > max_bytes {
                summary.cut_for_bytes = true;
                break;
            }
            bytes += size;
            summary.groups.push(pb::DigestGroup {
                key,
                lines: group.lines,
                examples: group.examples,
            });
        }
        summary
    }
}

/// An example line: the normalised prefix, with the clamp marker when the line was longer.
fn example(line: &[u8], keep: usize, prefix: Cow<'_, str>) -> String {
    if keep == line.len() {
        prefix.into_owned()
    } else {
        let mut text = prefix.into_owned();
        text.push_str(&clamp::marker((line.len() - keep) as u64));
        text
    }
}

/// Writes `line` into `out` with variable tokens replaced by placeholders (see the module
/// documentation), trailing whitespace dropped.
pub fn normalize(line: &str, out: &mut String) {
    out.clear();
    let b = line.as_bytes();
    let (mut i, mut literal) = (0, 0);
    while i < b.len() {
        let c = b[i];
        let boundary = i == 0 || !is_word(b[i - 1]);
        let token = if c.is_ascii_digit() {
            boundary
                .then(|| at_digit(b, i))
                .flatten()
                .or_else(|| Some((number(b, i), N)))
        } else if c.is_ascii_alphabetic() && boundary {
            at_letter(b, i)
        } else if c == b':' && boundary {
            ipv6(b, i).map(|end| (end, IP))
        } else {
            None
        };
        match token {
            Some((end, placeholder)) => {
                // Tokens start and end at ASCII bytes, so these are character boundaries.
                out.push_str(&line[literal..i]);
                out.push_str(placeholder);
                i = end;
                literal = end;
            }
            None => i += 1,
        }
    }
    out.push_str(&line[literal..]);
    out.truncate(out.trim_end().len());
}

/// Letters, digits and any byte of a non-ASCII character: what a token must not touch.
fn is_word(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c >= 0x80
}

/// Whether the token ending at `end` is not glued to a following word character.
fn ends(b: &[u8], end: usize) -> bool {
    end >= b.len() || !is_word(b[end])
}

fn at_digit(b: &[u8], i: usize) -> Option<(usize, &'static str)> {
    None.or_else(|| iso(b, i).map(|e| (e, TS)))
        .or_else(|| apache(b, i).map(|e| (e, TS)))
        .or_else(|| uuid(b, i).map(|e| (e, UUID)))
        .or_else(|| mac(b, i).map(|e| (e, HEX)))
        .or_else(|| ipv4(b, i).map(|e| (e, IP)))
        .or_else(|| ipv6(b, i).map(|e| (e, IP)))
        .or_else(|| time(b, i).filter(|&e| ends(b, e)).map(|e| (e, TS)))
        .or_else(|| zero_x(b, i).map(|e| (e, HEX)))
        .or_else(|| hex_word(b, i).map(|e| (e, HEX)))
        .or_else(|| epoch(b, i).map(|e| (e, TS)))
}

fn at_letter(b: &[u8], i: usize) -> Option<(usize, &'static str)> {
    None.or_else(|| syslog(b, i).map(|e| (e, TS)))
        .or_else(|| uuid(b, i).map(|e| (e, UUID)))
        .or_else(|| mac(b, i).map(|e| (e, HEX)))
        .or_else(|| hex_word(b, i).map(|e| (e, HEX)))
        .or_else(|| ipv6(b, i).map(|e| (e, IP)))
}

/// The end of `min..=max` digits at `i`.
fn digits(b: &[u8], i: usize, min: usize, max: usize) -> Option<usize> {
    let n = b
        .get(i..)?
        .iter()
        .take(max)
        .take_while(|c| c.is_ascii_digit())
        .count();
    (n >= min).then_some(i + n)
}

/// The end of exactly `n` hex characters at `i`.
fn hex(b: &[u8], i: usize, n: usize) -> Option<usize> {
    let run = b.get(i..i + n)?;
    run.iter().all(u8::is_ascii_hexdigit).then_some(i + n)
}

fn byte(b: &[u8], i: usize, want: u8) -> Option<usize> {
    (b.get(i) == Some(&want)).then_some(i + 1)
}

/// A run of digits with an optional decimal fraction.
fn number(b: &[u8], i: usize) -> usize {
    let end = digits(b, i, 1, usize::MAX).unwrap_or(i + 1);
    match (b.get(end), b.get(end + 1)) {
        (Some(b'.'), Some(d)) if d.is_ascii_digit() => {
            digits(b, end + 1, 1, usize::MAX).unwrap_or(end)
        }
        _ => end,
    }
}

/// `HH:MM:SS` with an optional fraction (`.123` or `,123`) and zone (`Z`, `+02:00`, `-0500`).
fn time(b: &[u8], i: usize) -> Option<usize> {
    let j = digits(b, i, 1, 2)?;
    let j = digits(b, byte(b, j, b':')?, 2, 2)?;
    let mut j = digits(b, byte(b, j, b':')?, 2, 2)?;
    if matches!(b.get(j), Some(b'.' | b','))
        && let Some(end) = digits(b, j + 1, 1, 9)
    {
        j = end;
    }
    match b.get(j) {
        Some(b'Z') if ends(b, j + 1) => j += 1,
        Some(b'+' | b'-') => {
            if let Some(h) = digits(b, j + 1, 2, 2) {
                let m = byte(b, h, b':').unwrap_or(h);
                j = digits(b, m, 2, 2).unwrap_or(h);
            }
        }
        _ => {}
    }
    Some(j)
}

/// `YYYY-MM-DD` or `YYYY/MM/DD`, optionally followed by `T` or a space and a [`time`].
fn iso(b: &[u8], i: usize) -> Option<usize> {
    let j = digits(b, i, 4, 4)?;
    let sep = *b.get(j).filter(|c| matches!(c, b'-' | b'/'))?;
    let j = digits(b, j + 1, 2, 2)?;
    let j = digits(b, byte(b, j, sep)?, 2, 2)?;
    match b.get(j) {
        Some(b'T' | b' ') => Some(time(b, j + 1).unwrap_or(j)),
        _ => Some(j),
    }
}

const MONTHS: [&[u8]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];
const WEEKDAYS: [&[u8]; 7] = [b"Mon", b"Tue", b"Wed", b"Thu", b"Fri", b"Sat", b"Sun"];

fn name_in(b: &[u8], i: usize, names: &[&[u8]]) -> Option<usize> {
    let word = b.get(i..i + 3)?;
    names.contains(&word).then_some(i + 3)
}

/// `[Thu ]Nov 21 12:00:01[ 2024]` (syslog, ctime).
fn syslog(b: &[u8], i: usize) -> Option<usize> {
    let start = match name_in(b, i, &WEEKDAYS).and_then(|j| byte(b, j, b' ')) {
        Some(j) => j,
        None => i,
    };
    let mut j = byte(b, name_in(b, start, &MONTHS)?, b' ')?;
    if b.get(j) == Some(&b' ') {
        j += 1; // single-digit days are padded with a space
    }
    let j = digits(b, j, 1, 2)?;
    let j = time(b, byte(b, j, b' ')?)?;
    match byte(b, j, b' ').and_then(|y| digits(b, y, 4, 4)) {
        Some(end) if ends(b, end) => Some(end),
        _ => Some(j),
    }
}

/// `21/Nov/2024:12:00:01[ +0000]` (Apache, nginx access logs).
fn apache(b: &[u8], i: usize) -> Option<usize> {
    let j = digits(b, i, 2, 2)?;
    let j = byte(b, name_in(b, byte(b, j, b'/')?, &MONTHS)?, b'/')?;
    let j = time(b, byte(b, digits(b, j, 4, 4)?, b':')?)?;
    let zone = byte(b, j, b' ')
        .filter(|&z| matches!(b.get(z), Some(b'+' | b'-')))
        .and_then(|z| digits(b, z + 1, 4, 4));
    Some(zone.unwrap_or(j))
}

/// `8-4-4-4-12` hex.
fn uuid(b: &[u8], i: usize) -> Option<usize> {
    let mut j = hex(b, i, 8)?;
    for n in [4, 4, 4, 12] {
        j = hex(b, byte(b, j, b'-')?, n)?;
    }
    ends(b, j).then_some(j)
}

/// Six pairs of hex separated by `:` or `-`.
fn mac(b: &[u8], i: usize) -> Option<usize> {
    let mut j = hex(b, i, 2)?;
    let sep = *b.get(j).filter(|c| matches!(c, b':' | b'-'))?;
    for _ in 0..5 {
        j = hex(b, byte(b, j, sep)?, 2)?;
    }
    (ends(b, j) && b.get(j) != Some(&sep)).then_some(j)
}

/// `0x` followed by hex digits.
fn zero_x(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'0') || !matches!(b.get(i + 1), Some(b'x' | b'X')) {
        return None;
    }
    let n = b[i + 2..]
        .iter()
        .take_while(|c| c.is_ascii_hexdigit())
        .count();
    (n > 0 && ends(b, i + 2 + n)).then_some(i + 2 + n)
}

/// A whole word of at least 8 hex characters holding both a digit and a letter (hashes, ids).
fn hex_word(b: &[u8], i: usize) -> Option<usize> {
    let run = &b[i..];
    let n = run.iter().take_while(|c| c.is_ascii_hexdigit()).count();
    let word = &run[..n];
    (n >= 8
        && ends(b, i + n)
        && word.iter().any(u8::is_ascii_digit)
        && word.iter().any(u8::is_ascii_alphabetic))
    .then_some(i + n)
}

/// Four dotted decimal parts of at most 255, with an optional `/prefix`.
fn ipv4(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i;
    for part in 0..4 {
        if part > 0 {
            j = byte(b, j, b'.')?;
        }
        let end = digits(b, j, 1, 3)?;
        let value: u32 = std::str::from_utf8(&b[j..end]).ok()?.parse().ok()?;
        if value > 255 {
            return None;
        }
        j = end;
    }
    if !ends(b, j) || (b.get(j) == Some(&b'.') && b.get(j + 1).is_some_and(u8::is_ascii_digit)) {
        return None;
    }
    match byte(b, j, b'/').and_then(|p| digits(b, p, 1, 2)) {
        Some(end) if ends(b, end) => Some(end),
        _ => Some(j),
    }
}

/// Hex groups of at most 4 separated by colons, with `::` or all eight groups, holding a digit.
fn ipv6(b: &[u8], i: usize) -> Option<usize> {
    let mut n = b[i..]
        .iter()
        .take_while(|c| c.is_ascii_hexdigit() || **c == b':')
        .count();
    let run = &b[i..i + n];
    // A single trailing colon belongs to the text ("fe80::1: refused"), not the address.
    if run.ends_with(b":") && !run.ends_with(b"::") {
        n -= 1;
    }
    let run = &b[i..i + n];
    let colons = run.iter().filter(|&&c| c == b':').count();
    let compressed = run.windows(2).any(|w| w == b"::");
    let ok = colons >= 2
        && (compressed || colons == 7)
        && !run.windows(3).any(|w| w == b":::")
        && run.split(|&c| c == b':').all(|group| group.len() <= 4)
        && run.iter().any(u8::is_ascii_digit)
        && ends(b, i + n)
        && b.get(i + n) != Some(&b'.');
    ok.then_some(i + n)
}

/// Seconds, milliseconds, micro- or nanoseconds since 1970 for dates 2001 to 2033: 10, 13, 16
/// or 19 digits starting with 1, with an optional fraction.
fn epoch(b: &[u8], i: usize) -> Option<usize> {
    let end = digits(b, i, 1, usize::MAX)?;
    if b[i] != b'1' || ![10, 13, 16, 19].contains(&(end - i)) {
        return None;
    }
    let end = match (b.get(end), b.get(end + 1)) {
        (Some(b'.'), Some(d)) if d.is_ascii_digit() => digits(b, end + 1, 1, 9).unwrap_or(end),
        _ => end,
    };
    ends(b, end).then_some(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(line: &str) -> String {
        let mut out = String::new();
        normalize(line, &mut out);
        out
    }

    #[test]
    fn realistic_log_lines_normalise_to_their_shape() {
        let cases = [
            (
                "Nov 21 12:00:01 web-1 sshd[1234]: Failed password for root from 10.0.0.5 port 52144 ssh2",
                "<ts> web-<n> sshd[<n>]: Failed password for root from <ip> port <n> ssh<n>",
            ),
            (
                "Nov  2 08:15:44 db-12 kernel: [123456.789012] EXT4-fs error (device sda1): ext4_find_entry:1455",
                "<ts> db-<n> kernel: [<n>] EXT<n>-fs error (device sda<n>): ext<n>_find_entry:<n>",
            ),
            (
                "2024-11-21T12:00:01.123Z ERROR request 7f9c2ba4-e88f-11eb-ba80-0242ac130003 failed after 153ms",
                "<ts> ERROR request <uuid> failed after <n>ms",
            ),
            (
                "2024-11-21 12:00:01,532 WARNING worker 3: retry 2/5 for job 18 (0x7ffd5c3a)",
                "<ts> WARNING worker <n>: retry <n>/<n> for job <n> (<hex>)",
            ),
            (
                "2024/11/21 12:00:01 [error] 1234#0: *5 connect() failed (111: Connection refused) while connecting to upstream, client: 192.168.1.20, upstream: \"http://[::1]:8080/\"",
                "<ts> [error] <n>#<n>: *<n> connect() failed (<n>: Connection refused) while connecting to upstream, client: <ip>, upstream: \"http://[<ip>]:<n>/\"",
            ),
            (
                "10.1.2.3 - - [21/Nov/2024:12:00:01 +0000] \"GET /api/v1/items/4821 HTTP/1.1\" 500 1532",
                "<ip> - - [<ts>] \"GET /api/v<n>/items/<n> HTTP/<n>\" <n> <n>",
            ),
            (
                "Thu Nov 21 12:00:01 2024 commit 3f2c6c0a9b1d4e5f6a7b8c9d0e1f2a3b4c5d6e7f by bob",
                "<ts> commit <hex> by bob",
            ),
            (
                "ts=1732190401 level=info msg=\"gc done\" took=0.25s heap_ms=1732190401123 peer=fe80::1ff:fe23:4567:890a%eth0",
                "ts=<ts> level=info msg=\"gc done\" took=<n>s heap_ms=<ts> peer=<ip>%eth<n>",
            ),
            (
                "link up on eth0 (00:1a:2b:3c:4d:5e) at 12:00:01 via 2001:db8:85a3:0:0:8a2e:370:7334   ",
                "link up on eth<n> (<hex>) at <ts> via <ip>",
            ),
        ];
        for (line, want) in cases {
            assert_eq!(norm(line), want, "{line}");
        }
    }

    #[test]
    fn words_that_only_look_like_tokens_are_left_alone() {
        for line in [
            "deadbeef cafe facade",
            "std::vector and Foo::Bar",
            "a:b:c ratio 3:4",
            "May the force be with you",
            "décembre",
        ] {
            let out = norm(line);
            assert!(
                !out.contains("<hex>") && !out.contains("<ip>") && !out.contains("<ts>"),
                "{line} → {out}"
            );
        }
        assert_eq!(norm("ratio 3:4"), "ratio <n>:<n>");
        assert_eq!(norm("v1.2.3 at 99.5%"), "v<n>.<n> at <n>%");
        assert_eq!(
            norm("300.1.2.3"),
            "<n>.<n>",
            "not an address: numbers with fractions"
        );
        assert_eq!(norm("id 12345678"), "id <n>");
    }

    #[test]
    fn groups_count_every_line_keep_three_examples_and_come_rarest_first() {
        let mut digest = Digest::new(1024);
        for i in 0..5 {
            digest.add(format!("ERROR disk {i} full").as_bytes());
        }
        digest.add(b"ERROR disk 9 full");
        digest.add(b"panic: nil pointer at 0xdeadbeef");
        for i in 0..2 {
            digest.add(format!("WARN slow request {i}ms").as_bytes());
        }
        let summary = digest.finish(10, 1 << 20);
        assert_eq!(summary.total, 3);
        let got: Vec<(&str, u64, usize)> = summary
            .groups
            .iter()
            .map(|g| (g.key.as_str(), g.lines, g.examples.len()))
            .collect();
        assert_eq!(
            got,
            [
                ("panic: nil pointer at <hex>", 1, 1),
                ("WARN slow request <n>ms", 2, 2),
                ("ERROR disk <n> full", 6, 3),
            ]
        );
        assert_eq!(summary.groups[2].examples[0], "ERROR disk 0 full");
    }

    #[test]
    fn the_reply_is_cut_at_max_groups_and_holding_stops_at_the_limit() {
        let mut digest = Digest::new(64);
        for i in 0..(MAX_HELD_GROUPS + 5) {
            // Letters spelled from the number make every line its own shape.
            let word: String = i
                .to_string()
                .bytes()
                .map(|d| (b'g' + d - b'0') as char)
                .collect();
            digest.add(format!("shape {word}").as_bytes());
        }
        digest.add(b"shape g"); // a known shape is still counted
        let summary = digest.finish(7, 1 << 20);
        assert_eq!(summary.total, MAX_HELD_GROUPS as u64);
        assert_eq!(summary.ungrouped, 5);
        assert_eq!(summary.groups.len(), 7);
        assert!(summary.groups.iter().all(|g| g.lines == 1));
        assert!(!summary.cut_for_bytes);
    }

    #[test]
    fn long_lines_are_grouped_by_their_prefix_and_shown_clamped() {
        let mut digest = Digest::new(10);
        digest.add(b"abcdefghij 1 tail one");
        digest.add(b"abcdefghij 2 tail two");
        let summary = digest.finish(10, 1 << 20);
        assert_eq!(summary.groups.len(), 1);
        assert_eq!(summary.groups[0].key, "abcdefghij");
        assert!(summary.groups[0].examples[0].contains("[line clamped: 11 more bytes]"));
    }
}
