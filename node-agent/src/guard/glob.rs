//! Shell glob patterns as the guard compares them: matching a name, and whether two patterns can match a common name.
//!
//! Patterns know `*`, `?`, bracket expressions (`[abc]`, `[a-z]`, `[!x]`, `[^x]`, `[[:alpha:]]`)
//! and `\` escapes. Extended globs (`@(…)`, `!(…)`, `+(…)`, `*(…)`, `?(…)`) are read as `*`,
//! which matches at least everything they can match. Matching is per path component only where
//! the caller splits paths; a `*` here matches any character, `/` included.

/// One element of a parsed pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// Any run of characters.
    Star,
    /// One character from a set.
    One(Set),
}

/// A set of characters one pattern position accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Set {
    Any,
    Char(char),
    /// A bracket expression: ranges (single characters are ranges of one), named classes,
    /// and whether it is negated.
    Class {
        ranges: Vec<(char, char)>,
        classes: Vec<String>,
        negated: bool,
    },
}

// === impl Set ===

impl Set {
    fn contains(&self, c: char, fold_case: bool) -> bool {
        match self {
            Set::Any => true,
            Set::Char(x) => *x == c || (fold_case && x.eq_ignore_ascii_case(&c)),
            Set::Class {
                ranges,
                classes,
                negated,
            } => {
                let in_ranges = |c: char| ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                let hit = in_ranges(c)
                    || (fold_case
                        && (in_ranges(c.to_ascii_lowercase())
                            || in_ranges(c.to_ascii_uppercase())))
                    || classes.iter().any(|class| in_class(class, c));
                hit != *negated
            }
        }
    }

    /// Whether some character is in both sets (answered generously for classes).
    fn meets(&self, other: &Set) -> bool {
        match (self, other) {
            (Set::Any, _) | (_, Set::Any) => true,
            (Set::Char(a), b) => b.contains(*a, false),
            (a, Set::Char(b)) => a.contains(*b, false),
            // Two bracket expressions: try every character they name, then a few others for
            // negated ones and named classes.
            (a, b) => sample_chars(a)
                .chain(sample_chars(b))
                .chain("aZ0._-/ ".chars())
                .any(|c| a.contains(c, false) && b.contains(c, false)),
        }
    }
}

fn sample_chars(set: &Set) -> impl Iterator<Item = char> + '_ {
    let ranges: &[(char, char)] = match set {
        Set::Class { ranges, .. } => ranges,
        _ => &[],
    };
    ranges.iter().flat_map(|(lo, hi)| [*lo, *hi])
}

fn in_class(class: &str, c: char) -> bool {
    match class {
        "alpha" => c.is_alphabetic(),
        "digit" => c.is_ascii_digit(),
        "alnum" => c.is_alphanumeric(),
        "upper" => c.is_uppercase(),
        "lower" => c.is_lowercase(),
        "space" => c.is_whitespace(),
        "blank" => c == ' ' || c == '\t',
        "punct" => c.is_ascii_punctuation(),
        "xdigit" => c.is_ascii_hexdigit(),
        "cntrl" => c.is_control(),
        "print" => !c.is_control(),
        "graph" => !c.is_control() && c != ' ',
        "word" => c.is_alphanumeric() || c == '_',
        // An unknown class could be anything.
        _ => true,
    }
}

/// Whether `text` has glob characters (`*`, `?`, `[`) that are not escaped.
pub fn is_glob(text: &str) -> bool {
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '*' | '?' | '[' => return true,
            '@' | '!' | '+' if chars.clone().next() == Some('(') => return true,
            _ => {}
        }
    }
    false
}

/// Whether `text` uses extended-glob syntax (`@(`, `!(`, `+(`, `*(`, `?(`).
pub fn has_extglob(text: &str) -> bool {
    ["@(", "!(", "+(", "*(", "?("]
        .iter()
        .any(|opener| text.contains(opener))
}

fn parse(glob: &str) -> Vec<Token> {
    let chars: Vec<char> = glob.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Extended glob: the whole group is read as `*`.
        if matches!(c, '@' | '!' | '+' | '*' | '?') && chars.get(i + 1) == Some(&'(') {
            let mut depth = 0;
            let mut j = i + 1;
            while j < chars.len() {
                match chars[j] {
                    '(' => depth += 1,
                    ')' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            push_star(&mut tokens);
            i = j + 1;
            continue;
        }
        match c {
            '*' => {
                push_star(&mut tokens);
                i += 1;
            }
            '?' => {
                tokens.push(Token::One(Set::Any));
                i += 1;
            }
            '\\' if i + 1 < chars.len() => {
                tokens.push(Token::One(Set::Char(chars[i + 1])));
                i += 2;
            }
            '[' => match bracket(&chars, i) {
                Some((set, next)) => {
                    tokens.push(Token::One(set));
                    i = next;
                }
                None => {
                    tokens.push(Token::One(Set::Char('[')));
                    i += 1;
                }
            },
            other => {
                tokens.push(Token::One(Set::Char(other)));
                i += 1;
            }
        }
    }
    tokens
}

fn push_star(tokens: &mut Vec<Token>) {
    if tokens.last() != Some(&Token::Star) {
        tokens.push(Token::Star);
    }
}

/// Parses the bracket expression starting at `chars[at] == '['`; the set and the index after it.
fn bracket(chars: &[char], at: usize) -> Option<(Set, usize)> {
    let mut i = at + 1;
    let negated = matches!(chars.get(i), Some('!' | '^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut classes = Vec::new();
    let mut first = true;
    while i < chars.len() && (first || chars[i] != ']') {
        first = false;
        if chars[i] == '[' && chars.get(i + 1) == Some(&':') {
            let rest: String = chars[i + 2..].iter().collect();
            if let Some(end) = rest.find(":]") {
                classes.push(rest[..end].to_string());
                i += 2 + rest[..end].chars().count() + 2;
                continue;
            }
        }
        let c = if chars[i] == '\\' && i + 1 < chars.len() {
            i += 1;
            chars[i]
        } else {
            chars[i]
        };
        if i + 2 < chars.len() && chars[i + 1] == '-' && chars[i + 2] != ']' {
            ranges.push((c, chars[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    if i >= chars.len() {
        return None;
    }
    Some((
        Set::Class {
            ranges,
            classes,
            negated,
        },
        i + 1,
    ))
}

/// The words of a command written as globs (a host rule, an allowlist entry): the command
/// name and the argument globs, each checked. `empty` is the error for a text without words.
pub fn command_globs<'a>(text: &'a str, empty: &str) -> Result<(&'a str, Vec<String>), String> {
    let mut words = text.split_whitespace();
    let name = words.next().ok_or_else(|| empty.to_string())?;
    let args: Vec<String> = words.map(str::to_string).collect();
    for glob in std::iter::once(name).chain(args.iter().map(String::as_str)) {
        check_glob(glob).map_err(|e| format!("`{glob}`: {e}"))?;
    }
    Ok((name, args))
}

/// Checks that brackets in a glob are closed.
pub fn check_glob(glob: &str) -> Result<(), String> {
    let chars: Vec<char> = glob.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        match chars[i] {
            '\\' => i += 2,
            '[' => match bracket(&chars, i) {
                Some((_, next)) => i = next,
                None => return Err("`[` without a closing `]`".into()),
            },
            _ => i += 1,
        }
    }
    Ok(())
}

/// Shell-style match of the whole `text` against `glob`.
pub fn glob_match(glob: &str, text: &str) -> bool {
    matches_tokens(&parse(glob), &text.chars().collect::<Vec<_>>(), false)
}

/// [`glob_match`], ignoring ASCII case (how `nocaseglob` compares).
pub fn glob_match_nocase(glob: &str, text: &str) -> bool {
    matches_tokens(&parse(glob), &text.chars().collect::<Vec<_>>(), true)
}

fn matches_tokens(g: &[Token], t: &[char], fold_case: bool) -> bool {
    let (mut gi, mut ti) = (0, 0);
    // Backtracking point of the last `*`: (token index after it, text index it stands at).
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        match g.get(gi) {
            Some(Token::Star) => {
                star = Some((gi + 1, ti));
                gi += 1;
                continue;
            }
            Some(Token::One(set)) if set.contains(t[ti], fold_case) => {
                gi += 1;
                ti += 1;
                continue;
            }
            _ => {}
        }
        match star {
            Some((after, at)) => {
                gi = after;
                ti = at + 1;
                star = Some((after, at + 1));
            }
            None => return false,
        }
    }
    g[gi..].iter().all(|t| *t == Token::Star)
}

/// Whether some text matches both patterns (a literal text is a pattern that matches itself).
/// Case is ignored when `fold_case`.
pub fn globs_intersect(a: &str, b: &str, fold_case: bool) -> bool {
    let (a, b) = (parse(a), parse(b));
    let mut memo = vec![vec![None; b.len() + 1]; a.len() + 1];
    intersect(&a, &b, 0, 0, fold_case, &mut memo)
}

fn intersect(
    a: &[Token],
    b: &[Token],
    i: usize,
    j: usize,
    fold_case: bool,
    memo: &mut Vec<Vec<Option<bool>>>,
) -> bool {
    if let Some(known) = memo[i][j] {
        return known;
    }
    let result = match (a.get(i), b.get(j)) {
        (None, None) => true,
        (Some(Token::Star), _) => {
            // The star matches nothing, or eats one more position of the other pattern.
            intersect(a, b, i + 1, j, fold_case, memo)
                || (j < b.len() && intersect(a, b, i, j + 1, fold_case, memo))
        }
        (_, Some(Token::Star)) => {
            intersect(a, b, i, j + 1, fold_case, memo)
                || (i < a.len() && intersect(a, b, i + 1, j, fold_case, memo))
        }
        (Some(Token::One(x)), Some(Token::One(y))) => {
            let meet = if fold_case {
                x.meets(y) || fold(x).meets(&fold(y))
            } else {
                x.meets(y)
            };
            meet && intersect(a, b, i + 1, j + 1, fold_case, memo)
        }
        _ => false,
    };
    memo[i][j] = Some(result);
    result
}

fn fold(set: &Set) -> Set {
    match set {
        Set::Char(c) => Set::Char(c.to_ascii_lowercase()),
        Set::Class {
            ranges,
            classes,
            negated,
        } => Set::Class {
            ranges: ranges
                .iter()
                .map(|(lo, hi)| (lo.to_ascii_lowercase(), hi.to_ascii_lowercase()))
                .collect(),
            classes: classes.clone(),
            negated: *negated,
        },
        Set::Any => Set::Any,
    }
}

/// A glob that matches any name (`*`, `?*`, `*[!.]*` and the like), judged on a few unlike
/// names.
pub fn matches_everything(glob: &str) -> bool {
    ["bin", "x.conf", "a", "Zz-9", "lib64"]
        .iter()
        .all(|name| glob_match(glob, name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_like_the_shell() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("mkfs*", "mkfs.ext4"));
        assert!(glob_match("/[eu]*", "/etc"));
        assert!(glob_match("[!a]b", "xb"));
        assert!(!glob_match("[!a]b", "ab"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("*.log", "x.log"));
        assert!(!glob_match("*.log", "x.log.gz"));
        assert!(glob_match("\\*", "*"));
        assert!(glob_match("[[:alpha:]]*", "usr"));
        assert!(!glob_match("[[:digit:]]*", "usr"));
        assert!(glob_match("@(usr|etc)", "usr"));
        assert!(glob_match_nocase("U*", "usr"));
        assert!(!glob_match("U*", "usr"));
        assert!(glob_match("[a-z]*", "bin"));
    }

    #[test]
    fn intersections_of_patterns() {
        assert!(globs_intersect("/etc/sha*", "/etc/shadow", false));
        assert!(globs_intersect("/etc/shado?", "/etc/shadow*", false));
        assert!(globs_intersect("sd?", "sd*", false));
        assert!(globs_intersect("[s]hadow", "shadow", false));
        assert!(!globs_intersect("*.bak", "bin", false));
        assert!(!globs_intersect("/tmp/*", "/etc/shadow", false));
        assert!(globs_intersect("U*", "usr", true));
        assert!(!globs_intersect("U*", "usr", false));
        assert!(globs_intersect("*x*", "*y*", false));
    }

    #[test]
    fn brackets_must_close() {
        assert!(check_glob("rm [abc]").is_ok());
        assert!(check_glob("rm [abc").is_err());
        assert!(is_glob("/usr/*"));
        assert!(!is_glob("/usr/\\*"));
        assert!(is_glob("/@(usr)"));
    }
}
