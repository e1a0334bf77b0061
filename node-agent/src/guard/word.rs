//! The words and commands the guard reasons about: a word's known and unknown parts, a simple command as found, and what a carrier runs.
//!
//! The walk produces these; the carriers and foreign interpreters read them and say what a
//! command carries; the rules, the allowlist and the path views judge them. They live here,
//! below all of those, so that the walk calls into the carriers and never the other way round.

/// A known or unknown part of a word's value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece {
    /// Known text.
    Text(String),
    /// Only known at run time; `maybe_empty` unless the shell stops on an empty value
    /// (`${x:?}`) or the value is never empty (`$$`, `$(( … ))`).
    Unknown { maybe_empty: bool },
}

/// A word with a part only known at run time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dyn {
    /// The word as shown in messages (`/usr/${SUBDIR}`).
    pub shown: String,
    /// Its parts, in order.
    pub parts: Vec<Piece>,
    /// Unquoted: at run time it may split into several words, or none.
    pub splits: bool,
    /// For a process substitution (`<(…)`): what reading the file gives.
    pub content: Option<Box<Stdin>>,
}

// === impl Dyn ===

impl Dyn {
    /// A word of which nothing is known.
    pub fn unknown(shown: impl Into<String>) -> Dyn {
        Dyn {
            shown: shown.into(),
            parts: vec![Piece::Unknown { maybe_empty: true }],
            splits: false,
            content: None,
        }
    }

    /// The text with every unknown part empty.
    pub fn text_if_empty(&self) -> String {
        self.text_with_unknown_as("")
    }

    /// The text with every unknown part replaced by `with`.
    pub fn text_with_unknown_as(&self, with: &str) -> String {
        self.parts
            .iter()
            .map(|p| match p {
                Piece::Text(t) => t.as_str(),
                Piece::Unknown { .. } => with,
            })
            .collect()
    }

    /// Whether the word may start with `c` at run time.
    pub fn may_start_with(&self, c: char) -> bool {
        for part in &self.parts {
            match part {
                Piece::Text(t) if t.is_empty() => continue,
                Piece::Text(t) => return t.starts_with(c),
                Piece::Unknown { .. } => return true,
            }
        }
        false
    }
}

/// One word of a command as far as it is known before the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The word's value, quotes removed.
    Static(String),
    /// A word with a part only known at run time.
    Dynamic(Dyn),
}

// === impl Field ===

impl Field {
    /// The value of a static word.
    pub fn known(&self) -> Option<&str> {
        match self {
            Field::Static(s) => Some(s),
            Field::Dynamic(_) => None,
        }
    }

    /// The word as shown in messages.
    pub fn shown(&self) -> &str {
        match self {
            Field::Static(s) => s,
            Field::Dynamic(d) => &d.shown,
        }
    }

    /// A field of which nothing is known.
    pub fn unknown(shown: impl Into<String>) -> Field {
        Field::Dynamic(Dyn::unknown(shown))
    }
}

/// Fields as shown in messages: each [`Field::shown`], separated by spaces.
pub fn shown_words(fields: &[Field]) -> String {
    fields
        .iter()
        .map(Field::shown)
        .collect::<Vec<_>>()
        .join(" ")
}

/// What a command reads on its standard input, as far as it is known.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Stdin {
    /// Nothing: the job's standard input is `/dev/null`.
    #[default]
    Null,
    /// This text (a here-document, `echo … |`).
    Known(String),
    /// Text only known at run time; where it comes from, in words.
    Unknown(String),
    /// A file (`< script.sh`).
    File,
}

/// A file redirection of a command.
#[derive(Debug, Clone)]
pub struct Redirect {
    /// The file.
    pub target: Field,
    /// Opened for writing (`>`, `>>`, `>|`, `<>`, `&>`).
    pub write: bool,
}

/// What kind of carrier an invocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Carrier {
    /// Runs text as code (`sh -c`, `eval`, `trap`, a shell reading its input, `source`).
    Code,
    /// Runs another command given as words (`sudo`, `env`, `xargs`, `find -exec`).
    Command,
}

/// A simple command the program can run (or a command a carrier runs).
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The command name and its arguments.
    pub fields: Vec<Field>,
    /// Its file redirections.
    pub redirects: Vec<Redirect>,
    /// Its prefix assignments (`X=1 cmd`), and the `NAME=VALUE` words of `env`.
    pub assignments: Vec<(String, Field)>,
    /// The simple command as written, for messages.
    pub text: String,
    /// The carriers it was found inside, outermost first (`sudo`, `sh -c`, `$(…)`).
    pub via: Vec<String>,
    /// The directories it may run in (`None`: one that is not known).
    pub cwd: Vec<Option<String>>,
    /// Symlinks and bind mounts the program made before it.
    pub links: Vec<(String, String)>,
    /// What it carries, if it is a carrier.
    pub carries: Option<Carrier>,
    /// It calls a function the program defines.
    pub function: bool,
}

// === impl Invocation ===

impl Invocation {
    /// The command name without its directory (`/bin/rm` → `rm`), if it is known.
    pub fn name(&self) -> Option<&str> {
        self.fields.first().and_then(Field::known).map(basename)
    }

    /// Whether the command name is only known at run time.
    pub fn name_is_dynamic(&self) -> bool {
        matches!(self.fields.first(), Some(Field::Dynamic(_)))
    }

    /// The arguments.
    pub fn args(&self) -> &[Field] {
        self.fields.get(1..).unwrap_or_default()
    }

    /// Targets of its output redirections.
    pub fn writes_to(&self) -> impl Iterator<Item = &Field> {
        self.redirects.iter().filter(|r| r.write).map(|r| &r.target)
    }
}

/// How text read by a carrier is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A shell script.
    Shell,
    /// A crontab: each line's command after the schedule.
    Crontab,
}

/// What a carrier runs.
#[derive(Debug, Clone)]
pub enum Carried {
    /// A command given as words.
    Command {
        fields: Vec<Field>,
        label: String,
        /// The directory it runs in, when the carrier changes it (`env -C`, `sudo -D`).
        cwd: Option<Field>,
        /// Variables the carrier sets for it (`env NAME=VALUE`).
        assigns: Vec<(String, Field)>,
    },
    /// Shell text, with its positional parameters (`$0`, then `$1` …) when it gets its own.
    Text {
        text: Field,
        label: String,
        args: Option<(Option<Field>, Vec<Field>)>,
        /// It may not be shell at all (a command of unknown name): what does not parse is
        /// skipped.
        lenient: bool,
        /// What it reads, when not the carrier's own standard input.
        stdin: Option<Stdin>,
    },
    /// A script read from a file; checked when the file is the standard input or a process
    /// substitution.
    File {
        file: Field,
        label: String,
        args: Option<(Option<Field>, Vec<Field>)>,
    },
    /// A script read from the command's standard input.
    Stdin {
        label: String,
        format: Format,
        lenient: bool,
    },
    /// Something that runs code the guard cannot read; why, in words.
    Unchecked(String),
}

// === impl Carried ===

impl Carried {
    /// The kind of carrier a command that carries this is.
    pub fn kind(&self) -> Carrier {
        match self {
            Carried::Command { .. } => Carrier::Command,
            _ => Carrier::Code,
        }
    }
}

/// `/bin/rm` → `rm`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// The value of `$'…'` text: C escapes.
pub fn ansi_c(s: &str) -> String {
    escapes(s, false).0
}

/// Interprets backslash escapes (`\n`, `\x41`, `\101`, `\u263a`, …); with `echo_style`, `\0NNN`
/// is octal and `\c` stops all output (the `bool` says it did).
pub fn escapes(s: &str, echo_style: bool) -> (String, bool) {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    let take = |chars: &mut std::iter::Peekable<std::str::Chars<'_>>, radix: u32, max: usize| {
        let mut digits = String::new();
        while digits.len() < max
            && let Some(&c) = chars.peek()
            && c.is_digit(radix)
        {
            digits.push(c);
            chars.next();
        }
        u32::from_str_radix(&digits, radix).ok()
    };
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let Some(e) = chars.next() else {
            out.push('\\');
            break;
        };
        let decoded = match e {
            'n' => Some('\n'),
            't' => Some('\t'),
            'r' => Some('\r'),
            'a' => Some('\x07'),
            'b' => Some('\x08'),
            'e' | 'E' => Some('\x1b'),
            'f' => Some('\x0c'),
            'v' => Some('\x0b'),
            '\\' | '\'' | '"' | '?' => Some(e),
            'x' => take(&mut chars, 16, 2).and_then(char::from_u32),
            'u' => take(&mut chars, 16, 4).and_then(char::from_u32),
            'U' => take(&mut chars, 16, 8).and_then(char::from_u32),
            'c' if echo_style => return (out, true),
            '0' if echo_style => take(&mut chars, 8, 3)
                .and_then(char::from_u32)
                .or(Some('\0')),
            '0'..='7' => {
                let mut value = e.to_digit(8).unwrap_or(0);
                for _ in 0..2 {
                    match chars.peek().and_then(|c| c.to_digit(8)) {
                        Some(d) => {
                            value = value * 8 + d;
                            chars.next();
                        }
                        None => break,
                    }
                }
                char::from_u32(value)
            }
            'c' => chars.next().map(|c| ((c as u8) & 0x1f) as char),
            other => {
                out.push('\\');
                Some(other)
            }
        };
        out.extend(decoded);
    }
    (out, false)
}
