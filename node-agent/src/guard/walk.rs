//! Walks a parsed shell program down to every simple command it can run, unwrapping the commands that run other commands.
//!
//! Every simple command anywhere in the program is found: in lists, pipelines, subshells, brace
//! groups, `if`/`while`/`for`/`case` bodies, function bodies, command and process substitutions
//! (also inside double quotes, parameter defaults and arithmetic). Its words are evaluated as far
//! as they are known before it runs: quotes removed (`r''m`, `"rm"`, `\rm`, `$'\x72m'`), brace
//! expansion applied (`{rm,-rf,/}`), unquoted `$IFS` taken as a word break. A word holding an
//! expansion only known at run time (`$x`, `$(cmd)`, `~`) is [`Field::Dynamic`].
//!
//! Carriers — commands that run a command given to them — are unwrapped and their command is
//! checked too: wrappers (`env`, `sudo`, `doas`, `nice`, `nohup`, `timeout`, `exec`, `command`,
//! `busybox`, `xargs`, `time`, `stdbuf`, `ionice`, `setsid`, `taskset`, `chroot`, `flock`,
//! `nsenter`, `systemd-run`, `unbuffer`, `runuser -u`), command strings (`sh -c`, `bash -c` and
//! other shells, `eval`, `su -c`, `env -S`, `flock -c`, `watch`, `trap`), `find -exec`, and a
//! shell reading its script from standard input (a here-document, a here-string, or `echo`,
//! `printf` or `cat <<EOF` piped into it).

use brush_parser::ast;
use brush_parser::word::{self, BraceExpressionMember, BraceExpressionOrText, WordPiece};
use brush_parser::{Parser, ParserOptions};

/// Deepest nesting of carriers and substitutions followed; deeper programs are refused.
pub const MAX_DEPTH: usize = 16;
/// Most words one brace expansion may produce before the word counts as unknown.
const MAX_BRACE_WORDS: usize = 1024;

/// One word of a command as far as it is known before the command runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Field {
    /// The word's value, quotes removed.
    Static(String),
    /// A word with a part only known at run time; the source text.
    Dynamic(String),
}

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
            Field::Static(s) | Field::Dynamic(s) => s,
        }
    }
}

/// A simple command the program can run (or a command a carrier runs).
#[derive(Debug, Clone)]
pub struct Invocation {
    /// The command name and its arguments.
    pub fields: Vec<Field>,
    /// Targets of its output redirections (`>`, `>>`, `>|`, `<>`, `&>`).
    pub writes_to: Vec<Field>,
    /// The simple command as written, for messages.
    pub text: String,
    /// The carriers it was found inside, outermost first (`sudo`, `sh -c`, `$(…)`).
    pub via: Vec<String>,
}

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
}

/// A function that calls itself in a pipeline or in the background.
#[derive(Debug, Clone)]
pub struct ForkBomb {
    pub function: String,
    pub via: Vec<String>,
}

/// What a program can run.
#[derive(Debug, Default)]
pub struct Walked {
    pub invocations: Vec<Invocation>,
    pub fork_bombs: Vec<ForkBomb>,
}

/// Why a program could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    #[error("{}does not parse: {message}", place(via))]
    Parse { via: Vec<String>, message: String },
    #[error(
        "{}nests carriers and substitutions more than {MAX_DEPTH} deep",
        place(via)
    )]
    TooDeep { via: Vec<String> },
}

fn place(via: &[String]) -> String {
    if via.is_empty() {
        "the command ".to_string()
    } else {
        format!("the command inside {} ", via.join(" → "))
    }
}

/// Parses `source` as a bash program and finds everything it can run.
pub fn walk(source: &str) -> Result<Walked, WalkError> {
    let mut walker = Walker {
        out: Walked::default(),
        options: ParserOptions::default(),
    };
    walker.program(source, &Ctx::default())?;
    Ok(walker.out)
}

/// `/bin/rm` → `rm`.
pub fn basename(path: &str) -> &str {
    path.rsplit('/').find(|s| !s.is_empty()).unwrap_or(path)
}

/// Where in the program the walk is.
#[derive(Debug, Clone, Default)]
struct Ctx {
    depth: usize,
    /// Carriers entered, outermost first.
    via: Vec<String>,
    /// Functions whose bodies enclose this point.
    functions: Vec<String>,
    /// In a pipeline of several commands or a background job: a self-call here forks.
    concurrent: bool,
}

impl Ctx {
    fn nested(&self, label: impl Into<String>) -> Result<Ctx, WalkError> {
        let mut via = self.via.clone();
        via.push(label.into());
        if self.depth + 1 > MAX_DEPTH {
            return Err(WalkError::TooDeep { via });
        }
        Ok(Ctx {
            depth: self.depth + 1,
            via,
            functions: self.functions.clone(),
            concurrent: self.concurrent,
        })
    }

    fn concurrent(&self, concurrent: bool) -> Ctx {
        Ctx {
            concurrent: self.concurrent || concurrent,
            ..self.clone()
        }
    }
}

struct Walker {
    out: Walked,
    options: ParserOptions,
}

/// What a carrier runs.
enum Carried {
    /// A command given as words.
    Command(Vec<Field>, String),
    /// A command given as shell source.
    Script(String, String),
}

// === impl Walker ===

impl Walker {
    fn program(&mut self, source: &str, ctx: &Ctx) -> Result<(), WalkError> {
        let mut parser = Parser::new(std::io::Cursor::new(source.as_bytes()), &self.options);
        let program = parser.parse_program().map_err(|e| WalkError::Parse {
            via: ctx.via.clone(),
            message: e.to_string(),
        })?;
        for list in &program.complete_commands {
            self.list(list, ctx)?;
        }
        Ok(())
    }

    fn list(&mut self, list: &ast::CompoundList, ctx: &Ctx) -> Result<(), WalkError> {
        for ast::CompoundListItem(and_or, separator) in &list.0 {
            let ctx = ctx.concurrent(matches!(separator, ast::SeparatorOperator::Async));
            self.pipeline(&and_or.first, &ctx)?;
            for next in &and_or.additional {
                let (ast::AndOr::And(p) | ast::AndOr::Or(p)) = next;
                self.pipeline(p, &ctx)?;
            }
        }
        Ok(())
    }

    fn pipeline(&mut self, pipeline: &ast::Pipeline, ctx: &Ctx) -> Result<(), WalkError> {
        let ctx = ctx.concurrent(pipeline.seq.len() > 1);
        let mut piped: Option<String> = None;
        for command in &pipeline.seq {
            piped = self.command(command, &ctx, piped.take())?;
        }
        Ok(())
    }

    /// Walks one command; returns what it writes to its standard output when that is known
    /// (for a shell it is piped into).
    fn command(
        &mut self,
        command: &ast::Command,
        ctx: &Ctx,
        piped: Option<String>,
    ) -> Result<Option<String>, WalkError> {
        match command {
            ast::Command::Simple(simple) => self.simple(simple, ctx, piped),
            ast::Command::Compound(compound, redirects) => {
                self.compound(compound, ctx)?;
                if let Some(redirects) = redirects {
                    self.bare_redirects(&redirects.0, &compound.to_string(), ctx)?;
                }
                Ok(None)
            }
            ast::Command::Function(function) => {
                let name = self.expand(&function.fname.value, ctx)?;
                let mut body_ctx = Ctx {
                    concurrent: false,
                    ..ctx.clone()
                };
                if let [Field::Static(name)] = name.as_slice() {
                    body_ctx.functions.push(name.clone());
                }
                let ast::FunctionBody(body, redirects) = &function.body;
                self.compound(body, &body_ctx)?;
                if let Some(redirects) = redirects {
                    self.bare_redirects(&redirects.0, &function.to_string(), ctx)?;
                }
                Ok(None)
            }
            ast::Command::ExtendedTest(test, redirects) => {
                self.test_expr(&test.expr, ctx)?;
                if let Some(redirects) = redirects {
                    self.bare_redirects(&redirects.0, "[[ … ]]", ctx)?;
                }
                Ok(None)
            }
        }
    }

    fn test_expr(&mut self, expr: &ast::ExtendedTestExpr, ctx: &Ctx) -> Result<(), WalkError> {
        use ast::ExtendedTestExpr as E;
        match expr {
            E::And(a, b) | E::Or(a, b) => {
                self.test_expr(a, ctx)?;
                self.test_expr(b, ctx)
            }
            E::Not(a) | E::Parenthesized(a) => self.test_expr(a, ctx),
            E::UnaryTest(_, w) => self.expand(&w.value, ctx).map(drop),
            E::BinaryTest(_, a, b) => {
                self.expand(&a.value, ctx)?;
                self.expand(&b.value, ctx).map(drop)
            }
        }
    }

    fn compound(&mut self, compound: &ast::CompoundCommand, ctx: &Ctx) -> Result<(), WalkError> {
        use ast::CompoundCommand as C;
        match compound {
            C::Arithmetic(a) => self.arithmetic(&a.expr.value, ctx),
            C::ArithmeticForClause(f) => {
                for expr in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    self.arithmetic(&expr.value, ctx)?;
                }
                self.list(&f.body.list, ctx)
            }
            C::BraceGroup(b) => self.list(&b.list, ctx),
            C::Subshell(s) => self.list(&s.list, ctx),
            C::ForClause(f) => {
                for value in f.values.iter().flatten() {
                    self.expand(&value.value, ctx)?;
                }
                self.list(&f.body.list, ctx)
            }
            C::CaseClause(c) => {
                self.expand(&c.value.value, ctx)?;
                for item in &c.cases {
                    for pattern in &item.patterns {
                        self.expand(&pattern.value, ctx)?;
                    }
                    if let Some(list) = &item.cmd {
                        self.list(list, ctx)?;
                    }
                }
                Ok(())
            }
            C::IfClause(i) => {
                self.list(&i.condition, ctx)?;
                self.list(&i.then, ctx)?;
                for clause in i.elses.iter().flatten() {
                    if let Some(condition) = &clause.condition {
                        self.list(condition, ctx)?;
                    }
                    self.list(&clause.body, ctx)?;
                }
                Ok(())
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                self.list(&w.0, ctx)?;
                self.list(&w.1.list, ctx)
            }
            C::Coprocess(c) => {
                self.command(&c.body, &ctx.concurrent(true), None)?;
                Ok(())
            }
        }
    }

    /// Redirections of a compound command or function: substitutions in them are walked, and
    /// output redirections are checked as an invocation without a command name.
    fn bare_redirects(
        &mut self,
        redirects: &[ast::IoRedirect],
        text: &str,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let mut writes_to = Vec::new();
        for redirect in redirects {
            self.redirect(redirect, &mut writes_to, ctx)?;
        }
        if !writes_to.is_empty() {
            self.out.invocations.push(Invocation {
                fields: Vec::new(),
                writes_to,
                text: text.to_string(),
                via: ctx.via.clone(),
            });
        }
        Ok(())
    }

    /// Walks a redirection's words; records output targets; returns a here-document's or
    /// here-string's text (what the command reads on its standard input).
    fn redirect(
        &mut self,
        redirect: &ast::IoRedirect,
        writes_to: &mut Vec<Field>,
        ctx: &Ctx,
    ) -> Result<Option<String>, WalkError> {
        use ast::{IoFileRedirectKind as K, IoFileRedirectTarget as T, IoRedirect as R};
        match redirect {
            R::File(_, kind, target) => {
                match target {
                    T::Filename(w) | T::Duplicate(w) => {
                        let fields = self.expand(&w.value, ctx)?;
                        if matches!(kind, K::Write | K::Append | K::Clobber | K::ReadAndWrite) {
                            writes_to.extend(fields);
                        }
                    }
                    T::ProcessSubstitution(_, sub) => {
                        self.list(&sub.list, &ctx.nested("<(…)")?)?;
                    }
                    T::Fd(_) => {}
                }
                Ok(None)
            }
            R::HereDocument(_, doc) => {
                if doc.requires_expansion {
                    let pieces = word::parse_heredoc(&doc.doc.value, &self.options)
                        .map_err(|e| self.word_error(e, ctx))?;
                    self.pieces_value(&pieces, true, ctx)?;
                }
                // The text as written: expansions in it stay visible to the shell it feeds.
                Ok(Some(doc.doc.value.clone()))
            }
            R::HereString(_, w) => {
                let fields = self.expand(&w.value, ctx)?;
                let text: Vec<&str> = fields.iter().map(Field::shown).collect();
                Ok(Some(format!("{}\n", text.join(" "))))
            }
            R::OutputAndError(w, _) => {
                writes_to.extend(self.expand(&w.value, ctx)?);
                Ok(None)
            }
        }
    }

    fn simple(
        &mut self,
        simple: &ast::SimpleCommand,
        ctx: &Ctx,
        piped: Option<String>,
    ) -> Result<Option<String>, WalkError> {
        let mut fields = Vec::new();
        let mut writes_to = Vec::new();
        let mut stdin = piped;
        // In the order written: the prefix (assignments, redirections), the name, the suffix.
        for item in simple.prefix.iter().flat_map(|p| p.0.iter()) {
            self.item(item, true, &mut fields, &mut writes_to, &mut stdin, ctx)?;
        }
        if let Some(name) = &simple.word_or_name {
            fields.extend(self.expand(&name.value, ctx)?);
        }
        for item in simple.suffix.iter().flat_map(|s| s.0.iter()) {
            self.item(item, false, &mut fields, &mut writes_to, &mut stdin, ctx)?;
        }
        let invocation = Invocation {
            fields,
            writes_to,
            text: simple.to_string(),
            via: ctx.via.clone(),
        };
        if let Some(name) = invocation.fields.first().and_then(Field::known)
            && ctx.concurrent
            && ctx.functions.iter().any(|f| f == name)
        {
            self.out.fork_bombs.push(ForkBomb {
                function: name.to_string(),
                via: ctx.via.clone(),
            });
        }
        let output = printed(&invocation, stdin.as_deref());
        self.invocation(invocation, stdin, ctx)?;
        Ok(output)
    }

    /// One prefix or suffix item of a simple command.
    fn item(
        &mut self,
        item: &ast::CommandPrefixOrSuffixItem,
        in_prefix: bool,
        fields: &mut Vec<Field>,
        writes_to: &mut Vec<Field>,
        stdin: &mut Option<String>,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        use ast::CommandPrefixOrSuffixItem as Item;
        match item {
            Item::Word(w) => fields.extend(self.expand(&w.value, ctx)?),
            // `x=$(…) cmd` before the name; `declare x=…` after it (then it is an argument).
            Item::AssignmentWord(_, w) => {
                let value = self.expand(&w.value, ctx)?;
                if !in_prefix {
                    fields.extend(value);
                }
            }
            Item::IoRedirect(r) => {
                if let Some(text) = self.redirect(r, writes_to, ctx)? {
                    *stdin = Some(text);
                }
            }
            Item::ProcessSubstitution(_, sub) => {
                self.list(&sub.list, &ctx.nested("<(…)")?)?;
                fields.push(Field::Dynamic("<(…)".into()));
            }
        }
        Ok(())
    }

    /// Records an invocation and follows what it carries.
    fn invocation(
        &mut self,
        invocation: Invocation,
        stdin: Option<String>,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let carried = carried(&invocation.fields, stdin.as_deref());
        self.out.invocations.push(invocation.clone());
        for carried in carried {
            match carried {
                Carried::Command(fields, label) => {
                    let ctx = ctx.nested(label)?;
                    let inner = Invocation {
                        text: fields
                            .iter()
                            .map(Field::shown)
                            .collect::<Vec<_>>()
                            .join(" "),
                        fields,
                        writes_to: Vec::new(),
                        via: ctx.via.clone(),
                    };
                    self.invocation(inner, stdin.clone(), &ctx)?;
                }
                Carried::Script(source, label) => {
                    let ctx = ctx.nested(label)?;
                    self.program(&source, &ctx)?;
                }
            }
        }
        Ok(())
    }

    fn arithmetic(&mut self, expr: &str, ctx: &Ctx) -> Result<(), WalkError> {
        // Arithmetic can hide a substitution, also in an array subscript (`a[$(cmd)]`); a
        // text that holds one must parse as a word so it is found.
        match word::parse(expr, &self.options) {
            Ok(pieces) => self.pieces_value(&pieces, true, ctx).map(drop),
            Err(e) if expr.contains("$(") || expr.contains('`') => Err(self.word_error(e, ctx)),
            Err(_) => Ok(()),
        }
    }

    fn word_error(&self, e: brush_parser::WordParseError, ctx: &Ctx) -> WalkError {
        WalkError::Parse {
            via: ctx.via.clone(),
            message: e.to_string(),
        }
    }

    /// The fields a word becomes: brace expansion, then quote removal, with unknown parts
    /// marked; substitutions inside are walked.
    fn expand(&mut self, text: &str, ctx: &Ctx) -> Result<Vec<Field>, WalkError> {
        let texts = match word::parse_brace_expansions(text, &self.options) {
            Ok(Some(parts)) => {
                let mut words = vec![String::new()];
                if expand_braces(&parts, &mut words) {
                    words
                } else {
                    vec![text.to_string()]
                }
            }
            _ => vec![text.to_string()],
        };
        let mut fields = Vec::new();
        for text in texts {
            let pieces = word::parse(&text, &self.options).map_err(|e| self.word_error(e, ctx))?;
            let parts = self.pieces_value(&pieces, false, ctx)?;
            fields.extend(split_fields(parts, &text));
        }
        Ok(fields)
    }

    /// Evaluates word pieces as far as they are known; walks substitutions inside.
    fn pieces_value(
        &mut self,
        pieces: &[word::WordPieceWithSource],
        quoted: bool,
        ctx: &Ctx,
    ) -> Result<Vec<Part>, WalkError> {
        let mut parts = Vec::new();
        for piece in pieces {
            match &piece.piece {
                WordPiece::Text(s) | WordPiece::SingleQuotedText(s) => {
                    parts.push(Part::Known(s.clone()))
                }
                WordPiece::AnsiCQuotedText(s) => parts.push(Part::Known(ansi_c(s))),
                WordPiece::EscapeSequence(s) => {
                    let mut chars = s.chars();
                    match (chars.next(), chars.as_str()) {
                        // A backslash-newline joins lines and leaves nothing.
                        (Some('\\'), "\n") => {}
                        (Some('\\'), rest) if !rest.is_empty() => {
                            parts.push(Part::Known(rest.to_string()))
                        }
                        _ => parts.push(Part::Known(s.clone())),
                    }
                }
                WordPiece::DoubleQuotedSequence(inner)
                | WordPiece::GettextDoubleQuotedSequence(inner) => {
                    let inner = self.pieces_value(inner, true, ctx)?;
                    // Inside quotes nothing splits.
                    parts.extend(inner.into_iter().map(|p| match p {
                        Part::Break => Part::Unknown("$IFS".into()),
                        other => other,
                    }));
                }
                WordPiece::TildeExpansion(_) => parts.push(Part::Unknown("~".into())),
                WordPiece::ParameterExpansion(p) => {
                    for nested in parameter_words(p) {
                        if let Ok(pieces) = word::parse(&nested, &self.options) {
                            self.pieces_value(&pieces, true, ctx)?;
                        } else if nested.contains("$(") || nested.contains('`') {
                            return Err(WalkError::Parse {
                                via: ctx.via.clone(),
                                message: format!(
                                    "cannot parse `{nested}` in a parameter expansion"
                                ),
                            });
                        }
                    }
                    if !quoted && is_ifs(p) {
                        parts.push(Part::Break);
                    } else {
                        parts.push(Part::Unknown(format!("${{{}}}", parameter_name(p))));
                    }
                }
                WordPiece::CommandSubstitution(s) => {
                    self.program(s, &ctx.nested("$(…)")?)?;
                    parts.push(Part::Unknown(format!("$({s})")));
                }
                WordPiece::BackquotedCommandSubstitution(s) => {
                    self.program(&unescape_backquoted(s), &ctx.nested("`…`")?)?;
                    parts.push(Part::Unknown(format!("`{s}`")));
                }
                WordPiece::ArithmeticExpression(e) => {
                    self.arithmetic(&e.value, ctx)?;
                    parts.push(Part::Unknown(format!("$(({}))", e.value)));
                }
            }
        }
        Ok(parts)
    }
}

/// A part of a word's value.
#[derive(Debug, Clone)]
enum Part {
    Known(String),
    Unknown(String),
    /// An unquoted `$IFS`: field splitting breaks the word here.
    Break,
}

/// Joins parts into fields, breaking at unquoted `$IFS`.
fn split_fields(parts: Vec<Part>, text: &str) -> Vec<Field> {
    let mut fields = Vec::new();
    let mut value = String::new();
    let mut dynamic = false;
    let mut started = false;
    let mut flush = |value: &mut String, dynamic: &mut bool, started: &mut bool| {
        if *started {
            fields.push(if *dynamic {
                Field::Dynamic(std::mem::take(value))
            } else {
                Field::Static(std::mem::take(value))
            });
        }
        *dynamic = false;
        *started = false;
    };
    let has_break = parts.iter().any(|p| matches!(p, Part::Break));
    for part in parts {
        match part {
            Part::Known(s) => {
                value.push_str(&s);
                started = true;
            }
            Part::Unknown(s) => {
                value.push_str(&s);
                dynamic = true;
                started = true;
            }
            Part::Break => flush(&mut value, &mut dynamic, &mut started),
        }
    }
    flush(&mut value, &mut dynamic, &mut started);
    if fields.is_empty() && !has_break {
        // An empty word (`''`) is still a word.
        fields.push(Field::Static(String::new()));
    }
    let _ = text;
    fields
}

/// Expands brace expressions into `words` (the prefixes so far). `false` when the expansion
/// would produce more than [`MAX_BRACE_WORDS`] words.
fn expand_braces(parts: &[BraceExpressionOrText], words: &mut Vec<String>) -> bool {
    for part in parts {
        match part {
            BraceExpressionOrText::Text(t) => {
                for w in words.iter_mut() {
                    w.push_str(t);
                }
            }
            BraceExpressionOrText::Expr(members) => {
                let mut alternatives = Vec::new();
                for member in members {
                    match member {
                        BraceExpressionMember::Child(children) => {
                            let mut sub = vec![String::new()];
                            if !expand_braces(children, &mut sub) {
                                return false;
                            }
                            alternatives.extend(sub);
                        }
                        BraceExpressionMember::NumberSequence {
                            start,
                            end,
                            increment,
                        } => {
                            let step = increment.unsigned_abs().max(1) as usize;
                            let (lo, hi) = (*start.min(end), *start.max(end));
                            if (hi - lo) as u128 / step as u128 > MAX_BRACE_WORDS as u128 {
                                return false;
                            }
                            let mut n: Vec<i64> = (lo..=hi).step_by(step).collect();
                            if start > end {
                                n.reverse();
                            }
                            alternatives.extend(n.into_iter().map(|n| n.to_string()));
                        }
                        BraceExpressionMember::CharSequence {
                            start,
                            end,
                            increment,
                        } => {
                            let step = increment.unsigned_abs().max(1) as usize;
                            let (lo, hi) = (*start.min(end), *start.max(end));
                            alternatives.extend((lo..=hi).step_by(step).map(String::from));
                        }
                    }
                }
                if words.len().saturating_mul(alternatives.len()) > MAX_BRACE_WORDS {
                    return false;
                }
                *words = words
                    .iter()
                    .flat_map(|w| alternatives.iter().map(move |a| format!("{w}{a}")))
                    .collect();
            }
        }
    }
    true
}

/// The strings nested in a parameter expansion (defaults, patterns, subscripts), which may hold
/// substitutions of their own.
fn parameter_words(p: &word::ParameterExpr) -> Vec<String> {
    use word::ParameterExpr as P;
    let mut words = Vec::new();
    let parameter = match p {
        P::Parameter { parameter, .. }
        | P::ParameterLength { parameter, .. }
        | P::Transform { parameter, .. } => parameter,
        P::UseDefaultValues {
            parameter,
            default_value: v,
            ..
        }
        | P::AssignDefaultValues {
            parameter,
            default_value: v,
            ..
        }
        | P::IndicateErrorIfNullOrUnset {
            parameter,
            error_message: v,
            ..
        }
        | P::UseAlternativeValue {
            parameter,
            alternative_value: v,
            ..
        }
        | P::RemoveSmallestSuffixPattern {
            parameter,
            pattern: v,
            ..
        }
        | P::RemoveLargestSuffixPattern {
            parameter,
            pattern: v,
            ..
        }
        | P::RemoveSmallestPrefixPattern {
            parameter,
            pattern: v,
            ..
        }
        | P::RemoveLargestPrefixPattern {
            parameter,
            pattern: v,
            ..
        }
        | P::UppercaseFirstChar {
            parameter,
            pattern: v,
            ..
        }
        | P::UppercasePattern {
            parameter,
            pattern: v,
            ..
        }
        | P::LowercaseFirstChar {
            parameter,
            pattern: v,
            ..
        }
        | P::LowercasePattern {
            parameter,
            pattern: v,
            ..
        } => {
            words.extend(v.clone());
            parameter
        }
        P::Substring {
            parameter,
            offset,
            length,
            ..
        } => {
            words.push(offset.value.clone());
            words.extend(length.as_ref().map(|l| l.value.clone()));
            parameter
        }
        P::ReplaceSubstring {
            parameter,
            pattern,
            replacement,
            ..
        } => {
            words.push(pattern.clone());
            words.extend(replacement.clone());
            parameter
        }
        P::VariableNames { .. } | P::MemberKeys { .. } => return words,
    };
    if let word::Parameter::NamedWithIndex { index, .. } = parameter {
        words.push(index.clone());
    }
    words
}

fn parameter_name(p: &word::ParameterExpr) -> String {
    use word::ParameterExpr as P;
    match p {
        P::Parameter { parameter, .. } => parameter.to_string().trim_start_matches('$').into(),
        _ => "…".into(),
    }
}

fn is_ifs(p: &word::ParameterExpr) -> bool {
    matches!(
        p,
        word::ParameterExpr::Parameter {
            parameter: word::Parameter::Named(name),
            indirect: false,
        } if name == "IFS"
    )
}

/// Inside backquotes a backslash escapes only `$`, `` ` `` and `\`.
fn unescape_backquoted(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\'
            && let Some(&next) = chars.peek()
            && matches!(next, '$' | '`' | '\\')
        {
            out.push(next);
            chars.next();
            continue;
        }
        out.push(c);
    }
    out
}

/// The value of `$'…'` text: C escapes.
fn ansi_c(s: &str) -> String {
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
    out
}

/// What a command prints, when it is known: `echo` and `printf` of known words, `cat` of its
/// here-document. A shell it is piped into runs that text.
fn printed(invocation: &Invocation, stdin: Option<&str>) -> Option<String> {
    let args = invocation.args();
    match invocation.name()? {
        "echo" => {
            let words: Vec<&str> = args
                .iter()
                .skip_while(|a| matches!(a.known(), Some("-n" | "-e" | "-E" | "-ne" | "-en")))
                .map(Field::shown)
                .collect();
            Some(format!("{}\n", words.join(" ")))
        }
        "printf" => {
            let words: Vec<&str> = args.iter().map(Field::shown).collect();
            Some(words.join(" ").replace("\\n", "\n"))
        }
        "cat" if args.is_empty() => stdin.map(str::to_string),
        _ => None,
    }
}

/// Option syntax of a carrier: short options and long options that take a value.
struct Opts {
    short_with_value: &'static str,
    long_with_value: &'static [&'static str],
}

/// Splits `args` at the first operand: the index of the first argument that is not an option
/// (or a value of one), and the options seen (as written).
fn first_operand<'a>(args: &'a [Field], opts: &Opts) -> (usize, Vec<&'a str>) {
    let mut seen = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let Some(arg) = args[i].known() else {
            return (i, seen);
        };
        if arg == "--" {
            return (i + 1, seen);
        }
        if let Some(long) = arg.strip_prefix("--") {
            seen.push(arg);
            let name = long.split('=').next().unwrap_or_default();
            i += if !long.contains('=') && opts.long_with_value.contains(&name) {
                2
            } else {
                1
            };
            continue;
        }
        if arg.len() > 1 && arg.starts_with('-') {
            seen.push(arg);
            let cluster = &arg[1..];
            let mut consumed = 1;
            for (at, c) in cluster.char_indices() {
                if opts.short_with_value.contains(c) {
                    if at + c.len_utf8() == cluster.len() {
                        consumed = 2;
                    }
                    break;
                }
            }
            i += consumed;
            continue;
        }
        return (i, seen);
    }
    (i, seen)
}

fn has_short(seen: &[&str], flag: char) -> bool {
    seen.iter().any(|o| {
        !o.starts_with("--") && o[1..].chars().take_while(|c| *c != '=').any(|c| c == flag)
    })
}

fn joined(fields: &[Field]) -> String {
    fields
        .iter()
        .map(Field::shown)
        .collect::<Vec<_>>()
        .join(" ")
}

const SHELLS: &[&str] = &[
    "sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "rbash", "yash",
];

/// What a command carries: the command(s) it runs, given as words or as shell source.
fn carried(fields: &[Field], stdin: Option<&str>) -> Vec<Carried> {
    let Some(name) = fields.first().and_then(Field::known).map(basename) else {
        return Vec::new();
    };
    let args = &fields[1..];
    let command = |from: usize, label: &str| -> Vec<Carried> {
        match args.get(from..) {
            Some(rest) if !rest.is_empty() => vec![Carried::Command(rest.to_vec(), label.into())],
            _ => Vec::new(),
        }
    };
    let opts = |short: &'static str, long: &'static [&'static str]| Opts {
        short_with_value: short,
        long_with_value: long,
    };
    match name {
        "env" => {
            if let Some(i) = args.iter().position(|a| {
                a.known()
                    .is_some_and(|s| s == "-S" || s.starts_with("--split-string"))
            }) {
                let string = match args[i].known().and_then(|s| s.split_once('=')) {
                    Some((_, v)) => Some(v.to_string()),
                    None => args.get(i + 1).map(|f| f.shown().to_string()),
                };
                if let Some(string) = string {
                    let skip = if args[i].known().is_some_and(|s| s.contains('=')) {
                        1
                    } else {
                        2
                    };
                    let rest = joined(args.get(i + skip..).unwrap_or_default());
                    return vec![Carried::Script(format!("{string} {rest}"), "env -S".into())];
                }
            }
            let (mut i, _) = first_operand(args, &opts("uCP", &["unset", "chdir"]));
            while args
                .get(i)
                .and_then(Field::known)
                .is_some_and(|a| a.contains('=') && !a.starts_with('='))
            {
                i += 1;
            }
            command(i, "env")
        }
        "sudo" => {
            let (i, _) = first_operand(
                args,
                &opts(
                    "ughpCDrtTU",
                    &[
                        "user",
                        "group",
                        "host",
                        "prompt",
                        "close-from",
                        "chdir",
                        "role",
                        "type",
                        "command-timeout",
                        "other-user",
                    ],
                ),
            );
            command(i, "sudo")
        }
        "doas" => {
            let (i, _) = first_operand(args, &opts("uC", &[]));
            command(i, "doas")
        }
        "nice" => {
            let (i, _) = first_operand(args, &opts("n", &["adjustment"]));
            command(i, "nice")
        }
        "nohup" | "builtin" | "unbuffer" => {
            let (i, _) = first_operand(args, &opts("", &[]));
            command(i, name)
        }
        "exec" => {
            let (i, _) = first_operand(args, &opts("a", &[]));
            command(i, "exec")
        }
        "command" => {
            let (i, seen) = first_operand(args, &opts("", &[]));
            if has_short(&seen, 'v') || has_short(&seen, 'V') {
                return Vec::new();
            }
            command(i, "command")
        }
        "busybox" => command(0, "busybox"),
        "time" => {
            let (i, _) = first_operand(args, &opts("fo", &["format", "output"]));
            command(i, "time")
        }
        "stdbuf" => {
            let (i, _) = first_operand(args, &opts("ioe", &["input", "output", "error"]));
            command(i, "stdbuf")
        }
        "ionice" => {
            let (i, seen) = first_operand(args, &opts("cnp", &["class", "classdata", "pid"]));
            if has_short(&seen, 'p') || has_short(&seen, 'P') || has_short(&seen, 'u') {
                return Vec::new();
            }
            command(i, "ionice")
        }
        "setsid" => {
            let (i, _) = first_operand(args, &opts("", &[]));
            command(i, "setsid")
        }
        "timeout" => {
            let (i, _) = first_operand(args, &opts("sk", &["signal", "kill-after"]));
            // The first operand is the duration.
            command(i + 1, "timeout")
        }
        "taskset" => {
            let (i, seen) = first_operand(args, &opts("", &[]));
            if has_short(&seen, 'p') {
                return Vec::new();
            }
            // The first operand is the CPU mask or list.
            command(i + 1, "taskset")
        }
        "chroot" => {
            let (i, _) = first_operand(args, &opts("", &["userspec", "groups"]));
            command(i + 1, "chroot")
        }
        "flock" => {
            if let Some(c) = args
                .iter()
                .position(|a| matches!(a.known(), Some("-c" | "--command")))
                && let Some(string) = args.get(c + 1)
            {
                return vec![Carried::Script(
                    string.shown().to_string(),
                    "flock -c".into(),
                )];
            }
            let (i, _) = first_operand(args, &opts("wE", &["timeout", "conflict-exit-code"]));
            // The first operand is the lock file.
            command(i + 1, "flock")
        }
        "nsenter" => {
            let (i, _) = first_operand(args, &opts("tSGw", &["target", "setuid", "setgid", "wd"]));
            command(i, "nsenter")
        }
        "systemd-run" => {
            let (i, _) = first_operand(
                args,
                &opts(
                    "upEMH",
                    &[
                        "unit",
                        "property",
                        "setenv",
                        "machine",
                        "host",
                        "uid",
                        "gid",
                        "nice",
                        "working-directory",
                        "slice",
                        "description",
                        "on-calendar",
                    ],
                ),
            );
            command(i, "systemd-run")
        }
        "runuser" | "su" => {
            if let Some(string) = command_string(args) {
                return vec![Carried::Script(string, format!("{name} -c"))];
            }
            if name == "runuser" {
                let (i, _) = first_operand(args, &opts("ugGs", &["user", "group", "shell"]));
                return command(i, "runuser");
            }
            Vec::new()
        }
        "xargs" => {
            let (i, _) = first_operand(
                args,
                &opts(
                    "adEILnPs",
                    &[
                        "arg-file",
                        "delimiter",
                        "eof",
                        "replace",
                        "max-lines",
                        "max-args",
                        "max-procs",
                        "max-chars",
                        "process-slot-var",
                    ],
                ),
            );
            let mut rest = args.get(i..).unwrap_or_default().to_vec();
            if rest.is_empty() {
                return Vec::new();
            }
            rest.push(Field::Dynamic("(arguments read from stdin)".into()));
            vec![Carried::Command(rest, "xargs".into())]
        }
        "watch" => {
            let (i, seen) = first_operand(args, &opts("nq", &["interval", "equexit"]));
            if has_short(&seen, 'x') || seen.contains(&"--exec") {
                return command(i, "watch -x");
            }
            match args.get(i..) {
                Some(rest) if !rest.is_empty() => {
                    vec![Carried::Script(joined(rest), "watch".into())]
                }
                _ => Vec::new(),
            }
        }
        "eval" => {
            if args.is_empty() {
                Vec::new()
            } else {
                vec![Carried::Script(joined(args), "eval".into())]
            }
        }
        "trap" => match args.first().and_then(Field::known) {
            Some("-p" | "-l" | "-" | "--") | None => Vec::new(),
            Some(action) => vec![Carried::Script(action.to_string(), "trap".into())],
        },
        "find" => find_exec(args),
        shell if SHELLS.contains(&shell) => shell_carried(shell, args, stdin),
        _ => Vec::new(),
    }
}

/// `su`/`runuser`: the string of `-c STR`, `--command STR`, `--command=STR`.
fn command_string(args: &[Field]) -> Option<String> {
    for (i, arg) in args.iter().enumerate() {
        match arg.known() {
            Some("-c" | "--command") => return args.get(i + 1).map(|f| f.shown().to_string()),
            Some(a) if a.starts_with("--command=") => {
                return Some(a["--command=".len()..].to_string());
            }
            _ => {}
        }
    }
    None
}

/// `sh -c STR`, or a shell reading its script from standard input.
fn shell_carried(shell: &str, args: &[Field], stdin: Option<&str>) -> Vec<Carried> {
    let (i, seen) = first_operand(
        args,
        &Opts {
            short_with_value: "oO",
            long_with_value: &["rcfile", "init-file"],
        },
    );
    if has_short(&seen, 'c') {
        return match args.get(i) {
            Some(string) => vec![Carried::Script(
                string.shown().to_string(),
                format!("{shell} -c"),
            )],
            None => Vec::new(),
        };
    }
    if i < args.len() && !has_short(&seen, 's') {
        // A script file: its contents are not known here.
        return Vec::new();
    }
    match stdin {
        Some(text) => vec![Carried::Script(
            text.to_string(),
            format!("{shell} < stdin"),
        )],
        None => Vec::new(),
    }
}

/// The commands of `find … -exec CMD … ;` (also `-execdir`, `-ok`, `-okdir`, ended by `+`).
fn find_exec(args: &[Field]) -> Vec<Carried> {
    let mut carried = Vec::new();
    let mut i = 0;
    while i < args.len() {
        if matches!(
            args[i].known(),
            Some("-exec" | "-execdir" | "-ok" | "-okdir")
        ) {
            let start = i + 1;
            let mut end = start;
            while end < args.len() && !matches!(args[end].known(), Some(";" | "+")) {
                end += 1;
            }
            let fields: Vec<Field> = args[start..end]
                .iter()
                .map(|f| match f.known() {
                    Some("{}") => Field::Dynamic("{}".into()),
                    _ => f.clone(),
                })
                .collect();
            if !fields.is_empty() {
                carried.push(Carried::Command(fields, "find -exec".into()));
            }
            i = end;
        }
        i += 1;
    }
    carried
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(source: &str) -> Vec<String> {
        walk(source)
            .expect("parses")
            .invocations
            .iter()
            .map(|i| {
                i.fields
                    .iter()
                    .map(Field::shown)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .collect()
    }

    #[test]
    fn quotes_and_escapes_are_removed() {
        assert_eq!(names(r#"r''m -rf "/""#), ["rm -rf /"]);
        assert_eq!(names(r"\rm -rf /"), ["rm -rf /"]);
        assert_eq!(names(r"$'\x72\155' x"), ["rm x"]);
    }

    #[test]
    fn substitutions_and_carriers_are_followed() {
        let found = names("echo $(sudo env X=1 /bin/rm -rf /tmp/x) `ls`");
        assert!(
            found.contains(&"/bin/rm -rf /tmp/x".to_string()),
            "{found:?}"
        );
        assert!(found.contains(&"ls".to_string()), "{found:?}");
        let found = names("bash -c 'eval \"rm -rf /a\"'");
        assert!(found.contains(&"rm -rf /a".to_string()), "{found:?}");
        let found = names("sh <<EOF\nrm -rf /b\nEOF");
        assert!(found.contains(&"rm -rf /b".to_string()), "{found:?}");
        let found = names("echo 'rm -rf /c' | bash");
        assert!(found.contains(&"rm -rf /c".to_string()), "{found:?}");
        let found = names("find /x -name y -exec rm -rf {} +");
        assert!(found.contains(&"rm -rf {}".to_string()), "{found:?}");
    }

    #[test]
    fn braces_and_ifs_make_words() {
        assert!(names("{rm,-rf,/}").contains(&"rm -rf /".to_string()));
        let found = names("rm${IFS}-rf${IFS}/");
        assert_eq!(found, ["rm -rf /"]);
    }

    #[test]
    fn run_time_words_are_dynamic() {
        let walked = walk("$CMD -rf ~ \"$(date)\"").expect("parses");
        let fields = &walked.invocations.last().expect("one").fields;
        assert!(matches!(fields[0], Field::Dynamic(_)));
        assert_eq!(fields[1], Field::Static("-rf".into()));
        assert!(matches!(fields[2], Field::Dynamic(_)));
    }

    #[test]
    fn a_self_calling_function_in_a_pipeline_is_a_fork_bomb() {
        assert_eq!(walk(":(){ :|:& };:").expect("parses").fork_bombs.len(), 2);
        assert_eq!(
            walk("b() { b | b & }; b").expect("parses").fork_bombs.len(),
            2
        );
        assert!(
            walk("f() { echo hi; }; f | cat")
                .expect("parses")
                .fork_bombs
                .is_empty()
        );
    }

    #[test]
    fn deep_nesting_and_bad_syntax_are_errors() {
        let mut cmd = "true".to_string();
        for _ in 0..=MAX_DEPTH {
            cmd = format!("$({cmd})");
        }
        assert!(matches!(walk(&cmd), Err(WalkError::TooDeep { .. })));
        assert!(matches!(
            walk("if true; then"),
            Err(WalkError::Parse { .. })
        ));
        assert!(matches!(
            walk("sh -c 'f() {'"),
            Err(WalkError::Parse { .. })
        ));
    }
}
