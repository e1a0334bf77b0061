//! Shell commands inside code given to other interpreters on the command line (`python3 -c`, `perl -e`, `awk '…'`, …).
//!
//! The guard does not parse Python or Perl. It looks in the code for the calls that hand text
//! to a shell (`system`, `os.system`, `popen`, `subprocess.run`, `execSync`, backticks, `qx{}`,
//! awk's `system()` and `| "cmd"`) and checks a string literal given to one as shell text, and
//! a list of literals as a command. Text built at run time and given to such a call is code the
//! guard cannot read. Everything else the code does — files it deletes through the language's
//! own functions, for instance — is outside what the guard sees.

use super::word::{Carried, Field, Stdin};

/// Calls that run their text through a shell.
const SHELL_CALLS: &[&str] = &[
    "system",
    "popen",
    "getoutput",
    "getstatusoutput",
    "shell_exec",
    "passthru",
    "proc_open",
    "execSync",
    "exec",
    "execute",
];

/// Calls that run a list of words, or a string (through a shell with `shell=True`).
const COMMAND_CALLS: &[&str] = &[
    "run",
    "call",
    "check_call",
    "check_output",
    "Popen",
    "spawnSync",
    "execFileSync",
    "capture2",
    "capture2e",
    "capture3",
];

/// What the code given to interpreter `name` on its command line runs in a shell.
pub fn carried(name: &str, args: &[Field]) -> Vec<Carried> {
    let code = match language(name) {
        Some(Language::Python) => option_value(args, &['c'], &[], &['m']),
        Some(Language::Perl) => option_value(args, &['e', 'E'], &[], &[]),
        Some(Language::Ruby) => option_value(args, &['e'], &[], &[]),
        Some(Language::Node) => option_value(args, &['e', 'p'], &["--eval", "--print"], &[]),
        Some(Language::Php) => option_value(args, &['r'], &[], &[]),
        Some(Language::Lua) => option_value(args, &['e'], &[], &[]),
        Some(Language::Awk) => awk_program(args),
        None => return Vec::new(),
    };
    let label = format!("{name} (its code)");
    match code {
        Some(Field::Static(code)) => {
            shell_outs(&code, &label, language(name) == Some(Language::Awk))
        }
        // Code only known at run time: whatever it runs is not known either.
        Some(Field::Dynamic(_)) | None => Vec::new(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Language {
    Python,
    Perl,
    Ruby,
    Node,
    Php,
    Lua,
    Awk,
}

fn language(name: &str) -> Option<Language> {
    let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.');
    Some(match stem {
        "python" | "pypy" => Language::Python,
        "perl" => Language::Perl,
        "ruby" => Language::Ruby,
        "node" | "nodejs" => Language::Node,
        "php" => Language::Php,
        "lua" | "luajit" => Language::Lua,
        "awk" | "gawk" | "mawk" | "nawk" => Language::Awk,
        _ => return None,
    })
}

/// The value of the first short option in `letters` (as `-c CODE`, `-cCODE` or the last
/// letter of a cluster, `-ne CODE`) or long option in `longs`; options stop at the first
/// operand or at a letter of `stops`.
fn option_value(args: &[Field], letters: &[char], longs: &[&str], stops: &[char]) -> Option<Field> {
    let mut i = 0;
    while i < args.len() {
        let arg = args[i].known()?;
        if arg == "--" || !arg.starts_with('-') || arg == "-" {
            return None;
        }
        if let Some(long) = longs
            .iter()
            .find(|l| arg == **l || arg.starts_with(&format!("{l}=")))
        {
            return match arg.split_once('=') {
                Some((_, v)) if arg.len() > long.len() => Some(Field::Static(v.to_string())),
                _ => args.get(i + 1).cloned(),
            };
        }
        if !arg.starts_with("--") {
            let cluster: Vec<char> = arg[1..].chars().collect();
            for (k, c) in cluster.iter().enumerate() {
                if stops.contains(c) {
                    return None;
                }
                if letters.contains(c) {
                    let attached: String = cluster[k + 1..].iter().collect();
                    return if attached.is_empty() {
                        args.get(i + 1).cloned()
                    } else {
                        Some(Field::Static(attached))
                    };
                }
            }
        }
        i += 1;
    }
    None
}

/// awk's program: `-e`/`--source` text, else the first operand unless `-f` names a file.
fn awk_program(args: &[Field]) -> Option<Field> {
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].known() else {
            return Some(args[i].clone());
        };
        match arg {
            "--" => return args.get(i + 1).cloned(),
            "-e" | "--source" => return args.get(i + 1).cloned(),
            "-f" | "--file" => return None,
            "-F" | "-v" | "--assign" | "--field-separator" | "-i" | "--include" | "-l"
            | "--load" => i += 2,
            _ if arg.starts_with("--source=") => {
                return Some(Field::Static(arg["--source=".len()..].to_string()));
            }
            _ if arg.starts_with("-f") && arg.len() > 2 => return None,
            _ if arg.starts_with('-') && arg.len() > 1 => i += 1,
            _ => return Some(args[i].clone()),
        }
    }
    None
}

/// The shell commands `code` hands to a shell.
fn shell_outs(code: &str, label: &str, awk: bool) -> Vec<Carried> {
    let chars: Vec<char> = code.chars().collect();
    let mut carried = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        // Backticks (Perl, Ruby; not awk, where they are plain characters in strings).
        if c == '`'
            && !awk
            && let Some(end) = chars[i + 1..].iter().position(|x| *x == '`')
        {
            let text: String = chars[i + 1..i + 1 + end].iter().collect();
            carried.push(text_carried(text, label, None));
            i += end + 2;
            continue;
        }
        // `qx{…}`, `qx(…)`, `qx/…/`, `%x{…}`, `%x(…)`.
        if (c == 'q' || c == '%')
            && chars.get(i + 1) == Some(&'x')
            && (i == 0 || !is_word(chars[i - 1]))
            && let Some(&open) = chars.get(i + 2)
            && !is_word(open)
            && !open.is_whitespace()
        {
            let close = match open {
                '{' => '}',
                '(' => ')',
                '[' => ']',
                '<' => '>',
                other => other,
            };
            if let Some(end) = chars[i + 3..].iter().position(|x| *x == close) {
                let text: String = chars[i + 3..i + 3 + end].iter().collect();
                carried.push(text_carried(text, label, None));
                i += end + 4;
                continue;
            }
        }
        // awk: `print … | "cmd"` feeds the command; `"cmd" | getline` reads it.
        if awk && c == '|' {
            let mut j = i + 1;
            if chars.get(j) == Some(&'&') {
                j += 1;
            }
            while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if let Some((text, _)) = string_literal(&chars, j) {
                carried.push(text_carried(
                    text,
                    label,
                    Some(Stdin::Unknown("what awk prints into it".into())),
                ));
            }
        }
        if awk
            && c == '"'
            && let Some((text, end)) = string_literal(&chars, i)
        {
            let mut j = end;
            while chars.get(j).is_some_and(|c| c.is_whitespace()) {
                j += 1;
            }
            if chars.get(j) == Some(&'|') && chars.get(j + 1) != Some(&'|') {
                let mut k = j + 1;
                while chars.get(k).is_some_and(|c| c.is_whitespace()) {
                    k += 1;
                }
                let next: String = chars[k.min(chars.len())..].iter().take(7).collect();
                if next == "getline" {
                    carried.push(text_carried(text, label, None));
                }
            }
            i = end;
            continue;
        }
        if is_word(c) && (i == 0 || !is_word(chars[i - 1])) {
            let end = chars[i..]
                .iter()
                .position(|x| !is_word(*x))
                .map_or(chars.len(), |p| i + p);
            let word: String = chars[i..end].iter().collect();
            let shell = SHELL_CALLS.contains(&word.as_str());
            if (shell || COMMAND_CALLS.contains(&word.as_str()))
                && let Some(found) = call_argument(&chars, end, &word, shell, label)
            {
                carried.push(found);
            }
            i = end;
            continue;
        }
        i += 1;
    }
    carried
}

fn is_word(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// What the call `name` whose name ends at `at` is given.
fn call_argument(
    chars: &[char],
    at: usize,
    name: &str,
    shell: bool,
    label: &str,
) -> Option<Carried> {
    let mut i = at;
    let skip_space = |i: &mut usize| {
        while chars.get(*i).is_some_and(|c| *c == ' ' || *c == '\t') {
            *i += 1;
        }
    };
    skip_space(&mut i);
    let paren = chars.get(i) == Some(&'(');
    if paren {
        i += 1;
        skip_space(&mut i);
    }
    let label = format!("{label}: {name}");
    // A list of words: a command.
    if chars.get(i) == Some(&'[') {
        let mut words = Vec::new();
        let mut j = i + 1;
        loop {
            while chars.get(j).is_some_and(|c| c.is_whitespace() || *c == ',') {
                j += 1;
            }
            if chars.get(j) == Some(&']') {
                break;
            }
            let (word, end) = string_literal(chars, j)?;
            words.push(Field::Static(word));
            j = end;
        }
        return (!words.is_empty()).then(|| Carried::Command {
            fields: words,
            label,
            cwd: None,
            assigns: Vec::new(),
        });
    }
    match string_literal(chars, i) {
        Some((first, mut end)) => {
            // Several literals in a row (`system("rm", "-rf", "/")`): a command.
            let mut words = vec![first.clone()];
            loop {
                let mut j = end;
                skip_space(&mut j);
                if chars.get(j) != Some(&',') {
                    break;
                }
                j += 1;
                skip_space(&mut j);
                match string_literal(chars, j) {
                    Some((word, next)) => {
                        words.push(word);
                        end = next;
                    }
                    None => break,
                }
            }
            let mut j = end;
            skip_space(&mut j);
            let complete = matches!(
                chars.get(j),
                None | Some(')' | ',' | ';' | '}' | '\n' | ']')
            );
            if !complete && shell {
                return Some(Carried::Unchecked(format!(
                    "`{name}` in {label} is given text built at run time"
                )));
            }
            Some(if words.len() > 1 {
                Carried::Command {
                    fields: words.into_iter().map(Field::Static).collect(),
                    label,
                    cwd: None,
                    assigns: Vec::new(),
                }
            } else {
                text_carried(first, &label, None)
            })
        }
        // A variable or an expression: text only known at run time.
        None if shell && (paren || chars.get(i).is_some_and(|c| is_word(*c) || *c == '$')) => Some(
            Carried::Unchecked(format!("{label} hands a shell text only known at run time")),
        ),
        None => None,
    }
}

fn text_carried(text: String, label: &str, stdin: Option<Stdin>) -> Carried {
    Carried::Text {
        text: Field::Static(text),
        label: label.to_string(),
        args: None,
        lenient: true,
        stdin,
    }
}

/// The string literal starting at `chars[at]` (after an optional `r`/`b`/`f`/`u` prefix):
/// its value and the index after it.
fn string_literal(chars: &[char], at: usize) -> Option<(String, usize)> {
    let mut i = at;
    while chars
        .get(i)
        .is_some_and(|c| matches!(c, 'r' | 'b' | 'f' | 'u' | 'R' | 'B' | 'F' | 'U'))
        && i < at + 2
    {
        i += 1;
    }
    let quote = *chars.get(i)?;
    if quote != '"' && quote != '\'' {
        return None;
    }
    let mut value = String::new();
    let mut j = i + 1;
    while let Some(&c) = chars.get(j) {
        if c == '\\'
            && let Some(&next) = chars.get(j + 1)
        {
            value.push(match next {
                'n' => '\n',
                't' => '\t',
                other => other,
            });
            j += 2;
            continue;
        }
        if c == quote {
            return Some((value, j + 1));
        }
        value.push(c);
        j += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(name: &str, words: &[&str]) -> Vec<String> {
        let args: Vec<Field> = words.iter().map(|w| Field::Static(w.to_string())).collect();
        carried(name, &args)
            .into_iter()
            .map(|c| match c {
                Carried::Text { text, .. } => text.shown().to_string(),
                Carried::Command { fields, .. } => fields
                    .iter()
                    .map(Field::shown)
                    .collect::<Vec<_>>()
                    .join(" "),
                Carried::Unchecked(_) => "?".into(),
                _ => String::new(),
            })
            .collect()
    }

    #[test]
    fn shell_outs_in_other_languages_are_found() {
        assert_eq!(
            texts("python3", &["-c", "import os; os.system(\"rm -rf /\")"]),
            ["rm -rf /"]
        );
        assert_eq!(
            texts(
                "python3",
                &[
                    "-c",
                    "import subprocess; subprocess.run([\"rm\", \"-rf\", \"/\"])"
                ]
            ),
            ["rm -rf /"]
        );
        assert_eq!(texts("perl", &["-e", "`reboot`"]), ["reboot"]);
        assert_eq!(texts("perl", &["-le", "print qx{ls}"]), ["ls"]);
        assert_eq!(texts("perl", &["-e", "exec \"reboot\""]), ["reboot"]);
        assert_eq!(texts("awk", &["BEGIN { system(\"reboot\") }"]), ["reboot"]);
        assert_eq!(texts("awk", &["{ system($0) }"]), ["?"]);
        assert_eq!(texts("awk", &["BEGIN { print \"x\" | \"sh\" }"]), ["sh"]);
        assert!(texts("python3", &["-c", "print(1)"]).is_empty());
        assert!(texts("perl", &["-ne", "print if /error/", "/var/log/syslog"]).is_empty());
        assert!(texts("awk", &["-F:", "{print $1}", "/etc/passwd"]).is_empty());
    }
}
