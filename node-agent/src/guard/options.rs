//! Reads a command's options the way GNU `getopt_long` does: short clusters, attached and separate values, unambiguous abbreviations of long options, `--opt=value`, and `--` ending the options.
//!
//! A [`Spec`] is written like a `getopt` option string plus a list of long options:
//!
//! - `short`: the short option letters; a letter followed by `:` takes a value (attached,
//!   `-n5`, or the next word, `-n 5`), by `::` an optional one (attached only).
//! - `long`: `"name"` (a flag), `"name:"` (takes a value), `"name::"` (optional value, only as
//!   `--name=value`), or `"name=c"` (the same option as the short letter `c`).
//!
//! An option is named in the result by its short letter when it has one (`"r"` for both `-r`
//! and `--recursive`), otherwise by its long name. Options the spec does not know are kept
//! with a leading `?` so that rules can still look at them.

use super::word::Field;

/// How an option takes a value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Takes {
    No,
    Required,
    Optional,
}

/// The option syntax of one program.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// Short option letters, `getopt` style (`"fiIrRdv"`, `"n:"`).
    pub short: &'static str,
    /// Long options (see the module documentation).
    pub long: &'static [&'static str],
    /// Options may follow operands (GNU's default); `false` stops at the first operand, as
    /// wrappers do before the command they run.
    pub permute: bool,
}

/// One option found in the arguments.
#[derive(Debug, Clone)]
pub struct Found {
    /// The option's name: its short letter if it has one, else its long name; `?x` for an
    /// option the spec does not know.
    pub name: String,
    /// Its value, if it takes one and one was given.
    pub value: Option<Field>,
    /// Written with `+` rather than `-` (shell options turned off).
    pub plus: bool,
}

/// The arguments, split into options and operands.
#[derive(Debug, Clone, Default)]
pub struct Parsed {
    /// Options in the order written.
    pub options: Vec<Found>,
    /// Indices (into the arguments) of the operands, in order.
    pub operands: Vec<usize>,
    /// Index of the first operand when options stop there (`permute: false`), or the
    /// number of arguments when there is none.
    pub rest: usize,
    /// A word only known at run time stood where an option could be: it may be any option.
    pub maybe_more: bool,
}

// === impl Parsed ===

impl Parsed {
    /// Whether option `name` was given (with `-`).
    pub fn has(&self, name: &str) -> bool {
        self.options.iter().any(|o| o.name == name && !o.plus)
    }

    /// The last value given to option `name`.
    pub fn value(&self, name: &str) -> Option<&Field> {
        self.options
            .iter()
            .rev()
            .find(|o| o.name == name)
            .and_then(|o| o.value.as_ref())
    }

    /// Every value given to option `name`, in order.
    pub fn values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Field> + 'a {
        self.options
            .iter()
            .filter(move |o| o.name == name)
            .filter_map(|o| o.value.as_ref())
    }

    /// The operands as fields.
    pub fn operand_fields<'a>(
        &self,
        args: &'a [Field],
    ) -> impl Iterator<Item = &'a Field> + use<'a> {
        self.operands
            .clone()
            .into_iter()
            .filter_map(move |i| args.get(i))
    }
}

// === impl Spec ===

impl Spec {
    fn short_takes(&self, c: char) -> Option<Takes> {
        let chars: Vec<char> = self.short.chars().collect();
        let at = chars.iter().position(|x| *x == c && *x != ':')?;
        Some(match (chars.get(at + 1), chars.get(at + 2)) {
            (Some(':'), Some(':')) => Takes::Optional,
            (Some(':'), _) => Takes::Required,
            _ => Takes::No,
        })
    }

    /// The long option `name` (exact, or the only one it abbreviates): its result name and
    /// how it takes a value. `Err(true)` when the abbreviation is ambiguous.
    fn long(&self, name: &str) -> Result<(String, Takes), bool> {
        let entries = self.long.iter().map(|entry| long_entry(entry));
        let mut exact = None;
        let mut prefixed: Vec<(String, Takes)> = Vec::new();
        for (long, result, takes) in entries {
            let takes = match takes {
                LongTakes::Own(t) => t,
                LongTakes::Short(c) => self.short_takes(c).unwrap_or(Takes::No),
            };
            if long == name {
                exact = Some((result.clone(), takes));
            } else if !name.is_empty()
                && long.starts_with(name)
                && !prefixed.iter().any(|(r, _)| *r == result)
            {
                prefixed.push((result, takes));
            }
        }
        match (exact, prefixed.len()) {
            (Some(found), _) => Ok(found),
            (None, 1) => Ok(prefixed.remove(0)),
            (None, 0) => Err(false),
            (None, _) => Err(true),
        }
    }

    /// Splits `args` into options and operands.
    pub fn parse(&self, args: &[Field]) -> Parsed {
        self.parse_with(args, false)
    }

    /// [`Spec::parse`] for a shell, whose options may also start with `+` (turning them off).
    pub fn parse_shell(&self, args: &[Field]) -> Parsed {
        self.parse_with(args, true)
    }

    fn parse_with(&self, args: &[Field], plus_options: bool) -> Parsed {
        let mut parsed = Parsed {
            rest: args.len(),
            ..Parsed::default()
        };
        let mut i = 0;
        while i < args.len() {
            match &args[i] {
                // A run-time word is an operand; one that may start with `-` may be any option.
                Field::Dynamic(d) => {
                    if d.may_start_with('-') {
                        parsed.maybe_more = true;
                    }
                }
                Field::Static(arg) => {
                    let arg = arg.as_str();
                    if arg == "--" {
                        parsed.rest = (i + 1).min(args.len());
                        parsed.operands.extend(i + 1..args.len());
                        return parsed;
                    }
                    let plus = plus_options && arg.len() > 1 && arg.starts_with('+');
                    if let Some(long) = arg.strip_prefix("--") {
                        let (name, attached) = match long.split_once('=') {
                            Some((n, v)) => (n, Some(v)),
                            None => (long, None),
                        };
                        match self.long(name) {
                            Ok((result, takes)) => {
                                let value = match (takes, attached) {
                                    (Takes::No, _) => None,
                                    (_, Some(v)) => Some(Field::Static(v.to_string())),
                                    (Takes::Required, None) => {
                                        i += 1;
                                        args.get(i).cloned()
                                    }
                                    (Takes::Optional, None) => None,
                                };
                                parsed.options.push(Found {
                                    name: result,
                                    value,
                                    plus: false,
                                });
                            }
                            Err(_) => parsed.options.push(Found {
                                name: format!("?{name}"),
                                value: attached.map(|v| Field::Static(v.to_string())),
                                plus: false,
                            }),
                        }
                        i += 1;
                        continue;
                    }
                    if (arg.starts_with('-') || plus) && arg.len() > 1 {
                        let cluster: Vec<char> = arg[1..].chars().collect();
                        let mut k = 0;
                        while k < cluster.len() {
                            let c = cluster[k];
                            match self.short_takes(c) {
                                Some(Takes::No) | None => {
                                    let known = self.short_takes(c).is_some();
                                    parsed.options.push(Found {
                                        name: if known {
                                            c.to_string()
                                        } else {
                                            format!("?{c}")
                                        },
                                        value: None,
                                        plus,
                                    });
                                    k += 1;
                                }
                                Some(takes) => {
                                    let attached: String = cluster[k + 1..].iter().collect();
                                    let value = if !attached.is_empty() {
                                        Some(Field::Static(attached))
                                    } else if takes == Takes::Required {
                                        i += 1;
                                        args.get(i).cloned()
                                    } else {
                                        None
                                    };
                                    parsed.options.push(Found {
                                        name: c.to_string(),
                                        value,
                                        plus,
                                    });
                                    k = cluster.len();
                                }
                            }
                        }
                        i += 1;
                        continue;
                    }
                }
            }
            // An operand.
            if !self.permute {
                parsed.rest = i;
                parsed.operands.extend(i..args.len());
                return parsed;
            }
            parsed.operands.push(i);
            i += 1;
        }
        parsed
    }
}

enum LongTakes {
    Own(Takes),
    Short(char),
}

fn long_entry(entry: &str) -> (String, String, LongTakes) {
    if let Some((name, short)) = entry.split_once('=')
        && let Some(c) = short.chars().next()
    {
        return (name.to_string(), c.to_string(), LongTakes::Short(c));
    }
    let name = entry.trim_end_matches(':');
    let takes = match entry.len() - name.len() {
        0 => Takes::No,
        1 => Takes::Required,
        _ => Takes::Optional,
    };
    (name.to_string(), name.to_string(), LongTakes::Own(takes))
}

/// Whether `arg` names long option `long`: exactly, as an abbreviation of at least `min`
/// characters, or with `=value`. For programs whose other options are not known.
pub fn long_matches(arg: &str, long: &str, min: usize) -> bool {
    let Some(given) = arg.strip_prefix("--") else {
        return false;
    };
    let name = given.split('=').next().unwrap_or_default();
    name.len() >= min.min(long.len()) && long.starts_with(name)
}

/// `rm`'s options: the host rules match its `-r`/`--recursive` by meaning.
pub const RM: Spec = Spec {
    short: "fiIrRdv",
    long: &[
        "force=f",
        "interactive::",
        "one-file-system",
        "no-preserve-root",
        "preserve-root::",
        "recursive=r",
        "dir=d",
        "verbose=v",
        "help",
        "version",
    ],
    permute: true,
};

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(words: &[&str]) -> Vec<Field> {
        words.iter().map(|w| Field::Static(w.to_string())).collect()
    }

    #[test]
    fn clusters_abbreviations_and_permutation() {
        let args = fields(&["/", "-fv", "--recur", "--", "-x"]);
        let parsed = RM.parse(&args);
        assert!(parsed.has("r") && parsed.has("f") && parsed.has("v"));
        assert_eq!(parsed.operands, [0, 4]);
        let parsed = RM.parse(&fields(&["--re", "/"]));
        assert!(parsed.has("r"));
        // `--p` could be `--preserve-root` only; `--no` is `--no-preserve-root`.
        assert!(RM.parse(&fields(&["--no"])).has("no-preserve-root"));
    }

    #[test]
    fn values_attached_separate_and_with_equals() {
        let spec = Spec {
            short: "u:n:x",
            long: &["user=u", "chdir:", "color::"],
            permute: false,
        };
        let parsed = spec.parse(&fields(&[
            "-xuroot", "--chdir", "/", "--color", "cmd", "-n",
        ]));
        assert_eq!(parsed.value("u"), Some(&Field::Static("root".into())));
        assert_eq!(parsed.value("chdir"), Some(&Field::Static("/".into())));
        assert_eq!(parsed.rest, 4);
        let parsed = spec.parse(&fields(&["--user=bob", "-n", "5", "cmd"]));
        assert_eq!(parsed.value("u"), Some(&Field::Static("bob".into())));
        assert_eq!(parsed.rest, 3);
    }

    #[test]
    fn long_options_of_unknown_programs() {
        assert!(long_matches("--flush", "flush", 3));
        assert!(long_matches("--fl", "flush", 2));
        assert!(long_matches("--flush=x", "flush", 3));
        assert!(!long_matches("-F", "flush", 1));
        assert!(!long_matches("--flux", "flush", 1));
    }
}
