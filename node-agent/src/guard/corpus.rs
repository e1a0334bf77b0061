//! Runs the guard's corpus (`corpus.txt`): attempts the default rules must refuse, naming the rule, and ordinary commands they must let through.

use super::*;

/// One corpus entry.
#[derive(Debug)]
struct Entry {
    line: usize,
    /// `Some(rule)`: must be refused by `rule` (`host` for any host rule); `None`: allowed.
    refuse: Option<String>,
    command: String,
    env: Vec<(String, String)>,
    cwd: Option<String>,
    /// Lines of the host's `[guard]` table.
    host: Vec<String>,
}

fn entries() -> Vec<Entry> {
    let text = include_str!("corpus.txt");
    let mut entries: Vec<Entry> = Vec::new();
    let mut env = Vec::new();
    let mut cwd = None;
    let mut host: Vec<String> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line_no = n + 1;
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix('>') {
            let entry = entries.last_mut().expect("a continuation follows an entry");
            entry.command.push('\n');
            entry
                .command
                .push_str(rest.strip_prefix(' ').unwrap_or(rest));
            continue;
        }
        let (word, rest) = line.split_once(' ').unwrap_or((line, ""));
        match word {
            "@env" => {
                let (name, value) = rest.split_once('=').expect("@env NAME=VALUE");
                env.push((name.to_string(), value.to_string()));
            }
            "@cwd" => cwd = Some(rest.to_string()),
            "@host" if rest.is_empty() => host.clear(),
            "@host" => host.push(rest.to_string()),
            "refuse" => {
                let (rule, command) = rest.split_once(' ').expect("refuse RULE COMMAND");
                entries.push(Entry {
                    line: line_no,
                    refuse: Some(rule.to_string()),
                    command: command.to_string(),
                    env: std::mem::take(&mut env),
                    cwd: cwd.take(),
                    host: host.clone(),
                });
            }
            "allow" => entries.push(Entry {
                line: line_no,
                refuse: None,
                command: rest.to_string(),
                env: std::mem::take(&mut env),
                cwd: cwd.take(),
                host: host.clone(),
            }),
            other => panic!("corpus.txt:{line_no}: unknown entry `{other}`"),
        }
    }
    entries
}

fn host_config(lines: &[String]) -> GuardConfig {
    let table: toml::Table = lines.join("\n").parse().expect("host lines are TOML");
    let mut config = GuardConfig::default();
    let problems = config.read_toml(&toml::Value::Table(table), "corpus.txt");
    assert!(problems.is_empty(), "{problems:?}");
    assert!(config.problems().is_empty(), "{:?}", config.problems());
    config
}

#[test]
fn the_corpus_is_refused_by_the_named_rules_and_ordinary_commands_pass() {
    let entries = entries();
    let mut failures = Vec::new();
    let (mut refusals, mut refused_right, mut ordinary, mut allowed) = (0, 0, 0, 0);
    for entry in &entries {
        let guard = Guard::new(&host_config(&entry.host));
        let result = guard.check_job(&Job {
            command: &entry.command,
            env: entry.env.clone(),
            known: Vec::new(),
            cwd: entry.cwd.clone(),
        });
        match (&entry.refuse, &result) {
            (Some(want), Err(e))
                if e.rule() == want || (want == "host" && e.rule().starts_with("host rule")) =>
            {
                refusals += 1;
                refused_right += 1;
            }
            (Some(want), got) => {
                refusals += 1;
                failures.push(format!(
                    "corpus.txt:{}: `{}` must be refused by {want}, got {got:?}",
                    entry.line, entry.command
                ));
            }
            (None, Ok(())) => {
                ordinary += 1;
                allowed += 1;
            }
            (None, Err(e)) => {
                ordinary += 1;
                failures.push(format!(
                    "corpus.txt:{}: `{}` must be allowed, got: {e}",
                    entry.line, entry.command
                ));
            }
        }
    }
    eprintln!(
        "corpus: {refused_right} of {refusals} attempts refused by the right rule, \
         {allowed} of {ordinary} ordinary commands allowed"
    );
    assert!(
        failures.is_empty(),
        "{} corpus entries failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
