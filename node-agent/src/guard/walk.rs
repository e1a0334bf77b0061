//! Walks a parsed shell program down to every simple command it can run, following the values it knows and unwrapping the commands that run other commands.
//!
//! Every simple command anywhere in the program is found: in lists, pipelines, subshells, brace
//! groups, `if`/`while`/`for`/`case` bodies, functions (and again for each call with known
//! arguments), command and process substitutions (also inside double quotes, parameter
//! defaults, arithmetic, array subscripts and prompt strings). Its words are evaluated as far
//! as they can be before it runs: quotes removed (`r''m`, `"rm"`, `\rm`, `$'\x72m'`), braces
//! expanded (`{rm,-rf,/}`), variables the program (or the request's environment) set to known
//! values substituted — every value a variable may hold, across branches and loops — with
//! field splitting, defaults (`${x:-/}`), positional parameters (`sh -c '…' _ /`), `~user`,
//! and the output of `echo`/`printf`/`cat`/`base64 -d` where it is used as a word. What stays
//! unknown is a [`Field::Dynamic`], which remembers which parts are known.
//!
//! The walk also follows what the program does to its own shell: `cd` (the working directory
//! relative paths are judged against), `alias`, `hash -p` and `BASH_CMDS` (a name that runs
//! another program), `ln -s`/`mount --bind` (a path that leads elsewhere), `cp`/`ln` of a
//! program under another name, and variables the shell runs as code (`PS4`, `PROMPT_COMMAND`,
//! `BASH_ENV`).
//!
//! Carriers — commands that run a command or text given to them — are unwrapped by
//! [`carriers`](super::carriers) and what they run is walked too. Text handed to a shell that
//! cannot be read before it runs (a `sh -c "$x"`, `curl … | sh`, `source <(…)` of unknown output)
//! is recorded as [`Walked::unchecked`].

use std::collections::HashMap;

use brush_parser::ast;
use brush_parser::word::{self, BraceExpressionMember, BraceExpressionOrText, WordPiece};
use brush_parser::{Parser, ParserOptions};

use super::carriers;
use super::env;
use super::path;
use super::word::{
    Carried, Carrier, Dyn, Field, Format, Invocation, Piece, Redirect, Stdin, ansi_c, basename,
    escapes, shown_words,
};

/// Deepest nesting of carriers and substitutions followed; deeper programs are refused.
pub const MAX_DEPTH: usize = 16;
/// Most words one brace expansion may produce before the word counts as unknown.
const MAX_BRACE_WORDS: usize = 1024;
/// Most values a variable (or the working directory) is followed with; past it, unknown.
const MAX_VALUES: usize = 16;
/// Most combinations of values one simple command is checked with.
const MAX_COMBINATIONS: usize = 64;
/// Most simple commands (including unwrapped and re-walked ones) one check looks at.
const MAX_STEPS: usize = 20_000;

/// A function that calls itself in a pipeline or in the background, or an endless loop
/// that starts background jobs.
#[derive(Debug, Clone)]
pub struct ForkBomb {
    /// What was found, in words.
    pub why: String,
    /// The carriers it was inside.
    pub via: Vec<String>,
}

/// Text handed to an interpreter that cannot be read before it runs.
#[derive(Debug, Clone)]
pub struct Unchecked {
    /// What was found, in words.
    pub why: String,
    /// The carriers it was inside.
    pub via: Vec<String>,
}

/// What a program can run.
#[derive(Debug, Default)]
pub struct Walked {
    /// Every simple command found, in program order (outer carriers before what they carry).
    pub invocations: Vec<Invocation>,
    /// Fork bombs found.
    pub fork_bombs: Vec<ForkBomb>,
    /// Code that could not be read.
    pub unchecked: Vec<Unchecked>,
}

/// Why a program could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WalkError {
    /// The program, or text a carrier runs, is not valid shell.
    #[error("{}does not parse: {message}", place(via))]
    Parse {
        /// The carriers the text was inside.
        via: Vec<String>,
        /// The parser's message.
        message: String,
    },
    /// Carriers and substitutions nest deeper than [`MAX_DEPTH`].
    #[error(
        "{}nests carriers and substitutions more than {MAX_DEPTH} deep",
        place(via)
    )]
    TooDeep {
        /// The carriers entered.
        via: Vec<String>,
    },
    /// The program expands to more commands than the guard follows.
    #[error("the command expands to more than {MAX_STEPS} commands")]
    TooComplex,
}

fn place(via: &[String]) -> String {
    if via.is_empty() {
        "the command ".to_string()
    } else {
        format!("the command inside {} ", via.join(" → "))
    }
}

/// What is known before the program starts.
#[derive(Debug, Clone, Default)]
pub struct Start {
    /// Variables known to be set (the request's environment, the account's `HOME`).
    pub vars: Vec<(String, String)>,
    /// The directory it starts in, if known.
    pub cwd: Option<String>,
}

/// Parses `source` as a bash program and finds everything it can run.
pub fn walk(source: &str, start: &Start) -> Result<Walked, WalkError> {
    let mut walker = Walker::new(start);
    walker.program(source, &Ctx::default())?;
    Ok(walker.out)
}

/// The values a variable may hold: each alternative is its elements (one for a scalar), or
/// `None` for a value only known at run time.
type Value = Vec<Option<Vec<String>>>;

/// The positional parameters of a script or function.
#[derive(Debug, Clone)]
struct Positional {
    /// `$0`, if known.
    zero: Option<Field>,
    /// `$1` …; `None` when not known.
    args: Option<Vec<Field>>,
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
    /// May or may not run (a branch, a loop body, the right side of `&&`): assignments here
    /// add values rather than replace them.
    conditional: bool,
    /// What commands here read on their standard input unless redirected.
    stdin: Stdin,
    /// Text that may not be shell at all (what a command of unknown name is given): what does
    /// not parse is skipped rather than refused.
    lenient: bool,
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
            ..self.clone()
        })
    }

    fn concurrent(&self, concurrent: bool) -> Ctx {
        Ctx {
            concurrent: self.concurrent || concurrent,
            ..self.clone()
        }
    }

    fn conditional(&self) -> Ctx {
        Ctx {
            conditional: true,
            ..self.clone()
        }
    }

    fn reading(&self, stdin: Stdin) -> Ctx {
        Ctx {
            stdin,
            ..self.clone()
        }
    }

    fn lenient(&self) -> Ctx {
        Ctx {
            lenient: true,
            ..self.clone()
        }
    }
}

/// A part of a word's value during expansion.
#[derive(Debug, Clone)]
enum Part {
    /// Text that does not split.
    Known(String),
    /// An unquoted expansion's known value: split at `$IFS` characters.
    Splits(String),
    /// Elements that become separate words (`"$@"`, `"${a[@]}"`).
    Elements(Vec<String>),
    /// Only known at run time.
    Unknown {
        shown: String,
        maybe_empty: bool,
        splits: bool,
        content: Option<Box<Stdin>>,
    },
    /// An unquoted `$IFS`: field splitting breaks the word here.
    Break,
}

/// The items of a simple command, evaluated.
#[derive(Default)]
struct Items {
    /// Each word's alternatives, each a list of fields.
    words: Vec<Vec<Vec<Field>>>,
    redirects: Vec<Redirect>,
    stdin: Stdin,
    /// Assignments before the command name.
    prefix: Vec<(ast::Assignment, Vec<Field>)>,
    /// Assignment words after it (`declare x=1`).
    declared: Vec<(ast::Assignment, Vec<Field>)>,
}

struct Walker {
    out: Walked,
    options: ParserOptions,
    vars: HashMap<String, Value>,
    functions: HashMap<String, ast::FunctionBody>,
    aliases: HashMap<String, String>,
    /// A command name (or path, as written or normalised) → the program it runs.
    programs: HashMap<String, String>,
    links: Vec<(String, String)>,
    cwd: Vec<Option<String>>,
    /// Positional parameters of the scripts and functions being walked (innermost last).
    positional: Vec<Positional>,
    /// The field separators, if known.
    ifs: Option<String>,
    steps: usize,
}

// === impl Walker ===

impl Walker {
    fn new(start: &Start) -> Walker {
        let mut vars = HashMap::new();
        for (name, value) in &start.vars {
            vars.insert(name.clone(), vec![Some(vec![value.clone()])]);
        }
        let ifs = match start.vars.iter().rev().find(|(n, _)| n == "IFS") {
            Some((_, v)) => Some(v.clone()),
            None => Some(" \t\n".to_string()),
        };
        Walker {
            out: Walked::default(),
            options: ParserOptions::default(),
            vars,
            functions: HashMap::new(),
            aliases: HashMap::new(),
            programs: HashMap::new(),
            links: Vec::new(),
            cwd: vec![start.cwd.clone()],
            // `bash -c CMD`: `$0` is the shell, there are no arguments.
            positional: vec![Positional {
                zero: None,
                args: Some(Vec::new()),
            }],
            ifs,
            steps: 0,
        }
    }

    fn step(&mut self) -> Result<(), WalkError> {
        self.steps += 1;
        if self.steps > MAX_STEPS {
            return Err(WalkError::TooComplex);
        }
        Ok(())
    }

    fn unchecked(&mut self, why: String, ctx: &Ctx) {
        self.out.unchecked.push(Unchecked {
            why,
            via: ctx.via.clone(),
        });
    }

    /// Walks a program; returns what it prints, when that is known.
    fn program(&mut self, source: &str, ctx: &Ctx) -> Result<Option<String>, WalkError> {
        let program = match self.parse(source) {
            Ok(program) => program,
            Err(_) if ctx.lenient => {
                // Text that may not be shell: walk the longest run of leading lines that
                // parses (found by bisection, so a long text costs a few parses).
                let lines: Vec<&str> = source.lines().collect();
                let (mut good, mut bad) = (0, lines.len());
                let mut parsed = None;
                while bad - good > 1 {
                    let mid = good + (bad - good) / 2;
                    match self.parse(&lines[..mid].join("\n")) {
                        Ok(program) => {
                            good = mid;
                            parsed = Some(program);
                        }
                        Err(_) => bad = mid,
                    }
                }
                match parsed {
                    Some(program) => program,
                    None => return Ok(None),
                }
            }
            Err(message) => {
                return Err(WalkError::Parse {
                    via: ctx.via.clone(),
                    message,
                });
            }
        };
        let mut output = Some(String::new());
        for list in &program.complete_commands {
            let printed = self.list(list, ctx)?;
            output = join_output(output, printed);
        }
        Ok(output)
    }

    fn parse(&self, source: &str) -> Result<ast::Program, String> {
        let mut parser = Parser::new(std::io::Cursor::new(source.as_bytes()), &self.options);
        parser.parse_program().map_err(|e| e.to_string())
    }

    fn list(&mut self, list: &ast::CompoundList, ctx: &Ctx) -> Result<Option<String>, WalkError> {
        let mut output = Some(String::new());
        for ast::CompoundListItem(and_or, separator) in &list.0 {
            let background = matches!(separator, ast::SeparatorOperator::Async);
            let ctx = ctx.concurrent(background);
            let mut printed = self.pipeline(&and_or.first, &ctx)?;
            for next in &and_or.additional {
                let (ast::AndOr::And(p) | ast::AndOr::Or(p)) = next;
                self.pipeline(p, &ctx.conditional())?;
                printed = None;
            }
            output = if background {
                None
            } else {
                join_output(output, printed)
            };
        }
        Ok(output)
    }

    fn pipeline(
        &mut self,
        pipeline: &ast::Pipeline,
        ctx: &Ctx,
    ) -> Result<Option<String>, WalkError> {
        let ctx = ctx.concurrent(pipeline.seq.len() > 1);
        let mut stdin = ctx.stdin.clone();
        let mut printed = None;
        for command in &pipeline.seq {
            printed = self.command(command, &ctx.reading(stdin))?;
            stdin = match &printed {
                Some(text) => Stdin::Known(text.clone()),
                None => Stdin::Unknown(format!("the output of `{}`", short(&command.to_string()))),
            };
        }
        Ok(printed)
    }

    /// Walks one command; returns what it prints when that is known.
    fn command(&mut self, command: &ast::Command, ctx: &Ctx) -> Result<Option<String>, WalkError> {
        match command {
            ast::Command::Simple(simple) => self.simple(simple, ctx),
            ast::Command::Compound(compound, redirects) => {
                let ctx = match redirects {
                    Some(redirects) => {
                        let stdin =
                            self.bare_redirects(&redirects.0, &compound.to_string(), ctx)?;
                        ctx.reading(stdin)
                    }
                    None => ctx.clone(),
                };
                self.compound(compound, &ctx)?;
                Ok(None)
            }
            ast::Command::Function(function) => {
                let name = self.expand(&function.fname.value, ctx)?;
                let mut body_ctx = Ctx {
                    concurrent: false,
                    conditional: true,
                    ..ctx.clone()
                };
                if let Some([Field::Static(name)]) = name.first().map(Vec::as_slice) {
                    body_ctx.functions.push(name.clone());
                    self.functions.insert(name.clone(), function.body.clone());
                }
                let ast::FunctionBody(body, redirects) = &function.body;
                // The body may run with any arguments: here they are not known.
                self.positional.push(Positional {
                    zero: None,
                    args: None,
                });
                let walked = self.compound(body, &body_ctx);
                self.positional.pop();
                walked?;
                if let Some(redirects) = redirects {
                    self.bare_redirects(&redirects.0, &function.to_string(), ctx)?;
                }
                Ok(Some(String::new()))
            }
            ast::Command::ExtendedTest(test, redirects) => {
                self.test_expr(&test.expr, ctx)?;
                if let Some(redirects) = redirects {
                    self.bare_redirects(&redirects.0, "[[ … ]]", ctx)?;
                }
                Ok(Some(String::new()))
            }
        }
    }

    fn test_expr(&mut self, expr: &ast::ExtendedTestExpr, ctx: &Ctx) -> Result<(), WalkError> {
        use ast::BinaryPredicate as B;
        use ast::ExtendedTestExpr as E;
        match expr {
            E::And(a, b) | E::Or(a, b) => {
                self.test_expr(a, ctx)?;
                self.test_expr(b, ctx)
            }
            E::Not(a) | E::Parenthesized(a) => self.test_expr(a, ctx),
            E::UnaryTest(predicate, w) => {
                let fields = self.expand(&w.value, ctx)?;
                if matches!(
                    predicate,
                    ast::UnaryPredicate::ShellVariableIsSetAndAssigned
                        | ast::UnaryPredicate::ShellVariableIsSetAndNameRef
                ) {
                    for field in fields.iter().flatten() {
                        self.variable_name(field, "[[ -v ]]", ctx)?;
                    }
                }
                Ok(())
            }
            E::BinaryTest(predicate, a, b) => {
                let arithmetic = matches!(
                    predicate,
                    B::ArithmeticEqualTo
                        | B::ArithmeticNotEqualTo
                        | B::ArithmeticLessThan
                        | B::ArithmeticLessThanOrEqualTo
                        | B::ArithmeticGreaterThan
                        | B::ArithmeticGreaterThanOrEqualTo
                );
                // Operands of `[[ ]]` are not split into words.
                for word in [a, b] {
                    let fields = self.expand_assignment(&word.value, ctx)?;
                    if arithmetic {
                        for field in &fields {
                            if let Field::Static(text) = field {
                                self.arithmetic(text, false, ctx)?;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    fn compound(&mut self, compound: &ast::CompoundCommand, ctx: &Ctx) -> Result<(), WalkError> {
        use ast::CompoundCommand as C;
        match compound {
            C::Arithmetic(a) => self.arithmetic(&a.expr.value, true, ctx),
            C::ArithmeticForClause(f) => {
                for expr in [&f.initializer, &f.condition, &f.updater]
                    .into_iter()
                    .flatten()
                {
                    self.arithmetic(&expr.value, true, ctx)?;
                }
                let endless = f
                    .condition
                    .as_ref()
                    .is_none_or(|c| c.value.trim().is_empty() || c.value.trim() == "1");
                self.loop_body(&f.body.list, endless, ctx)
            }
            C::BraceGroup(b) => self.list(&b.list, ctx).map(drop),
            C::Subshell(s) => self.list(&s.list, ctx).map(drop),
            C::ForClause(f) => {
                let mut values: Vec<Option<Vec<String>>> = Vec::new();
                match &f.values {
                    Some(words) => {
                        for word in words {
                            for fields in self.expand(&word.value, ctx)? {
                                for field in fields {
                                    values.push(field.known().map(|v| vec![v.to_string()]));
                                }
                            }
                        }
                    }
                    None => match self.current_args() {
                        Some(args) => values
                            .extend(args.iter().map(|a| a.known().map(|v| vec![v.to_string()]))),
                        None => values.push(None),
                    },
                }
                if values.is_empty() {
                    values.push(Some(vec![String::new()]));
                }
                self.set_var(&f.variable_name, values, false);
                self.loop_body(&f.body.list, false, ctx)
            }
            C::CaseClause(c) => {
                self.expand(&c.value.value, ctx)?;
                for item in &c.cases {
                    for pattern in &item.patterns {
                        self.expand(&pattern.value, ctx)?;
                    }
                    if let Some(list) = &item.cmd {
                        self.list(list, &ctx.conditional())?;
                    }
                }
                Ok(())
            }
            C::IfClause(i) => {
                self.list(&i.condition, ctx)?;
                self.list(&i.then, &ctx.conditional())?;
                for clause in i.elses.iter().flatten() {
                    if let Some(condition) = &clause.condition {
                        self.list(condition, &ctx.conditional())?;
                    }
                    self.list(&clause.body, &ctx.conditional())?;
                }
                Ok(())
            }
            C::WhileClause(w) | C::UntilClause(w) => {
                let forever: &[&str] = if matches!(compound, C::WhileClause(_)) {
                    &["true", ":"]
                } else {
                    &["false"]
                };
                let endless = constant_command(&w.0).is_some_and(|c| forever.contains(&c));
                self.list(&w.0, ctx)?;
                self.loop_body(&w.1.list, endless, ctx)
            }
            C::Coprocess(c) => {
                let ctx = ctx
                    .concurrent(true)
                    .reading(Stdin::Unknown("the coprocess's input".into()));
                self.command(&c.body, &ctx)?;
                Ok(())
            }
        }
    }

    /// A loop body; an endless loop that starts background jobs is a fork bomb.
    fn loop_body(
        &mut self,
        body: &ast::CompoundList,
        endless: bool,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        if endless
            && body
                .0
                .iter()
                .any(|item| matches!(item.1, ast::SeparatorOperator::Async))
        {
            self.out.fork_bombs.push(ForkBomb {
                why: "an endless loop starts background jobs".into(),
                via: ctx.via.clone(),
            });
        }
        self.list(body, &ctx.conditional()).map(drop)
    }

    /// Redirections of a compound command or function: substitutions in them are walked,
    /// file targets are recorded as an invocation without a command name; returns what the
    /// command reads on its standard input.
    fn bare_redirects(
        &mut self,
        redirects: &[ast::IoRedirect],
        text: &str,
        ctx: &Ctx,
    ) -> Result<Stdin, WalkError> {
        let mut files = Vec::new();
        let mut stdin = ctx.stdin.clone();
        for redirect in redirects {
            if let Some(input) = self.redirect(redirect, &mut files, ctx)? {
                stdin = input;
            }
        }
        if !files.is_empty() {
            let invocation = self.invocation(Vec::new(), files, Vec::new(), text.to_string(), ctx);
            self.out.invocations.push(invocation);
        }
        Ok(stdin)
    }

    /// Walks a redirection's words; records its file; returns what the command reads on its
    /// standard input if the redirection sets it.
    fn redirect(
        &mut self,
        redirect: &ast::IoRedirect,
        files: &mut Vec<Redirect>,
        ctx: &Ctx,
    ) -> Result<Option<Stdin>, WalkError> {
        use ast::{IoFileRedirectKind as K, IoFileRedirectTarget as T, IoRedirect as R};
        let is_stdin = |fd: &Option<ast::IoFd>| fd.is_none_or(|fd| fd == 0);
        match redirect {
            R::File(fd, kind, target) => {
                let write = matches!(kind, K::Write | K::Append | K::Clobber | K::ReadAndWrite);
                let reads_stdin =
                    matches!(kind, K::Read | K::ReadAndWrite | K::DuplicateInput) && is_stdin(fd);
                match target {
                    T::Filename(w) => {
                        let field = self.expand_one(&w.value, ctx)?;
                        files.push(Redirect {
                            target: field.clone(),
                            write,
                        });
                        if reads_stdin {
                            return Ok(Some(stdin_of_file(&field)));
                        }
                    }
                    T::Duplicate(w) => {
                        let field = self.expand_one(&w.value, ctx)?;
                        // `>&file` (not a descriptor) writes to a file.
                        if matches!(kind, K::DuplicateOutput)
                            && field
                                .known()
                                .is_some_and(|f| f.parse::<u32>().is_err() && f != "-")
                        {
                            files.push(Redirect {
                                target: field,
                                write: true,
                            });
                        } else if reads_stdin {
                            return Ok(Some(Stdin::Unknown(format!(
                                "file descriptor {}",
                                field.shown()
                            ))));
                        }
                    }
                    T::ProcessSubstitution(sub_kind, sub) => {
                        let printed = self.process_substitution(sub_kind, sub, ctx)?;
                        if reads_stdin {
                            return Ok(Some(printed));
                        }
                    }
                    T::Fd(_) => {
                        if reads_stdin {
                            return Ok(Some(Stdin::Unknown("another file descriptor".into())));
                        }
                    }
                }
                Ok(None)
            }
            R::HereDocument(fd, doc) => {
                let text = if doc.requires_expansion {
                    let pieces = word::parse_heredoc(&doc.doc.value, &self.options)
                        .map_err(|e| self.word_error(e, ctx))?;
                    let alternatives = self.pieces_value(&pieces, true, ctx)?;
                    text_of(alternatives.into_iter().next().unwrap_or_default())
                } else {
                    Ok(doc.doc.value.clone())
                };
                Ok(is_stdin(fd).then(|| match text {
                    Ok(text) => Stdin::Known(text),
                    Err(shown) => {
                        Stdin::Unknown(format!("a here-document holding `{}`", short(&shown)))
                    }
                }))
            }
            R::HereString(fd, w) => {
                let field = self.expand_quoted(&w.value, ctx)?;
                Ok(is_stdin(fd).then(|| match field {
                    Field::Static(text) => Stdin::Known(format!("{text}\n")),
                    Field::Dynamic(d) => {
                        Stdin::Unknown(format!("the here-string `{}`", short(&d.shown)))
                    }
                }))
            }
            R::OutputAndError(w, _) => {
                let field = self.expand_one(&w.value, ctx)?;
                files.push(Redirect {
                    target: field,
                    write: true,
                });
                Ok(None)
            }
        }
    }

    /// Walks `<(…)` or `>(…)`; returns what reading it gives.
    fn process_substitution(
        &mut self,
        kind: &ast::ProcessSubstitutionKind,
        sub: &ast::SubshellCommand,
        ctx: &Ctx,
    ) -> Result<Stdin, WalkError> {
        match kind {
            ast::ProcessSubstitutionKind::Read => {
                let printed = self.list(&sub.list, &ctx.nested("<(…)")?)?;
                Ok(match printed {
                    Some(text) => Stdin::Known(text),
                    None => {
                        Stdin::Unknown(format!("the output of `{}`", short(&sub.list.to_string())))
                    }
                })
            }
            ast::ProcessSubstitutionKind::Write => {
                let inner = ctx
                    .nested(">(…)")?
                    .reading(Stdin::Unknown("what the command writes into `>(…)`".into()));
                self.list(&sub.list, &inner)?;
                Ok(Stdin::Unknown("a `>(…)` pipe".into()))
            }
        }
    }

    fn simple(
        &mut self,
        simple: &ast::SimpleCommand,
        ctx: &Ctx,
    ) -> Result<Option<String>, WalkError> {
        self.step()?;
        let mut items = Items {
            stdin: ctx.stdin.clone(),
            ..Items::default()
        };
        for item in simple.prefix.iter().flat_map(|p| p.0.iter()) {
            self.item(item, true, &mut items, ctx)?;
        }
        if let Some(name) = &simple.word_or_name {
            items.words.push(self.expand(&name.value, ctx)?);
        }
        for item in simple.suffix.iter().flat_map(|s| s.0.iter()) {
            self.item(item, false, &mut items, ctx)?;
        }
        let Items {
            words,
            redirects,
            stdin,
            prefix,
            declared,
        } = items;
        let assignments: Vec<(String, Field)> = prefix
            .iter()
            .map(|(a, v)| {
                (
                    assignment_name(a),
                    v.first().cloned().unwrap_or_else(|| Field::unknown("")),
                )
            })
            .collect();

        if words.is_empty() {
            // Assignments (and redirections) only: the assignments last.
            for (assignment, value) in &prefix {
                self.assign(assignment, value.clone(), &stdin, ctx)?;
            }
            if !redirects.is_empty() || !assignments.is_empty() {
                let invocation =
                    self.invocation(Vec::new(), redirects, assignments, simple.to_string(), ctx);
                self.out.invocations.push(invocation);
            }
            return Ok(Some(String::new()));
        }
        // Prefix assignments that run code (`PS4=…`, `BASH_ENV=…`) are checked; the values
        // are known to carriers of this command only.
        for (assignment, value) in &prefix {
            self.special_assignment(&assignment_name(assignment), value, &stdin, ctx)?;
        }

        let mut output = None;
        for (n, fields) in combinations(words).into_iter().enumerate() {
            let invocation = self.invocation(
                fields,
                redirects.clone(),
                assignments.clone(),
                simple.to_string(),
                ctx,
            );
            let printed = self.with_vars(&assignments, |w| {
                w.run(invocation, &stdin, &declared, Some(simple), ctx)
            })?;
            if n == 0 {
                output = printed;
            } else if output != printed {
                output = None;
            }
        }
        Ok(output)
    }

    /// One prefix or suffix item of a simple command.
    fn item(
        &mut self,
        item: &ast::CommandPrefixOrSuffixItem,
        in_prefix: bool,
        items: &mut Items,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        use ast::CommandPrefixOrSuffixItem as Item;
        match item {
            Item::Word(w) => items.words.push(self.expand(&w.value, ctx)?),
            Item::AssignmentWord(assignment, w) => {
                let value = self.assignment_value(assignment, ctx)?;
                if in_prefix && items.words.is_empty() {
                    items.prefix.push((assignment.clone(), value));
                } else {
                    // `declare x=…`: an argument, and an assignment when the command declares.
                    items.words.push(self.expand(&w.value, ctx)?);
                    items.declared.push((assignment.clone(), value));
                }
            }
            Item::IoRedirect(r) => {
                if let Some(input) = self.redirect(r, &mut items.redirects, ctx)? {
                    items.stdin = input;
                }
            }
            Item::ProcessSubstitution(kind, sub) => {
                let content = self.process_substitution(kind, sub, ctx)?;
                let field = Field::Dynamic(Dyn {
                    shown: format!("{kind}(…)"),
                    parts: vec![Piece::Unknown { maybe_empty: false }],
                    splits: false,
                    content: Some(Box::new(content)),
                });
                // `NAME=<(…)` is one word to bash; the parser gives the assignment and the
                // substitution apart.
                let glued = items.words.last_mut().filter(|alternatives| {
                    alternatives
                        .iter()
                        .all(|fields| fields.last().is_some_and(|f| f.shown().ends_with('=')))
                });
                match glued {
                    Some(alternatives) => {
                        for fields in alternatives.iter_mut() {
                            if let Some(last) = fields.pop() {
                                fields.push(glue(last, field.clone()));
                            }
                        }
                    }
                    None => items.words.push(vec![vec![field]]),
                }
            }
        }
        Ok(())
    }

    /// Runs `f` with `assignments` known as variables, then restores them.
    fn with_vars<T>(
        &mut self,
        assignments: &[(String, Field)],
        f: impl FnOnce(&mut Walker) -> T,
    ) -> T {
        let saved: Vec<(String, Option<Value>)> = assignments
            .iter()
            .map(|(name, _)| (name.clone(), self.vars.get(name).cloned()))
            .collect();
        for (name, value) in assignments {
            self.vars.insert(
                name.clone(),
                vec![value.known().map(|v| vec![v.to_string()])],
            );
        }
        let result = f(self);
        for (name, value) in saved {
            match value {
                Some(value) => self.vars.insert(name, value),
                None => self.vars.remove(&name),
            };
        }
        result
    }

    /// Records an invocation, applies what it does to the shell, and follows what it runs.
    /// Returns what it prints, when that is known.
    fn run(
        &mut self,
        mut invocation: Invocation,
        stdin: &Stdin,
        declared: &[(ast::Assignment, Vec<Field>)],
        source: Option<&ast::SimpleCommand>,
        ctx: &Ctx,
    ) -> Result<Option<String>, WalkError> {
        self.step()?;
        // A name that runs another program (`hash -p`, `BASH_CMDS`, a copy or link made
        // earlier), or names the shell itself.
        if let Some(Field::Static(name)) = invocation.fields.first().cloned() {
            if let Some(program) = self.program_of(&name) {
                invocation.fields[0] = Field::Static(program);
            } else if runs_unknown_program(&name, &self.cwd, &self.links) {
                invocation.fields[0] = Field::Dynamic(Dyn {
                    shown: name.clone(),
                    parts: vec![Piece::Unknown { maybe_empty: false }],
                    splits: false,
                    content: None,
                });
            }
        }
        // An alias: its text with the arguments, walked as the shell would see it.
        if let (Some(Field::Static(name)), Some(source)) = (invocation.fields.first(), source)
            && let Some(value) = self.aliases.get(name.as_str()).cloned()
        {
            let label = format!("alias {name}");
            if !ctx.via.contains(&label) {
                let rest = source
                    .suffix
                    .as_ref()
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let inner = ctx.nested(label)?.lenient().reading(stdin.clone());
                self.program(&format!("{value} {rest}"), &inner)?;
            }
        }
        let name = invocation
            .fields
            .first()
            .and_then(Field::known)
            .map(basename)
            .map(str::to_string);
        if let Some(name) = &name
            && ctx.concurrent
            && ctx.functions.iter().any(|f| f == name)
        {
            self.out.fork_bombs.push(ForkBomb {
                why: format!("function `{name}` calls itself in a pipeline or in the background"),
                via: ctx.via.clone(),
            });
        }
        self.builtin(&invocation, declared, stdin, ctx)?;
        let carried = carriers::carried(&invocation, stdin);
        invocation.carries = carried
            .iter()
            .map(Carried::kind)
            .max_by_key(|k| *k == Carrier::Code);
        let function = name
            .as_ref()
            .and_then(|n| self.functions.get(n).cloned().map(|body| (n.clone(), body)));
        invocation.function = function.is_some();
        let printed = printed(&invocation, stdin);
        let args = invocation.args().to_vec();
        let assignments = invocation.assignments.clone();
        self.out.invocations.push(invocation);

        for carried in carried {
            self.carried(carried, stdin, &assignments, ctx)?;
        }
        // A call of a function the program defines, with arguments: its body again, with them.
        if let Some((name, body)) = function
            && !args.is_empty()
            && !ctx.functions.contains(&name)
        {
            let mut inner = ctx.nested(format!("{name}()"))?;
            inner.functions.push(name);
            self.positional.push(Positional {
                zero: None,
                args: Some(args),
            });
            let result = self.compound(&body.0, &inner.reading(stdin.clone()));
            self.positional.pop();
            result?;
        }
        Ok(printed)
    }

    /// A command found where the walk is now: in its working directory and links, reached
    /// through `ctx`'s carriers; what it carries is found when it is run.
    fn invocation(
        &self,
        fields: Vec<Field>,
        redirects: Vec<Redirect>,
        assignments: Vec<(String, Field)>,
        text: String,
        ctx: &Ctx,
    ) -> Invocation {
        Invocation {
            fields,
            redirects,
            assignments,
            text,
            via: ctx.via.clone(),
            cwd: self.cwd.clone(),
            links: self.links.clone(),
            carries: None,
            function: false,
        }
    }

    /// Walks what a carrier runs.
    fn carried(
        &mut self,
        carried: Carried,
        stdin: &Stdin,
        assignments: &[(String, Field)],
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        match carried {
            Carried::Command {
                fields,
                label,
                cwd,
                assigns,
            } => {
                let inner = ctx.nested(label)?;
                for (name, value) in &assigns {
                    self.special_assignment(name, std::slice::from_ref(value), stdin, &inner)?;
                }
                let saved_cwd = self.cwd.clone();
                if let Some(dir) = cwd {
                    self.cwd = self.cd_targets(&dir);
                }
                let text = shown_words(&fields);
                let invocation = self.invocation(fields, Vec::new(), assigns.clone(), text, &inner);
                let result =
                    self.with_vars(&assigns, |w| w.run(invocation, stdin, &[], None, &inner));
                self.cwd = saved_cwd;
                result.map(drop)
            }
            Carried::Text {
                text,
                label,
                args,
                lenient,
                stdin: reads,
            } => {
                let inner = ctx.nested(label.clone())?;
                let inner = if lenient { inner.lenient() } else { inner };
                let stdin = reads.as_ref().unwrap_or(stdin);
                match text {
                    Field::Static(source) => self.with_vars(assignments, |w| {
                        w.script(&source, args, &inner.reading(stdin.clone()))
                    }),
                    Field::Dynamic(d) => {
                        if !lenient || !d.shown.trim().is_empty() {
                            self.unchecked(
                                format!(
                                    "`{label}` runs text only known at run time: `{}`",
                                    short(&d.shown)
                                ),
                                ctx,
                            );
                        }
                        // What is known of it is still walked.
                        self.script(&d.shown, args, &inner.lenient().reading(stdin.clone()))
                    }
                }
            }
            Carried::File { file, label, args } => {
                let content = match &file {
                    Field::Dynamic(Dyn {
                        content: Some(content),
                        ..
                    }) => (**content).clone(),
                    Field::Static(path) if is_stdin_path(path) => stdin.clone(),
                    // A script file: its contents are not known here.
                    _ => return Ok(()),
                };
                self.stdin_script(&content, &label, Format::Shell, args, false, ctx)
            }
            Carried::Stdin {
                label,
                format,
                lenient,
            } => self.stdin_script(stdin, &label, format, None, lenient, ctx),
            Carried::Unchecked(why) => {
                self.unchecked(why, ctx);
                Ok(())
            }
        }
    }

    /// Walks text read from `content` as a script of `format`.
    fn stdin_script(
        &mut self,
        content: &Stdin,
        label: &str,
        format: Format,
        args: Option<(Option<Field>, Vec<Field>)>,
        lenient: bool,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        match content {
            Stdin::Known(text) => {
                let source = match format {
                    Format::Shell => text.clone(),
                    Format::Crontab => carriers::crontab_commands(text),
                };
                let inner = ctx.nested(label)?;
                let inner = if lenient { inner.lenient() } else { inner };
                self.script(&source, args, &inner.reading(Stdin::Null))
            }
            Stdin::Unknown(from) => {
                self.unchecked(
                    format!(
                        "`{label}` runs text it reads from {from}, which is only known at run time"
                    ),
                    ctx,
                );
                Ok(())
            }
            Stdin::Null | Stdin::File => Ok(()),
        }
    }

    /// Walks `source` as a script with its own positional parameters.
    fn script(
        &mut self,
        source: &str,
        args: Option<(Option<Field>, Vec<Field>)>,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let pushed = match args {
            Some((zero, args)) => {
                self.positional.push(Positional {
                    zero,
                    args: Some(args),
                });
                true
            }
            None => false,
        };
        let result = self.program(source, ctx);
        if pushed {
            self.positional.pop();
        }
        result.map(drop)
    }

    /// What a builtin (or a program that renames things) does to the shell's state.
    fn builtin(
        &mut self,
        invocation: &Invocation,
        declared: &[(ast::Assignment, Vec<Field>)],
        stdin: &Stdin,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let Some(name) = invocation.name() else {
            return Ok(());
        };
        let args = invocation.args();
        let statics = || args.iter().filter_map(Field::known);
        match name {
            "cd" | "pushd" => {
                let target = args
                    .iter()
                    .find(|a| a.known().is_none_or(|s| !s.starts_with('-') || s == "-"));
                let dirs = match target {
                    None => self.home(),
                    Some(Field::Static(dir)) if dir == "-" => vec![None],
                    Some(dir) => self.cd_targets(dir),
                };
                self.change_cwd(dirs, ctx.conditional);
            }
            "popd" => self.change_cwd(vec![None], true),
            "set" => {
                let dashes = args.iter().position(|a| a.known() == Some("--"));
                let first_operand = args
                    .iter()
                    .position(|a| a.known().is_none_or(|s| !s.starts_with(['-', '+'])));
                let from = match (dashes, first_operand) {
                    (Some(d), _) => Some(d + 1),
                    (None, Some(o)) => Some(o),
                    (None, None) => None,
                };
                if let Some(from) = from
                    && let Some(top) = self.positional.last_mut()
                {
                    top.args = Some(args[from..].to_vec());
                }
            }
            "shift" => {
                let n = args
                    .first()
                    .and_then(Field::known)
                    .and_then(|n| n.parse::<usize>().ok())
                    .unwrap_or(1);
                if let Some(Positional { args: Some(a), .. }) = self.positional.last_mut() {
                    a.drain(..n.min(a.len()));
                }
            }
            "declare" | "typeset" | "local" | "export" | "readonly" => {
                let integer = args
                    .iter()
                    .filter_map(Field::known)
                    .any(|a| a.starts_with('-') && !a.starts_with("--") && a.contains('i'));
                for (assignment, value) in declared {
                    if integer {
                        for v in value.iter().filter_map(Field::known) {
                            self.arithmetic(v, false, ctx)?;
                        }
                    }
                    self.assign(assignment, value.clone(), stdin, ctx)?;
                }
                // bash evaluates a subscript in a name `declare`, `typeset` and `local` are given
                // at run time (`declare "$x=1"`); `export` and `readonly` do not.
                let evaluates = matches!(name, "declare" | "typeset" | "local");
                for arg in args {
                    match arg {
                        Field::Static(text)
                            if !text.starts_with(['-', '+']) && !text.contains('=') =>
                        {
                            self.variable_name(arg, name, ctx)?;
                        }
                        Field::Dynamic(d) if evaluates && name_is_dynamic(d) => {
                            self.variable_name(arg, name, ctx)?;
                        }
                        _ => {}
                    }
                }
            }
            "let" => {
                for arg in statics() {
                    self.arithmetic(arg, false, ctx)?;
                }
            }
            "read" => {
                let parsed = carriers::READ.parse(args);
                for field in parsed.operand_fields(args).chain(parsed.values("a")) {
                    self.variable_name(field, "read", ctx)?;
                    self.forget(field);
                }
            }
            "mapfile" | "readarray" => {
                let parsed = carriers::MAPFILE.parse(args);
                for field in parsed.operand_fields(args) {
                    self.variable_name(field, name, ctx)?;
                    self.forget(field);
                }
            }
            "printf" => {
                let parsed = carriers::PRINTF.parse(args);
                for field in parsed.values("v") {
                    self.variable_name(field, "printf -v", ctx)?;
                    self.forget(field);
                }
            }
            "unset" => {
                for arg in args
                    .iter()
                    .filter(|a| a.known().is_none_or(|s| !s.starts_with('-')))
                {
                    self.variable_name(arg, "unset", ctx)?;
                    if let Some(var) = arg.known() {
                        self.set_var(var, vec![Some(Vec::new())], ctx.conditional);
                    }
                }
            }
            "test" | "[" => {
                for pair in args.windows(2) {
                    if pair[0].known() == Some("-v") {
                        self.variable_name(&pair[1], name, ctx)?;
                    }
                }
            }
            "getopts" => {
                if let Some(var) = args.get(1) {
                    self.variable_name(var, "getopts", ctx)?;
                }
            }
            "wait" => {
                for pair in args.windows(2) {
                    if pair[0].known() == Some("-p") {
                        self.variable_name(&pair[1], "wait -p", ctx)?;
                    }
                }
            }
            "alias" => {
                for arg in args {
                    let Some((alias, _)) = arg.shown().split_once('=') else {
                        continue;
                    };
                    let alias = alias.to_string();
                    match arg {
                        Field::Static(s) => {
                            let value = s[alias.len() + 1..].to_string();
                            let inner = ctx.nested(format!("alias {alias}"))?.lenient();
                            self.program(&value, &inner)?;
                            self.aliases.insert(alias, value);
                        }
                        Field::Dynamic(d) => self.unchecked(
                            format!(
                                "`alias {alias}` is set to text only known at run time: `{}`",
                                short(&d.shown)
                            ),
                            ctx,
                        ),
                    }
                }
            }
            "hash" => {
                let parsed = carriers::HASH.parse(args);
                if let Some(program) = parsed.value("p") {
                    for target in parsed.operand_fields(args).filter_map(Field::known) {
                        match program {
                            Field::Static(p) => {
                                self.programs.insert(target.to_string(), p.clone());
                            }
                            Field::Dynamic(d) => self.unchecked(
                                format!(
                                    "`hash -p` makes `{target}` run a program only known at run \
                                     time: `{}`",
                                    d.shown
                                ),
                                ctx,
                            ),
                        }
                    }
                }
            }
            "ln" | "cp" | "install" | "mv" => self.copies(name, args),
            "mount" => {
                let parsed = carriers::MOUNT.parse(args);
                let bind = parsed.has("B")
                    || parsed.has("R")
                    || parsed
                        .values("o")
                        .filter_map(Field::known)
                        .any(|o| o.split(',').any(|o| o == "bind" || o == "rbind"));
                let operands: Vec<&Field> = parsed.operand_fields(args).collect();
                if bind && let [Field::Static(from), Field::Static(to)] = operands.as_slice() {
                    self.link(to, from);
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// `ln`, `cp`, `install`, `mv`: a program copied or linked under another name, and
    /// symlinks to directories.
    fn copies(&mut self, name: &str, args: &[Field]) {
        let spec = match name {
            "ln" => carriers::LN,
            "cp" => carriers::CP,
            "install" => carriers::INSTALL,
            _ => carriers::MV,
        };
        let parsed = spec.parse(args);
        let operands: Vec<&str> = parsed
            .operand_fields(args)
            .map(|f| f.known().unwrap_or(""))
            .collect();
        let (sources, dest) = match parsed.value("t").and_then(Field::known) {
            Some(dir) => (operands.clone(), format!("{dir}/")),
            None => match operands.split_last() {
                Some((dest, sources)) if !sources.is_empty() => {
                    (sources.to_vec(), dest.to_string())
                }
                _ => return,
            },
        };
        for source in sources.into_iter().filter(|s| !s.is_empty()) {
            let target = if dest.ends_with('/') {
                format!("{dest}{}", basename(source))
            } else {
                dest.clone()
            };
            if name == "ln" && parsed.has("s") {
                let link_dir = target
                    .rsplit_once('/')
                    .map_or(".", |(d, _)| if d.is_empty() { "/" } else { d });
                let resolved = if source.starts_with('/') {
                    source.to_string()
                } else {
                    format!("{link_dir}/{source}")
                };
                self.link(&target, &resolved);
            }
            self.programs.insert(target.clone(), source.to_string());
            if let Some(Some(abs)) = self
                .cwd
                .first()
                .map(|cwd| path::normalise(&target, cwd.as_deref(), &self.links))
            {
                self.programs.insert(abs, source.to_string());
            }
        }
    }

    fn link(&mut self, link: &str, target: &str) {
        let cwd = self.cwd.first().cloned().flatten();
        if let (Some(link), Some(target)) = (
            path::normalise(link, cwd.as_deref(), &self.links),
            path::normalise(target, cwd.as_deref(), &self.links),
        ) && link != "/"
        {
            self.links.push((link, target));
        }
    }

    /// The program a command name was made to run, if any.
    fn program_of(&self, name: &str) -> Option<String> {
        if let Some(p) = self.programs.get(name) {
            return Some(p.clone());
        }
        if name.contains('/') {
            for cwd in &self.cwd {
                if let Some(abs) = path::normalise(name, cwd.as_deref(), &self.links)
                    && let Some(p) = self.programs.get(&abs)
                {
                    return Some(p.clone());
                }
            }
        }
        None
    }

    /// Directories `cd DIR` may go to.
    fn cd_targets(&self, dir: &Field) -> Vec<Option<String>> {
        let Field::Static(dir) = dir else {
            return vec![None];
        };
        let mut targets = Vec::new();
        if !dir.starts_with('/') && !dir.starts_with('.') {
            for entry in self.var_values("CDPATH").into_iter().flatten().flatten() {
                for base in entry.split(':').filter(|b| !b.is_empty()) {
                    targets.push(path::normalise(&format!("{base}/{dir}"), None, &self.links));
                }
            }
        }
        for cwd in &self.cwd {
            targets.push(path::normalise(dir, cwd.as_deref(), &self.links));
        }
        dedup(targets)
    }

    fn change_cwd(&mut self, dirs: Vec<Option<String>>, conditional: bool) {
        let mut cwd = if conditional {
            self.cwd.clone()
        } else {
            Vec::new()
        };
        cwd.extend(dirs);
        let mut cwd = dedup(cwd);
        if cwd.len() > MAX_VALUES {
            cwd.truncate(MAX_VALUES);
            cwd.push(None);
        }
        self.cwd = cwd;
    }

    fn home(&self) -> Vec<Option<String>> {
        match self.var_values("HOME") {
            Some(values) => values
                .into_iter()
                .map(|v| v.filter(|v| v.starts_with('/')))
                .collect(),
            None => vec![None],
        }
    }

    /// The known values of scalar variable `name` (`None` entries: unknown ones); `None` if
    /// it was never set.
    /// Every element of every alternative value of `name` that is known.
    fn known_elements(&self, name: &str) -> Vec<String> {
        self.vars
            .get(name)
            .into_iter()
            .flatten()
            .flatten()
            .flatten()
            .cloned()
            .collect()
    }

    fn var_values(&self, name: &str) -> Option<Vec<Option<String>>> {
        self.vars.get(name).map(|value| {
            value
                .iter()
                .map(|alt| {
                    alt.as_ref()
                        .map(|elements| elements.first().cloned().unwrap_or_default())
                })
                .collect()
        })
    }

    fn set_var(&mut self, name: &str, mut value: Value, conditional: bool) {
        if conditional {
            let old = self
                .vars
                .get(name)
                .cloned()
                // Not set before: it is empty unless the environment set it.
                .unwrap_or_else(|| vec![None]);
            value.extend(old);
        }
        value.dedup();
        if value.len() > MAX_VALUES {
            value.truncate(MAX_VALUES);
            value.push(None);
        }
        self.vars.insert(name.to_string(), value);
    }

    /// A variable assigned at run time (`read x`).
    fn forget(&mut self, field: &Field) {
        if let Some(name) = field.known() {
            let name = name.split('[').next().unwrap_or(name).to_string();
            self.vars.insert(name, vec![None]);
        }
    }

    fn current_args(&self) -> Option<Vec<Field>> {
        self.positional.last().and_then(|p| p.args.clone())
    }

    /// The value of an assignment: one field per alternative (arrays: their elements joined
    /// as the first alternative's fields).
    fn assignment_value(
        &mut self,
        assignment: &ast::Assignment,
        ctx: &Ctx,
    ) -> Result<Vec<Field>, WalkError> {
        if let ast::AssignmentName::ArrayElementName(_, index) = &assignment.name {
            self.arithmetic(index, false, ctx)?;
        }
        match &assignment.value {
            ast::AssignmentValue::Scalar(w) => {
                let alternatives = self.expand_assignment(&w.value, ctx)?;
                for field in &alternatives {
                    if let Field::Static(text) = field {
                        self.latent_code(text, ctx)?;
                    }
                }
                Ok(alternatives)
            }
            ast::AssignmentValue::Array(elements) => {
                let mut all = Vec::new();
                for (key, value) in elements {
                    if let Some(key) = key {
                        self.arithmetic(&key.value, false, ctx)?;
                    }
                    let fields = self.expand(&value.value, ctx)?;
                    all.extend(fields.into_iter().next().unwrap_or_default());
                }
                // An array is kept as one field of its elements joined by a NUL, which no
                // shell value holds.
                Ok(vec![
                    match all.iter().map(Field::known).collect::<Option<Vec<_>>>() {
                        Some(known) => Field::Static(format!("{ARRAY_MARK}{}", known.join("\0"))),
                        None => Field::unknown("(…)"),
                    },
                ])
            }
        }
    }

    /// Applies an assignment that persists in the shell.
    fn assign(
        &mut self,
        assignment: &ast::Assignment,
        value: Vec<Field>,
        stdin: &Stdin,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let name = assignment_name(assignment);
        self.special_assignment(&name, &value, stdin, ctx)?;
        if let ast::AssignmentName::ArrayElementName(array, key) = &assignment.name {
            let key = key.trim_matches(['"', '\'']);
            match array.as_str() {
                "BASH_ALIASES" => {
                    if let Some(Field::Static(text)) = value.first() {
                        self.aliases.insert(key.to_string(), text.clone());
                        let inner = ctx.nested(format!("alias {key}"))?.lenient();
                        self.program(text, &inner)?;
                    }
                }
                "BASH_CMDS" => {
                    if let Some(Field::Static(program)) = value.first() {
                        self.programs.insert(key.to_string(), program.clone());
                    }
                }
                _ => {}
            }
            // An element of an array: the array may now hold it too.
            let known = value.first().and_then(Field::known).map(|v| v.to_string());
            let mut current = self
                .vars
                .get(array)
                .cloned()
                .unwrap_or_else(|| vec![Some(Vec::new())]);
            for alt in current.iter_mut().flatten() {
                if let Some(v) = &known {
                    alt.push(v.clone());
                }
            }
            if known.is_none() {
                current.push(None);
            }
            self.vars.insert(array.clone(), current);
            return Ok(());
        }
        let mut alternatives: Value = value
            .iter()
            .map(|field| match field {
                Field::Static(s) => Some(match s.strip_prefix(ARRAY_MARK) {
                    Some("") => Vec::new(),
                    Some(elements) => elements.split('\0').map(str::to_string).collect(),
                    None => vec![s.clone()],
                }),
                Field::Dynamic(_) => None,
            })
            .collect();
        if assignment.append {
            let old = self
                .vars
                .get(&name)
                .cloned()
                .unwrap_or_else(|| vec![Some(Vec::new())]);
            let is_array = matches!(assignment.value, ast::AssignmentValue::Array(_));
            let mut appended = Vec::new();
            for o in &old {
                for a in &alternatives {
                    appended.push(match (o, a) {
                        (Some(o), Some(a)) if is_array => Some([o.clone(), a.clone()].concat()),
                        (Some(o), Some(a)) => Some(vec![format!(
                            "{}{}",
                            o.first().cloned().unwrap_or_default(),
                            a.first().cloned().unwrap_or_default()
                        )]),
                        _ => None,
                    });
                }
            }
            alternatives = appended;
        }
        if name == "IFS" {
            self.ifs = match alternatives.as_slice() {
                [Some(v)] => Some(v.first().cloned().unwrap_or_default()),
                _ => None,
            };
        }
        self.set_var(&name, alternatives, ctx.conditional);
        Ok(())
    }

    /// Variables the shell, or programs it starts, run as code.
    fn special_assignment(
        &mut self,
        name: &str,
        value: &[Field],
        stdin: &Stdin,
        ctx: &Ctx,
    ) -> Result<(), WalkError> {
        let label = format!("{name}=");
        for field in value {
            match name {
                "PS0" | "PS1" | "PS2" | "PS3" | "PS4" => match field {
                    Field::Static(text) => {
                        let inner = ctx.nested(label.clone())?.lenient();
                        if let Ok(pieces) = word::parse_heredoc(text, &self.options) {
                            self.pieces_value(&pieces, true, &inner)?;
                        }
                    }
                    Field::Dynamic(d) => self.unchecked(
                        format!(
                            "`{name}` is set to a value only known at run time (`{}`), which the \
                             shell expands as code",
                            short(&d.shown)
                        ),
                        ctx,
                    ),
                },
                "PROMPT_COMMAND" => match field {
                    Field::Static(text) => {
                        self.program(text, &ctx.nested(label.clone())?)?;
                    }
                    Field::Dynamic(d) => self.unchecked(
                        format!(
                            "`PROMPT_COMMAND` is set to text only known at run time: `{}`",
                            short(&d.shown)
                        ),
                        ctx,
                    ),
                },
                "BASH_ENV" | "ENV" => {
                    let content = match field {
                        Field::Dynamic(Dyn {
                            content: Some(content),
                            ..
                        }) => (**content).clone(),
                        Field::Static(path) if is_stdin_path(path) => stdin.clone(),
                        Field::Static(_) => continue,
                        Field::Dynamic(d) => {
                            self.unchecked(
                                format!(
                                    "`{name}` names a file only known at run time (`{}`), which \
                                     the shell runs at start",
                                    short(&d.shown)
                                ),
                                ctx,
                            );
                            continue;
                        }
                    };
                    self.stdin_script(&content, &label, Format::Shell, None, false, ctx)?;
                }
                _ if env::COMMAND_VARIABLES.contains(&name) => {
                    if let Field::Static(text) = field {
                        let inner = ctx.nested(label.clone())?.lenient();
                        self.program(text.trim_start_matches('|'), &inner)?;
                    }
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// A variable name given to a builtin (`read`, `printf -v`, `unset`, `test -v`…): bash
    /// evaluates a subscript in it as arithmetic, which runs substitutions in it.
    fn variable_name(&mut self, field: &Field, builtin: &str, ctx: &Ctx) -> Result<(), WalkError> {
        match field {
            Field::Static(name) => {
                if let Some((_, subscript)) = name.split_once('[') {
                    self.arithmetic(subscript.trim_end_matches(']'), false, ctx)?;
                }
            }
            Field::Dynamic(d) => self.unchecked(
                format!(
                    "`{builtin}` is given a variable name only known at run time (`{}`); bash \
                     evaluates a subscript in it as code",
                    short(&d.shown)
                ),
                ctx,
            ),
        }
        Ok(())
    }

    /// A value that bash may evaluate as arithmetic later (`x='a[$(cmd)]'; echo $((x))`): a
    /// substitution inside a subscript in it would run then.
    fn latent_code(&mut self, text: &str, ctx: &Ctx) -> Result<(), WalkError> {
        if text.contains('[') && (text.contains("$(") || text.contains('`')) {
            self.arithmetic(text, false, ctx)?;
        }
        Ok(())
    }

    /// Arithmetic text: substitutions in it (also inside subscripts) are walked, and the
    /// values of variables it names are judged as arithmetic too. `strict` text must parse.
    fn arithmetic(&mut self, expr: &str, strict: bool, ctx: &Ctx) -> Result<(), WalkError> {
        let inner = ctx.nested("arithmetic")?;
        match word::parse(expr, &self.options) {
            Ok(pieces) => {
                self.pieces_value(&pieces, true, &inner)?;
            }
            Err(e) if strict && (expr.contains("$(") || expr.contains('`')) => {
                return Err(self.word_error(e, ctx));
            }
            Err(_) => {}
        }
        // Variables named without `$` are evaluated as arithmetic in turn.
        let names: Vec<String> = identifiers(expr)
            .filter(|name| self.vars.contains_key(*name))
            .map(str::to_string)
            .collect();
        for name in names {
            let values = self.known_elements(&name);
            for value in values {
                if value.contains('[')
                    && (value.contains("$(") || value.contains('`'))
                    && value != expr
                {
                    self.arithmetic(&value, false, ctx)?;
                }
            }
        }
        Ok(())
    }

    fn word_error(&self, e: brush_parser::WordParseError, ctx: &Ctx) -> WalkError {
        WalkError::Parse {
            via: ctx.via.clone(),
            message: e.to_string(),
        }
    }

    /// The fields a word may become: each alternative is the list of fields it expands to.
    fn expand(&mut self, text: &str, ctx: &Ctx) -> Result<Vec<Vec<Field>>, WalkError> {
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
        let mut result: Vec<Vec<Field>> = vec![Vec::new()];
        for text in texts {
            let pieces = match word::parse(&text, &self.options) {
                Ok(pieces) => pieces,
                Err(e) if ctx.lenient => {
                    let _ = e;
                    vec![]
                }
                Err(e) => return Err(self.word_error(e, ctx)),
            };
            let alternatives = self.pieces_value(&pieces, false, ctx)?;
            let ifs = self.ifs.clone();
            let expanded: Vec<Vec<Field>> = alternatives
                .into_iter()
                .map(|parts| split_fields(parts, ifs.as_deref()))
                .collect();
            result = extend_each(&result, &expanded);
        }
        Ok(result)
    }

    /// The first field of a word (a redirection target: no splitting).
    fn expand_one(&mut self, text: &str, ctx: &Ctx) -> Result<Field, WalkError> {
        let alternatives = self.expand(text, ctx)?;
        Ok(alternatives
            .into_iter()
            .next()
            .and_then(|f| f.into_iter().next())
            .unwrap_or_else(|| Field::Static(String::new())))
    }

    /// A word expanded without splitting (a here-string), first alternative.
    fn expand_quoted(&mut self, text: &str, ctx: &Ctx) -> Result<Field, WalkError> {
        Ok(self
            .expand_assignment(text, ctx)?
            .into_iter()
            .next()
            .unwrap_or_else(|| Field::Static(String::new())))
    }

    /// A word expanded as an assignment value: no splitting or globbing; one field per
    /// alternative.
    fn expand_assignment(&mut self, text: &str, ctx: &Ctx) -> Result<Vec<Field>, WalkError> {
        let pieces = word::parse(text, &self.options).map_err(|e| self.word_error(e, ctx))?;
        let alternatives = self.pieces_value(&pieces, true, ctx)?;
        Ok(alternatives.into_iter().map(join_parts).collect())
    }

    /// Evaluates word pieces as far as they are known; walks substitutions inside. Each
    /// alternative is one way the word's parts may turn out.
    fn pieces_value(
        &mut self,
        pieces: &[word::WordPieceWithSource],
        quoted: bool,
        ctx: &Ctx,
    ) -> Result<Vec<Vec<Part>>, WalkError> {
        let mut alternatives: Vec<Vec<Part>> = vec![Vec::new()];
        for piece in pieces {
            let options = self.piece_value(&piece.piece, quoted, ctx)?;
            alternatives = extend_each(&alternatives, &options);
        }
        Ok(alternatives)
    }

    fn piece_value(
        &mut self,
        piece: &WordPiece,
        quoted: bool,
        ctx: &Ctx,
    ) -> Result<Vec<Vec<Part>>, WalkError> {
        let one = |part: Part| Ok(vec![vec![part]]);
        match piece {
            WordPiece::Text(s) | WordPiece::SingleQuotedText(s) => one(Part::Known(s.clone())),
            WordPiece::AnsiCQuotedText(s) => one(Part::Known(ansi_c(s))),
            WordPiece::EscapeSequence(s) => {
                let mut chars = s.chars();
                match (chars.next(), chars.as_str()) {
                    // A backslash-newline joins lines and leaves nothing.
                    (Some('\\'), "\n") => one(Part::Known(String::new())),
                    (Some('\\'), rest) if !rest.is_empty() => one(Part::Known(rest.to_string())),
                    _ => one(Part::Known(s.clone())),
                }
            }
            WordPiece::DoubleQuotedSequence(inner)
            | WordPiece::GettextDoubleQuotedSequence(inner) => {
                let alternatives = self.pieces_value(inner, true, ctx)?;
                // Inside quotes nothing splits.
                Ok(alternatives
                    .into_iter()
                    .map(|parts| {
                        parts
                            .into_iter()
                            .map(|p| match p {
                                Part::Break => {
                                    Part::Known(self.ifs.clone().unwrap_or_else(|| " ".into()))
                                }
                                Part::Splits(s) => Part::Known(s),
                                Part::Unknown {
                                    shown,
                                    maybe_empty,
                                    content,
                                    ..
                                } => Part::Unknown {
                                    shown,
                                    maybe_empty,
                                    splits: false,
                                    content,
                                },
                                other => other,
                            })
                            .collect()
                    })
                    .collect())
            }
            WordPiece::TildeExpansion(tilde) => {
                let home = match tilde {
                    word::TildeExpr::Home => {
                        let homes = self.home();
                        if homes.iter().all(Option::is_some) {
                            return Ok(homes
                                .into_iter()
                                .flatten()
                                .map(|h| vec![Part::Known(h)])
                                .collect());
                        }
                        None
                    }
                    word::TildeExpr::UserHome(user) => home_of(user),
                    word::TildeExpr::WorkingDir => match self.cwd.as_slice() {
                        [Some(cwd)] => Some(cwd.clone()),
                        _ => None,
                    },
                    _ => None,
                };
                match home {
                    Some(home) => one(Part::Known(home)),
                    None => one(Part::Unknown {
                        shown: "~".into(),
                        maybe_empty: false,
                        splits: false,
                        content: None,
                    }),
                }
            }
            WordPiece::ParameterExpansion(p) => self.parameter(p, quoted, ctx),
            WordPiece::CommandSubstitution(s) => {
                let printed = self.program(s, &ctx.nested("$(…)")?)?;
                Ok(vec![vec![substituted(printed, format!("$({s})"), quoted)]])
            }
            WordPiece::BackquotedCommandSubstitution(s) => {
                let printed = self.program(&unescape_backquoted(s), &ctx.nested("`…`")?)?;
                Ok(vec![vec![substituted(printed, format!("`{s}`"), quoted)]])
            }
            WordPiece::ArithmeticExpression(e) => {
                self.arithmetic(&e.value, true, ctx)?;
                one(Part::Unknown {
                    shown: format!("$(({}))", e.value),
                    maybe_empty: false,
                    splits: false,
                    content: None,
                })
            }
        }
    }

    /// A parameter expansion: its possible values, and substitutions nested in it walked.
    fn parameter(
        &mut self,
        p: &word::ParameterExpr,
        quoted: bool,
        ctx: &Ctx,
    ) -> Result<Vec<Vec<Part>>, WalkError> {
        use word::ParameterExpr as P;
        for nested in parameter_words(p) {
            if let Ok(pieces) = word::parse(&nested, &self.options) {
                self.pieces_value(&pieces, true, ctx)?;
            } else if nested.contains("$(") || nested.contains('`') {
                return Err(WalkError::Parse {
                    via: ctx.via.clone(),
                    message: format!("cannot parse `{nested}` in a parameter expansion"),
                });
            }
        }
        let unknown = |shown: String, maybe_empty: bool| Part::Unknown {
            shown,
            maybe_empty,
            splits: !quoted,
            content: None,
        };
        let (parameter, indirect) = match p {
            P::Parameter {
                parameter,
                indirect,
            } => (parameter, *indirect),
            P::UseDefaultValues {
                parameter,
                default_value,
                ..
            }
            | P::AssignDefaultValues {
                parameter,
                default_value,
                ..
            } => {
                let mut values = self.parameter_values(parameter, quoted);
                let default = match default_value {
                    Some(text) => {
                        let pieces = word::parse(text, &self.options)
                            .map_err(|e| self.word_error(e, ctx))?;
                        self.pieces_value(&pieces, quoted, ctx)?
                    }
                    None => vec![vec![Part::Known(String::new())]],
                };
                let set_and_full = values.iter().all(|v| {
                    matches!(v.as_slice(), [Part::Known(s) | Part::Splits(s)] if !s.is_empty())
                        || matches!(v.as_slice(), [Part::Elements(e)] if !e.is_empty())
                });
                if !set_and_full {
                    values.extend(default);
                }
                if let P::AssignDefaultValues { parameter, .. } = p
                    && let word::Parameter::Named(name) = parameter
                {
                    let known: Value = values
                        .iter()
                        .map(|parts| known_text(parts).map(|t| vec![t]))
                        .collect();
                    self.set_var(name, known, true);
                }
                return Ok(values);
            }
            P::IndicateErrorIfNullOrUnset { parameter, .. } => {
                // The shell stops on an empty value: what runs is never empty.
                let values = self.parameter_values(parameter, quoted);
                return Ok(values
                    .into_iter()
                    .map(|parts| {
                        parts
                            .into_iter()
                            .map(|part| match part {
                                Part::Unknown {
                                    shown,
                                    splits,
                                    content,
                                    ..
                                } => Part::Unknown {
                                    shown,
                                    maybe_empty: false,
                                    splits,
                                    content,
                                },
                                other => other,
                            })
                            .collect()
                    })
                    .collect());
            }
            P::UseAlternativeValue {
                alternative_value, ..
            } => {
                let mut values = vec![vec![Part::Known(String::new())]];
                if let Some(text) = alternative_value {
                    let pieces =
                        word::parse(text, &self.options).map_err(|e| self.word_error(e, ctx))?;
                    values.extend(self.pieces_value(&pieces, quoted, ctx)?);
                }
                return Ok(values);
            }
            P::ParameterLength { .. } => {
                return Ok(vec![vec![unknown(format!("${{{p}}}", p = "#…"), false)]]);
            }
            _ => {
                return Ok(vec![vec![unknown("${…}".into(), true)]]);
            }
        };
        if indirect {
            // `${!x}`: the value of `x` names a variable, subscript included.
            if let word::Parameter::Named(name) = parameter {
                let values = self.known_elements(name);
                for value in values {
                    self.variable_name(&Field::Static(value), "${!…}", ctx)?;
                }
            }
            return Ok(vec![vec![unknown(format!("${{!{parameter}}}"), true)]]);
        }
        if !quoted && is_ifs(parameter) {
            return Ok(vec![vec![Part::Break]]);
        }
        Ok(self.parameter_values(parameter, quoted))
    }

    /// The possible values of a parameter.
    fn parameter_values(&self, parameter: &word::Parameter, quoted: bool) -> Vec<Vec<Part>> {
        use word::{Parameter as Param, SpecialParameter as S};
        let shown = match parameter.to_string() {
            p if p.starts_with('$') => p,
            p => format!("${{{p}}}"),
        };
        let unknown = |maybe_empty: bool| Part::Unknown {
            shown: shown.clone(),
            maybe_empty,
            splits: !quoted,
            content: None,
        };
        let field_part = |field: &Field| match field {
            Field::Static(s) if quoted => Part::Known(s.clone()),
            Field::Static(s) => Part::Splits(s.clone()),
            Field::Dynamic(d) => Part::Unknown {
                shown: d.shown.clone(),
                maybe_empty: true,
                splits: !quoted,
                content: d.content.clone(),
            },
        };
        let scalar = |text: &str| {
            if quoted {
                Part::Known(text.to_string())
            } else {
                Part::Splits(text.to_string())
            }
        };
        match parameter {
            Param::Positional(0) | Param::Special(S::ShellName) => {
                match self.positional.last().and_then(|p| p.zero.clone()) {
                    Some(zero) => vec![vec![field_part(&zero)]],
                    None => vec![vec![unknown(false)]],
                }
            }
            Param::Positional(n) => match self.current_args() {
                Some(args) => vec![vec![match args.get(*n as usize - 1) {
                    Some(field) => field_part(field),
                    None => Part::Known(String::new()),
                }]],
                None => vec![vec![unknown(true)]],
            },
            Param::Special(S::AllPositionalParameters { concatenate }) => {
                match self.current_args() {
                    Some(args) if args.iter().all(|a| a.known().is_some()) => {
                        let values: Vec<String> = args
                            .iter()
                            .filter_map(Field::known)
                            .map(str::to_string)
                            .collect();
                        vec![vec![elements(values, *concatenate, quoted)]]
                    }
                    _ => vec![vec![unknown(true)]],
                }
            }
            Param::Special(S::PositionalParameterCount) => match self.current_args() {
                Some(args) => vec![vec![Part::Known(args.len().to_string())]],
                None => vec![vec![unknown(false)]],
            },
            Param::Special(_) => vec![vec![unknown(false)]],
            Param::Named(name) => match self.vars.get(name) {
                Some(values) => values
                    .iter()
                    .map(|alt| {
                        vec![match alt {
                            Some(elements) => scalar(elements.first().map_or("", String::as_str)),
                            None => unknown(true),
                        }]
                    })
                    .collect(),
                None => vec![vec![unknown(true)]],
            },
            Param::NamedWithIndex { name, index } => match self.vars.get(name) {
                Some(values) => {
                    let index = index.trim().parse::<usize>().ok();
                    let mut out = Vec::new();
                    for alt in values {
                        match (alt, index) {
                            (Some(elements), Some(i)) => {
                                out.push(vec![scalar(elements.get(i).map_or("", String::as_str))])
                            }
                            (Some(elements), None) => {
                                out.extend(elements.iter().map(|e| vec![scalar(e)]))
                            }
                            (None, _) => out.push(vec![unknown(true)]),
                        }
                    }
                    if out.is_empty() {
                        out.push(vec![Part::Known(String::new())]);
                    }
                    out
                }
                None => vec![vec![unknown(true)]],
            },
            Param::NamedWithAllIndices { name, concatenate } => match self.vars.get(name) {
                Some(values) => values
                    .iter()
                    .map(|alt| {
                        vec![match alt {
                            Some(e) => elements(e.clone(), *concatenate, quoted),
                            None => unknown(true),
                        }]
                    })
                    .collect(),
                None => vec![vec![unknown(true)]],
            },
        }
    }
}

/// Marks an array value kept in a field (see [`Walker::assignment_value`]).
const ARRAY_MARK: &str = "\0array\0";

fn assignment_name(assignment: &ast::Assignment) -> String {
    match &assignment.name {
        ast::AssignmentName::VariableName(name) => name.clone(),
        ast::AssignmentName::ArrayElementName(name, index) => format!("{name}[{index}]"),
    }
}

/// `prefix` (known text ending in `=`) followed by a process substitution, as one field.
fn glue(prefix: Field, substitution: Field) -> Field {
    let Field::Dynamic(sub) = substitution else {
        return prefix;
    };
    let mut parts = match &prefix {
        Field::Static(text) => vec![Piece::Text(text.clone())],
        Field::Dynamic(d) => d.parts.clone(),
    };
    parts.extend(sub.parts.iter().cloned());
    Field::Dynamic(Dyn {
        shown: format!("{}{}", prefix.shown(), sub.shown),
        parts,
        splits: false,
        content: sub.content,
    })
}

/// Whether the name part (before `=`) of a `declare` argument is only known at run time.
fn name_is_dynamic(word: &Dyn) -> bool {
    for part in &word.parts {
        match part {
            Piece::Text(text) if text.contains('=') => return false,
            Piece::Text(_) => {}
            Piece::Unknown { .. } => return true,
        }
    }
    false
}

/// `"$@"` and `"${a[@]}"` make one word per element; `"$*"` joins them.
fn elements(values: Vec<String>, concatenate: bool, quoted: bool) -> Part {
    match (concatenate && quoted, quoted) {
        (true, _) => Part::Known(values.join(" ")),
        (false, true) => Part::Elements(values),
        (false, false) => Part::Splits(values.join(" ")),
    }
}

/// The value of `$(…)`: its output without trailing newlines, when known.
fn substituted(printed: Option<String>, shown: String, quoted: bool) -> Part {
    match printed {
        Some(text) => {
            let text = text.trim_end_matches('\n').to_string();
            if quoted {
                Part::Known(text)
            } else {
                Part::Splits(text)
            }
        }
        None => Part::Unknown {
            shown,
            maybe_empty: true,
            splits: !quoted,
            content: None,
        },
    }
}

/// The text of parts that are all known.
fn known_text(parts: &[Part]) -> Option<String> {
    let mut text = String::new();
    for part in parts {
        match part {
            Part::Known(s) | Part::Splits(s) => text.push_str(s),
            Part::Elements(e) => text.push_str(&e.join(" ")),
            Part::Break => text.push(' '),
            Part::Unknown { .. } => return None,
        }
    }
    Some(text)
}

/// The text of parts as one value: `Ok` when known, `Err(shown)` when not.
fn text_of(parts: Vec<Part>) -> Result<String, String> {
    match join_parts(parts) {
        Field::Static(s) => Ok(s),
        Field::Dynamic(d) => Err(d.shown),
    }
}

/// Parts joined into one field, without splitting.
fn join_parts(parts: Vec<Part>) -> Field {
    let mut pieces = Vec::new();
    let mut shown = String::new();
    let mut content = None;
    let mut dynamic = false;
    for part in parts {
        match part {
            Part::Known(s) | Part::Splits(s) => {
                shown.push_str(&s);
                pieces.push(Piece::Text(s));
            }
            Part::Elements(e) => {
                let s = e.join(" ");
                shown.push_str(&s);
                pieces.push(Piece::Text(s));
            }
            Part::Break => {
                shown.push(' ');
                pieces.push(Piece::Text(" ".into()));
            }
            Part::Unknown {
                shown: s,
                maybe_empty,
                content: c,
                ..
            } => {
                shown.push_str(&s);
                pieces.push(Piece::Unknown { maybe_empty });
                dynamic = true;
                content = content.or(c);
            }
        }
    }
    if dynamic {
        Field::Dynamic(Dyn {
            shown,
            parts: merge_text(pieces),
            splits: false,
            content,
        })
    } else {
        Field::Static(shown)
    }
}

fn merge_text(pieces: Vec<Piece>) -> Vec<Piece> {
    let mut merged: Vec<Piece> = Vec::new();
    for piece in pieces {
        match (merged.last_mut(), piece) {
            (Some(Piece::Text(a)), Piece::Text(b)) => a.push_str(&b),
            (_, piece) => merged.push(piece),
        }
    }
    merged
}

/// Joins parts into fields, splitting known unquoted values at `ifs` and breaking at
/// unquoted `$IFS` and between elements.
fn split_fields(parts: Vec<Part>, ifs: Option<&str>) -> Vec<Field> {
    struct Builder {
        fields: Vec<Field>,
        pieces: Vec<Piece>,
        shown: String,
        dynamic: bool,
        splits: bool,
        content: Option<Box<Stdin>>,
        started: bool,
    }
    impl Builder {
        fn push_text(&mut self, s: &str) {
            self.shown.push_str(s);
            self.pieces.push(Piece::Text(s.to_string()));
            self.started = true;
        }
        fn flush(&mut self) {
            if self.started {
                let pieces = merge_text(std::mem::take(&mut self.pieces));
                let shown = std::mem::take(&mut self.shown);
                self.fields.push(if self.dynamic {
                    Field::Dynamic(Dyn {
                        shown,
                        parts: pieces,
                        splits: self.splits,
                        content: self.content.take(),
                    })
                } else {
                    Field::Static(shown)
                });
            }
            self.pieces.clear();
            self.shown.clear();
            self.dynamic = false;
            self.splits = false;
            self.content = None;
            self.started = false;
        }
    }
    let mut b = Builder {
        fields: Vec::new(),
        pieces: Vec::new(),
        shown: String::new(),
        dynamic: false,
        splits: false,
        content: None,
        started: false,
    };
    let mut only_vanishing = true;
    for part in parts {
        match part {
            Part::Known(s) => {
                b.push_text(&s);
                only_vanishing = false;
            }
            Part::Splits(s) => match ifs {
                Some(ifs) => {
                    let mut rest = s.as_str();
                    while let Some(at) = rest.find(|c| ifs.contains(c)) {
                        if at > 0 {
                            b.push_text(&rest[..at]);
                        }
                        b.flush();
                        rest = &rest[at + rest[at..].chars().next().map_or(1, char::len_utf8)..];
                    }
                    if !rest.is_empty() {
                        b.push_text(rest);
                    }
                }
                None => {
                    b.shown.push_str(&s);
                    b.pieces.push(Piece::Unknown { maybe_empty: true });
                    b.dynamic = true;
                    b.splits = true;
                    b.started = true;
                }
            },
            Part::Elements(values) => {
                let n = values.len();
                for (i, value) in values.into_iter().enumerate() {
                    b.push_text(&value);
                    if i + 1 < n {
                        b.flush();
                    }
                }
            }
            Part::Unknown {
                shown,
                maybe_empty,
                splits,
                content,
            } => {
                b.shown.push_str(&shown);
                b.pieces.push(Piece::Unknown { maybe_empty });
                b.dynamic = true;
                b.splits |= splits;
                b.content = b.content.take().or(content);
                b.started = true;
                only_vanishing = false;
            }
            Part::Break => b.flush(),
        }
    }
    b.flush();
    if b.fields.is_empty() && !only_vanishing {
        // An empty word (`''`) is still a word.
        b.fields.push(Field::Static(String::new()));
    }
    b.fields
}

/// Every combination of the words' alternatives, up to [`MAX_COMBINATIONS`].
fn combinations(words: Vec<Vec<Vec<Field>>>) -> Vec<Vec<Field>> {
    let mut result: Vec<Vec<Field>> = vec![Vec::new()];
    for alternatives in words {
        let next = extend_each(&result, &alternatives);
        if !next.is_empty() {
            result = next;
        }
    }
    result
}

/// Each of `prefixes` extended by each of `options` in turn (prefix-major), up to
/// [`MAX_COMBINATIONS`].
fn extend_each<T: Clone>(prefixes: &[Vec<T>], options: &[Vec<T>]) -> Vec<Vec<T>> {
    let mut next = Vec::new();
    for prefix in prefixes {
        for option in options {
            if next.len() >= MAX_COMBINATIONS {
                break;
            }
            next.push([prefix.clone(), option.clone()].concat());
        }
    }
    next
}

/// The name of the only command of `list` when it is a bare word (`true`, `:`).
fn constant_command(list: &ast::CompoundList) -> Option<&str> {
    let [ast::CompoundListItem(and_or, _)] = list.0.as_slice() else {
        return None;
    };
    if !and_or.additional.is_empty() {
        return None;
    }
    let [ast::Command::Simple(simple)] = and_or.first.seq.as_slice() else {
        return None;
    };
    if simple.prefix.is_some() || simple.suffix.is_some() {
        return None;
    }
    simple.word_or_name.as_ref().map(|w| w.value.as_str())
}

fn join_output(output: Option<String>, printed: Option<String>) -> Option<String> {
    match (output, printed) {
        (Some(mut a), Some(b)) => {
            a.push_str(&b);
            Some(a)
        }
        _ => None,
    }
}

fn dedup(values: Vec<Option<String>>) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    for v in values {
        if !out.contains(&v) {
            out.push(v);
        }
    }
    out
}

/// Identifiers in arithmetic text (names of variables it reads).
fn identifiers(text: &str) -> impl Iterator<Item = &str> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|s| {
            s.chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        })
}

/// What a command reads when its standard input is redirected from `field`.
fn stdin_of_file(field: &Field) -> Stdin {
    match field {
        Field::Dynamic(Dyn {
            content: Some(content),
            ..
        }) => (**content).clone(),
        Field::Static(path) if is_stdin_path(path) => Stdin::Unknown("standard input".into()),
        _ => Stdin::File,
    }
}

/// `/dev/stdin`, `/dev/fd/0`, `/proc/self/fd/0`, `-`: a script file that is the standard
/// input.
pub fn is_stdin_path(path: &str) -> bool {
    matches!(path, "-" | "/dev/stdin" | "/dev/fd/0")
        || (path.starts_with("/proc/") && path.ends_with("/fd/0"))
}

/// A command path that runs a program not known from its name: `/proc/self/exe` (the shell
/// itself), `/proc/<pid>/exe`, `/dev/fd/<n>`, `/proc/<pid>/fd/<n>`.
fn runs_unknown_program(name: &str, cwd: &[Option<String>], links: &[(String, String)]) -> bool {
    let normal = path::normalise(name, cwd.first().cloned().flatten().as_deref(), links)
        .unwrap_or_else(|| name.to_string());
    let parts: Vec<&str> = normal.split('/').filter(|p| !p.is_empty()).collect();
    matches!(
        parts.as_slice(),
        ["proc", _, "exe"] | ["proc", _, "fd", _] | ["dev", "fd", _]
    ) || matches!(parts.as_slice(), ["proc", _, "task", _, "exe"])
}

/// The home directory of `user`, from the password database.
fn home_of(user: &str) -> Option<String> {
    match nix::unistd::User::from_name(user) {
        Ok(Some(account)) => Some(account.dir.to_string_lossy().into_owned()),
        _ if user == "root" => Some("/root".into()),
        _ => None,
    }
}

/// A command shortened for messages.
fn short(text: &str) -> String {
    shortened(text, 80)
}

/// `text` on one line (runs of white space made one space), cut to `max` characters.
pub fn shortened(text: &str, max: usize) -> String {
    let line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if line.chars().count() <= max {
        line
    } else {
        format!("{}…", line.chars().take(max).collect::<String>())
    }
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
        // Defaults and alternatives are expanded (and walked) where they are used.
        P::UseDefaultValues { parameter, .. }
        | P::AssignDefaultValues { parameter, .. }
        | P::UseAlternativeValue { parameter, .. } => parameter,
        P::IndicateErrorIfNullOrUnset {
            parameter,
            error_message: v,
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

fn is_ifs(parameter: &word::Parameter) -> bool {
    matches!(parameter, word::Parameter::Named(name) if name == "IFS")
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

/// What a command prints, when it is known: `echo`, `printf`, `cat` and `tee` of known input,
/// `base64 -d` of known input.
fn printed(invocation: &Invocation, stdin: &Stdin) -> Option<String> {
    let args = invocation.args();
    let known: Option<Vec<&str>> = args.iter().map(Field::known).collect();
    let stdin_text = match stdin {
        Stdin::Known(text) => Some(text.clone()),
        Stdin::Null => Some(String::new()),
        _ => None,
    };
    match invocation.name()? {
        "echo" => {
            let known = known?;
            let flags = known
                .iter()
                .take_while(|a| {
                    a.len() > 1 && a.starts_with('-') && a[1..].chars().all(|c| "neE".contains(c))
                })
                .count();
            let newline = !known[..flags].iter().any(|f| f.contains('n'));
            let interpret = known[..flags]
                .iter()
                .rev()
                .find_map(|f| f.chars().rev().find(|c| *c == 'e' || *c == 'E'))
                == Some('e');
            let text = known[flags..].join(" ");
            let (mut text, stopped) = if interpret {
                escapes(&text, true)
            } else {
                (text, false)
            };
            if newline && !stopped {
                text.push('\n');
            }
            Some(text)
        }
        "printf" => {
            let known = known?;
            if known.first() == Some(&"-v") {
                return Some(String::new());
            }
            let known = if known.first() == Some(&"--") {
                &known[1..]
            } else {
                &known[..]
            };
            let (format, args) = known.split_first()?;
            printf(format, args)
        }
        "tee" => stdin_text,
        "cat" if known.as_ref().is_some_and(|k| k.iter().all(|a| *a == "-")) => stdin_text,
        "base64" => {
            let known = known?;
            let decode = known.iter().any(|a| {
                *a == "--decode" || (a.starts_with('-') && !a.starts_with("--") && a.contains('d'))
            });
            let files = known.iter().any(|a| !a.starts_with('-'));
            if !decode || files {
                return None;
            }
            let text = stdin_text?;
            String::from_utf8(base64_decode(&text)?).ok()
        }
        "true" | ":" => Some(String::new()),
        _ => None,
    }
}

/// `printf FORMAT ARGS…` for `%s`, `%b`, `%c`, `%d`-like and `%%`; `None` for others.
fn printf(format: &str, args: &[&str]) -> Option<String> {
    let mut out = String::new();
    let mut args = args.iter();
    loop {
        let mut consumed = false;
        let mut chars = format.chars().peekable();
        let mut literal = String::new();
        while let Some(c) = chars.next() {
            if c != '%' {
                literal.push(c);
                continue;
            }
            out.push_str(&escapes(&std::mem::take(&mut literal), false).0);
            // Flags and width are skipped: they change spacing, not words.
            let mut spec = String::new();
            while let Some(&n) = chars.peek() {
                if "-+ #0123456789.".contains(n) {
                    spec.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            match chars.next()? {
                '%' => out.push('%'),
                's' | 'd' | 'i' | 'u' | 'x' | 'X' | 'o' | 'f' | 'g' | 'e' => {
                    out.push_str(args.next().copied().unwrap_or(""));
                    consumed = true;
                }
                'b' => {
                    out.push_str(&escapes(args.next().copied().unwrap_or(""), true).0);
                    consumed = true;
                }
                'c' => {
                    out.extend(args.next().and_then(|a| a.chars().next()));
                    consumed = true;
                }
                _ => return None,
            }
        }
        out.push_str(&escapes(&literal, false).0);
        if !consumed || args.len() == 0 {
            return Some(out);
        }
    }
}

/// Decodes base64 (standard alphabet, whitespace ignored).
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buffer = 0u32;
    let mut bits = 0;
    for c in text.bytes().filter(|b| !b.is_ascii_whitespace()) {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => break,
            _ => return None,
        };
        buffer = (buffer << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
            buffer &= (1 << bits) - 1;
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(source: &str) -> Vec<String> {
        walk(source, &Start::default())
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
    fn braces_ifs_and_known_values_make_words() {
        assert!(names("{rm,-rf,/}").contains(&"rm -rf /".to_string()));
        assert_eq!(names("rm${IFS}-rf${IFS}/"), ["rm -rf /"]);
        assert!(names("X='-rf /'; rm $X").contains(&"rm -rf /".to_string()));
        assert!(names("d=/; rm -rf \"$d\"").contains(&"rm -rf /".to_string()));
        assert!(names("sh -c 'rm -rf \"$1\"' _ /").contains(&"rm -rf /".to_string()));
        assert!(names("rm -rf $(echo /)").contains(&"rm -rf /".to_string()));
        let found = names("for d in /a /b; do rm -rf \"$d\"; done");
        assert!(found.contains(&"rm -rf /b".to_string()), "{found:?}");
    }

    #[test]
    fn run_time_words_are_dynamic() {
        let walked = walk("$CMD -rf ~ \"$(date)\"", &Start::default()).expect("parses");
        let fields = &walked.invocations.last().expect("one").fields;
        assert!(matches!(fields[0], Field::Dynamic(_)));
        assert_eq!(fields[1], Field::Static("-rf".into()));
        assert!(matches!(fields[2], Field::Dynamic(_)));
    }

    #[test]
    fn a_self_calling_function_in_a_pipeline_is_a_fork_bomb() {
        let bombs = |s: &str| walk(s, &Start::default()).expect("parses").fork_bombs.len();
        assert!(bombs(":(){ :|:& };:") >= 1);
        assert!(bombs("b() { b | b & }; b") >= 1);
        assert!(bombs("while :; do sleep 1 & done") >= 1);
        assert_eq!(bombs("f() { echo hi; }; f | cat"), 0);
        assert_eq!(bombs("while sleep 1; do date & done"), 0);
    }

    #[test]
    fn deep_nesting_and_bad_syntax_are_errors() {
        let mut cmd = "true".to_string();
        for _ in 0..=MAX_DEPTH {
            cmd = format!("$({cmd})");
        }
        let start = Start::default();
        assert!(matches!(walk(&cmd, &start), Err(WalkError::TooDeep { .. })));
        assert!(matches!(
            walk("if true; then", &start),
            Err(WalkError::Parse { .. })
        ));
        assert!(matches!(
            walk("sh -c 'f() {'", &start),
            Err(WalkError::Parse { .. })
        ));
    }

    #[test]
    fn unreadable_code_is_recorded() {
        let unchecked = |s: &str| walk(s, &Start::default()).expect("parses").unchecked.len();
        assert_eq!(unchecked("curl -s x | sh"), 1);
        assert_eq!(unchecked("eval \"$X\""), 1);
        assert_eq!(unchecked("echo hi | sh"), 0);
        assert_eq!(unchecked("bash script.sh"), 0);
    }

    #[test]
    fn printf_echo_and_base64_output_is_known() {
        assert_eq!(printf("%s-%s\\n", &["a", "b"]).as_deref(), Some("a-b\n"));
        assert_eq!(printf("%b", &["\\x72m"]).as_deref(), Some("rm"));
        assert_eq!(printf("%s\\n", &["a", "b"]).as_deref(), Some("a\nb\n"));
        assert_eq!(base64_decode("cm0gLXJmIC8K"), Some(b"rm -rf /\n".to_vec()));
    }
}
