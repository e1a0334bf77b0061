//! Clamps long lines for display, cutting at a character boundary and saying how much was cut.

/// Appended to a clamped line, with the number of bytes left out.
pub fn marker(omitted: u64) -> String {
    format!(" … [line clamped: {omitted} more bytes]")
}

/// Longest marker [`marker`] can produce.
pub const MAX_MARKER_BYTES: usize = 56;

/// The largest index `<= index` that is a character boundary of `s`.
pub fn floor_char_boundary(s: &str, index: usize) -> usize {
    if index >= s.len() {
        return s.len();
    }
    (0..=index)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

/// Where to cut `bytes` (possibly invalid UTF-8) to keep at most `max` bytes without splitting
/// a UTF-8 sequence: backs off over continuation bytes.
pub fn cut_point(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut cut = max;
    // A UTF-8 sequence has at most 3 continuation bytes (0b10xx_xxxx).
    while cut > 0 && max - cut < 3 && bytes[cut] & 0xC0 == 0x80 {
        cut -= 1;
    }
    if bytes[cut] & 0xC0 == 0x80 {
        // Not UTF-8 anyway: any cut is as good as another.
        max
    } else {
        cut
    }
}

/// A line (without its terminator) as text, clamped to `max` bytes of content plus a marker
/// when longer; `total` is the line's full length when only a prefix of it is in `bytes`.
/// Returns the text and whether it was clamped.
pub fn line_text(bytes: &[u8], total: u64, max: usize) -> (String, bool) {
    let keep = cut_point(bytes, max);
    let mut text = String::from_utf8_lossy(&bytes[..keep]).into_owned();
    let omitted = total.saturating_sub(keep as u64);
    if omitted > 0 {
        text.push_str(&marker(omitted));
        (text, true)
    } else {
        (text, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clamping_never_splits_a_character() {
        let line = "ééééé".as_bytes(); // 10 bytes, 2 per character
        let (text, clamped) = line_text(line, line.len() as u64, 5);
        assert!(clamped);
        assert_eq!(text, "éé … [line clamped: 6 more bytes]");
        let (text, clamped) = line_text(line, line.len() as u64, 10);
        assert!(!clamped);
        assert_eq!(text, "ééééé");
    }

    #[test]
    fn a_prefix_reports_the_whole_line_length() {
        let (text, clamped) = line_text(b"abcdef", 1_000_006, 3);
        assert!(clamped);
        assert_eq!(text, "abc … [line clamped: 1000003 more bytes]");
        assert!(marker(u64::MAX).len() <= MAX_MARKER_BYTES);
    }

    #[test]
    fn char_boundaries_are_found_below_the_index() {
        assert_eq!(floor_char_boundary("aé", 2), 1);
        assert_eq!(floor_char_boundary("aé", 9), 3);
    }
}
