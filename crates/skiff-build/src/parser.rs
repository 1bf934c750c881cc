//! Text → [`Dockerfile`], following BuildKit's `frontend/dockerfile/parser`
//! for the line structure and `instructions` for each instruction's syntax.

use crate::ast::{
    Command, CommandLine, Directives, Dockerfile, Flag, Healthcheck, HealthcheckOptions, Heredoc,
    Instruction, KeyValue,
};
use crate::error::{ParseError, ParseErrorKind};
use crate::lex::split_words;

type Result<T> = std::result::Result<T, ParseError>;

/// Parses a whole Dockerfile.
///
/// Besides each instruction's own syntax this checks the file's shape: at
/// least one FROM, and nothing but ARG before the first one.
pub fn parse(text: &str) -> Result<Dockerfile> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let lines: Vec<&str> = text
        .split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .collect();
    // The last line number, not counting the empty "line" after a final
    // newline: where errors about the whole file point.
    let last_line = match lines.last() {
        Some(&"") => lines.len() - 1,
        _ => lines.len(),
    };
    let directives = parse_directives(&lines)?;
    let escape = directives.escape;

    let mut instructions = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let first = lines[i];
        let start = i + 1;
        if is_blank_or_comment(first) {
            i += 1;
            continue;
        }
        // Join continuation lines. Comment and blank lines inside a
        // continuation are skipped, as Docker does.
        let (logical, mut more) = trim_continuation(first.trim_start(), escape);
        let mut logical = logical.to_string();
        while more && i + 1 < lines.len() {
            i += 1;
            let line = lines[i];
            if is_blank_or_comment(line) {
                continue;
            }
            let (part, cont) = trim_continuation(line, escape);
            logical.push_str(part);
            more = cont;
        }
        let (keyword, rest) = split_keyword(&logical);
        let keyword_upper = keyword.to_ascii_uppercase();

        // Heredoc bodies follow the (joined) instruction line.
        let mut heredocs = Vec::new();
        if matches!(keyword_upper.as_str(), "RUN" | "COPY" | "ADD") {
            for marker in heredoc_markers(rest, escape) {
                let mut content = String::new();
                let mut terminated = false;
                while i + 1 < lines.len() {
                    i += 1;
                    let line = lines[i];
                    let candidate = if marker.chomp {
                        line.trim_start_matches('\t')
                    } else {
                        line
                    };
                    if candidate == marker.name {
                        terminated = true;
                        break;
                    }
                    content.push_str(if marker.chomp { candidate } else { line });
                    content.push('\n');
                }
                if !terminated {
                    return Err(ParseError {
                        line: last_line,
                        kind: ParseErrorKind::UnterminatedHeredoc {
                            name: marker.name,
                            start,
                        },
                    });
                }
                heredocs.push(Heredoc { content, ..marker });
            }
        }
        let end = i + 1;
        instructions.push(parse_instruction(
            keyword, rest, heredocs, start, end, escape,
        )?);
        i += 1;
    }

    check_shape(&instructions, last_line)?;
    Ok(Dockerfile {
        directives,
        instructions,
    })
}

/// Only ARG may precede the first FROM, and there must be a FROM.
fn check_shape(instructions: &[Instruction], last_line: usize) -> Result<()> {
    for inst in instructions {
        match inst.command {
            Command::From { .. } => return Ok(()),
            Command::Arg(_) => {}
            ref other => {
                return Err(ParseError {
                    line: inst.line,
                    kind: ParseErrorKind::BeforeFrom(other.keyword()),
                })
            }
        }
    }
    Err(ParseError {
        line: last_line.max(1),
        kind: ParseErrorKind::NoFrom,
    })
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// Strips a trailing escape character (optionally followed by spaces or
/// tabs); the bool says the instruction continues on the next line.
fn trim_continuation(line: &str, escape: char) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    match trimmed.strip_suffix(escape) {
        Some(head) => (head, true),
        None => (line, false),
    }
}

fn split_keyword(line: &str) -> (&str, &str) {
    let line = line.trim();
    match line.find(char::is_whitespace) {
        Some(at) => (&line[..at], line[at..].trim()),
        None => (line, ""),
    }
}

/// Reads the directives at the very top of the file. The first line that
/// is not a well-formed `# key=value` of a known directive ends them (an
/// unknown directive is just a comment and ends them too).
fn parse_directives(lines: &[&str]) -> Result<Directives> {
    let mut d = Directives::default();
    let mut seen: Vec<String> = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some((key, value)) = directive(line) else {
            break;
        };
        let key = key.to_ascii_lowercase();
        if !matches!(key.as_str(), "syntax" | "escape" | "check") {
            break;
        }
        let err = |msg: String| ParseError {
            line: n + 1,
            kind: ParseErrorKind::Syntax(msg),
        };
        if seen.contains(&key) {
            return Err(err(format!("only one {key} parser directive can be used")));
        }
        seen.push(key.clone());
        match key.as_str() {
            "escape" => {
                d.escape = match value {
                    "\\" => '\\',
                    "`" => '`',
                    other => {
                        return Err(err(format!(
                            "invalid escape token '{other}' does not match ` or \\"
                        )))
                    }
                }
            }
            "syntax" => d.syntax = Some(value.to_string()),
            _ => d.check = Some(value.to_string()),
        }
    }
    Ok(d)
}

/// `#\s*key\s*=\s*value` → (key, value).
fn directive(line: &str) -> Option<(&str, &str)> {
    let rest = line.strip_prefix('#')?.trim_start();
    let key_len = rest
        .char_indices()
        .find(|&(i, c)| !(c.is_ascii_alphabetic() || (i > 0 && c.is_ascii_digit())))
        .map(|(i, _)| i)
        .unwrap_or(rest.len());
    if key_len == 0 {
        return None;
    }
    let (key, rest) = rest.split_at(key_len);
    let value = rest.trim_start().strip_prefix('=')?.trim();
    (!value.is_empty()).then_some((key, value))
}

/// Heredoc markers on an instruction line (`<<EOF`, `<<-EOF`, `<<"EOF"`,
/// `3<<EOF`), in order; the bodies are filled in by the caller.
fn heredoc_markers(rest: &str, escape: char) -> Vec<Heredoc> {
    split_words(rest, escape)
        .iter()
        .filter_map(|w| heredoc_marker(w))
        .collect()
}

fn heredoc_marker(word: &str) -> Option<Heredoc> {
    let at = word.find("<<")?;
    let (fd, rest) = (&word[..at], &word[at + 2..]);
    if !fd.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let (chomp, rest) = match rest.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, rest),
    };
    if rest.is_empty() || rest.contains('<') {
        return None;
    }
    let quoted = rest.contains(['\'', '"']);
    let name: String = rest.chars().filter(|c| *c != '\'' && *c != '"').collect();
    if name.is_empty() {
        return None;
    }
    Some(Heredoc {
        name,
        content: String::new(),
        expand: !quoted,
        chomp,
        fd: fd.parse().ok(),
    })
}

/// Which flags an instruction accepts; `true` marks a boolean flag.
fn allowed_flags(keyword: &str) -> &'static [(&'static str, bool)] {
    match keyword {
        "FROM" => &[("platform", false)],
        "RUN" => &[("mount", false), ("network", false), ("security", false)],
        "COPY" => &[
            ("from", false),
            ("chown", false),
            ("chmod", false),
            ("link", true),
            ("parents", true),
            ("exclude", false),
        ],
        "ADD" => &[
            ("chown", false),
            ("chmod", false),
            ("link", true),
            ("keep-git-dir", true),
            ("checksum", false),
            ("exclude", false),
            ("unpack", true),
        ],
        "HEALTHCHECK" => &[
            ("interval", false),
            ("timeout", false),
            ("start-period", false),
            ("start-interval", false),
            ("retries", false),
        ],
        _ => &[],
    }
}

/// Splits leading `--flag[=value]` words off (BuildKit
/// `extractBuilderFlags`: quotes removed, `\` escapes, `--` ends flags).
fn extract_flags(rest: &str) -> (Vec<String>, &str) {
    let mut words = Vec::new();
    let mut s = rest;
    loop {
        let t = s.trim_start();
        if !t.starts_with("--") {
            return (words, t);
        }
        let mut word = String::new();
        let mut quote: Option<char> = None;
        let mut end = t.len();
        let mut chars = t.char_indices();
        while let Some((i, c)) = chars.next() {
            match quote {
                None if c.is_whitespace() => {
                    end = i;
                    break;
                }
                None if c == '\'' || c == '"' => quote = Some(c),
                Some(q) if c == q => quote = None,
                _ if c == '\\' => {
                    if let Some((_, n)) = chars.next() {
                        word.push(n);
                    }
                }
                _ => word.push(c),
            }
        }
        s = &t[end..];
        if word == "--" {
            return (words, s.trim_start());
        }
        words.push(word);
    }
}

fn parse_flags(keyword: &'static str, words: Vec<String>, line: usize) -> Result<Vec<Flag>> {
    let allowed = allowed_flags(keyword);
    let mut flags = Vec::new();
    for word in words {
        let body = word.trim_start_matches('-');
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (body.to_string(), None),
        };
        let err = |kind| ParseError { line, kind };
        let Some(&(_, boolean)) = allowed.iter().find(|(n, _)| *n == name) else {
            return Err(err(ParseErrorKind::UnknownFlag {
                instruction: keyword,
                flag: name,
            }));
        };
        match (&value, boolean) {
            (None, false) => {
                return Err(err(ParseErrorKind::Syntax(format!(
                    "missing a value on flag --{name}"
                ))))
            }
            (Some(v), true) if v != "true" && v != "false" => {
                return Err(err(ParseErrorKind::Syntax(format!(
                    "expecting boolean value for flag --{name}, not: {v}"
                ))))
            }
            _ => {}
        }
        // Only the list-valued flags may repeat, as in BuildKit.
        let repeatable = matches!(name.as_str(), "mount" | "exclude");
        if !repeatable && flags.iter().any(|f: &Flag| f.name == name) {
            return Err(err(ParseErrorKind::Syntax(format!(
                "duplicate flag specified: --{name}"
            ))));
        }
        flags.push(Flag { name, value });
    }
    Ok(flags)
}

fn keyword_of(upper: &str) -> Option<&'static str> {
    const ALL: [&str; 18] = [
        "FROM",
        "RUN",
        "CMD",
        "LABEL",
        "MAINTAINER",
        "EXPOSE",
        "ENV",
        "ADD",
        "COPY",
        "ENTRYPOINT",
        "VOLUME",
        "USER",
        "WORKDIR",
        "ARG",
        "ONBUILD",
        "STOPSIGNAL",
        "HEALTHCHECK",
        "SHELL",
    ];
    ALL.into_iter().find(|k| *k == upper)
}

fn parse_instruction(
    keyword: &str,
    rest: &str,
    heredocs: Vec<Heredoc>,
    line: usize,
    end_line: usize,
    escape: char,
) -> Result<Instruction> {
    let err = |kind| ParseError { line, kind };
    let syntax = |msg: String| err(ParseErrorKind::Syntax(msg));
    let Some(kw) = keyword_of(&keyword.to_ascii_uppercase()) else {
        return Err(err(ParseErrorKind::UnknownInstruction(
            keyword.to_ascii_uppercase(),
        )));
    };
    let (flag_words, rest) = extract_flags(rest);
    let flags = parse_flags(kw, flag_words, line)?;
    if rest.is_empty() {
        return Err(err(match kw {
            "FROM" => ParseErrorKind::FromWithoutImage,
            kw => ParseErrorKind::MissingArgument(kw),
        }));
    }
    let command =
        match kw {
            "FROM" => {
                let words: Vec<&str> = rest.split_whitespace().collect();
                match words.as_slice() {
                    [image] => Command::From {
                        image: image.to_string(),
                        name: None,
                    },
                    [image, as_, name] if as_.eq_ignore_ascii_case("as") => Command::From {
                        image: image.to_string(),
                        name: Some(name.to_ascii_lowercase()),
                    },
                    _ => return Err(syntax("FROM expects IMAGE or IMAGE AS NAME".to_string())),
                }
            }
            "RUN" => Command::Run(command_line(rest)),
            "CMD" => Command::Cmd(command_line(rest)),
            "ENTRYPOINT" => Command::Entrypoint(command_line(rest)),
            "SHELL" => match json_array(rest) {
                Some(words) if !words.is_empty() => Command::Shell(words),
                _ => return Err(syntax(
                    "SHELL requires the arguments to be in JSON form, e.g. [\"/bin/sh\", \"-c\"]"
                        .to_string(),
                )),
            },
            "ENV" => Command::Env(name_values("ENV", rest, escape).map_err(syntax)?),
            "LABEL" => Command::Label(name_values("LABEL", rest, escape).map_err(syntax)?),
            "ARG" => Command::Arg(
                split_words(rest, escape)
                    .into_iter()
                    .map(|w| match w.split_once('=') {
                        Some((k, v)) => KeyValue {
                            key: k.to_string(),
                            value: Some(v.to_string()),
                        },
                        None => KeyValue {
                            key: w,
                            value: None,
                        },
                    })
                    .collect(),
            ),
            "MAINTAINER" => Command::Maintainer(rest.to_string()),
            "USER" => Command::User(rest.to_string()),
            "WORKDIR" => Command::Workdir(rest.to_string()),
            "STOPSIGNAL" => Command::Stopsignal(rest.to_string()),
            "EXPOSE" => Command::Expose(rest.split_whitespace().map(String::from).collect()),
            "VOLUME" => Command::Volume(json_or_words(rest)),
            "ADD" | "COPY" => {
                let mut words = json_or_words(rest);
                let dest = match words.pop() {
                    Some(d) if !words.is_empty() || !heredocs.is_empty() => d,
                    _ => {
                        return Err(syntax(format!(
                            "{kw} requires at least two arguments: source(s) and destination"
                        )))
                    }
                };
                // Heredoc markers are sources whose content is inline.
                let sources: Vec<String> = words
                    .into_iter()
                    .filter(|w| heredocs.is_empty() || heredoc_marker(w).is_none())
                    .collect();
                if kw == "ADD" {
                    Command::Add { sources, dest }
                } else {
                    Command::Copy { sources, dest }
                }
            }
            "HEALTHCHECK" => Command::Healthcheck(healthcheck(rest, &flags).map_err(syntax)?),
            "ONBUILD" => {
                let (sub, sub_rest) = split_keyword(rest);
                let upper = sub.to_ascii_uppercase();
                if matches!(upper.as_str(), "ONBUILD" | "FROM" | "MAINTAINER") {
                    return Err(syntax(format!(
                        "{upper} isn't allowed as an ONBUILD trigger"
                    )));
                }
                let trigger = parse_instruction(sub, sub_rest, Vec::new(), line, end_line, escape)?;
                Command::Onbuild(Box::new(trigger))
            }
            _ => return Err(err(ParseErrorKind::UnknownInstruction(kw.to_string()))),
        };
    Ok(Instruction {
        line,
        end_line,
        flags,
        heredocs,
        command,
    })
}

/// A JSON array of strings, or None (Docker then falls back to shell form).
fn json_array(rest: &str) -> Option<Vec<String>> {
    if !rest.starts_with('[') {
        return None;
    }
    serde_json::from_str(rest).ok()
}

fn command_line(rest: &str) -> CommandLine {
    match json_array(rest) {
        Some(words) => CommandLine::Exec(words),
        None => CommandLine::Shell(rest.to_string()),
    }
}

fn json_or_words(rest: &str) -> Vec<String> {
    json_array(rest).unwrap_or_else(|| rest.split_whitespace().map(String::from).collect())
}

/// ENV and LABEL: `K=V K2="v 2"` pairs, or the legacy `K the rest` form.
fn name_values(kw: &str, rest: &str, escape: char) -> std::result::Result<Vec<KeyValue>, String> {
    let words = split_words(rest, escape);
    let Some(first) = words.first() else {
        return Err(format!("{kw} requires at least one argument"));
    };
    if !first.contains('=') {
        let (key, value) = match rest.find(char::is_whitespace) {
            Some(at) => (&rest[..at], rest[at..].trim()),
            None => return Err(format!("{kw} names must be followed by =value or a value")),
        };
        return Ok(vec![KeyValue {
            key: key.to_string(),
            value: Some(value.to_string()),
        }]);
    }
    words
        .into_iter()
        .map(|w| match w.split_once('=') {
            Some(("", _)) => Err(format!("{kw} names can not be blank")),
            Some((k, v)) => Ok(KeyValue {
                key: k.to_string(),
                value: Some(v.to_string()),
            }),
            None => Err(format!(
                "{kw} {w}: expected name=value (cannot mix with the legacy `{kw} name value` form)"
            )),
        })
        .collect()
}

fn healthcheck(rest: &str, flags: &[Flag]) -> std::result::Result<Healthcheck, String> {
    let (kind, cmd) = split_keyword(rest);
    if kind.eq_ignore_ascii_case("NONE") {
        if !cmd.is_empty() || !flags.is_empty() {
            return Err("HEALTHCHECK NONE takes no arguments".to_string());
        }
        return Ok(Healthcheck::None);
    }
    if !kind.eq_ignore_ascii_case("CMD") {
        return Err(format!("unknown type {kind:?} in HEALTHCHECK (try CMD)"));
    }
    if cmd.is_empty() {
        return Err("HEALTHCHECK CMD requires a command".to_string());
    }
    let mut options = HealthcheckOptions::default();
    for flag in flags {
        let value = flag.value.as_deref().unwrap_or("");
        let duration = || {
            go_duration_ms(value)
                .ok_or_else(|| format!("invalid duration for --{}: {value:?}", flag.name))
        };
        match flag.name.as_str() {
            "interval" => options.interval_ms = Some(duration()?),
            "timeout" => options.timeout_ms = Some(duration()?),
            "start-period" => options.start_period_ms = Some(duration()?),
            "start-interval" => options.start_interval_ms = Some(duration()?),
            _ => {
                options.retries = Some(
                    value
                        .parse()
                        .map_err(|_| format!("invalid --retries: {value:?}"))?,
                )
            }
        }
    }
    Ok(Healthcheck::Cmd {
        options,
        command: command_line(cmd),
    })
}

/// A Go `time.ParseDuration` string ("30s", "1m30s", "500ms", "0") in
/// milliseconds.
fn go_duration_ms(s: &str) -> Option<u64> {
    if s == "0" {
        return Some(0);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let factor = match &rest[..unit_len] {
            "ns" => 1e-6,
            "us" | "µs" => 1e-3,
            "ms" => 1.0,
            "s" => 1e3,
            "m" => 60e3,
            "h" => 3600e3,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += number * factor;
    }
    Some(total.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(go_duration_ms("30s"), Some(30_000));
        assert_eq!(go_duration_ms("1m30s"), Some(90_000));
        assert_eq!(go_duration_ms("1.5s"), Some(1_500));
        assert_eq!(go_duration_ms("0"), Some(0));
        assert_eq!(go_duration_ms("10"), None);
        assert_eq!(go_duration_ms("5x"), None);
    }

    #[test]
    fn flags_are_unquoted() {
        let (words, rest) =
            extract_flags(r#"--mount=type=cache,target="/root/.cache" --network=none pip install"#);
        assert_eq!(
            words,
            vec!["--mount=type=cache,target=/root/.cache", "--network=none"]
        );
        assert_eq!(rest, "pip install");
        let (words, rest) = extract_flags("-- --not-a-flag");
        assert!(words.is_empty());
        assert_eq!(rest, "--not-a-flag");
    }

    #[test]
    fn directive_lines() {
        assert_eq!(
            directive("# syntax=docker/dockerfile:1"),
            Some(("syntax", "docker/dockerfile:1"))
        );
        assert_eq!(directive("#escape = `"), Some(("escape", "`")));
        assert_eq!(directive("# just a comment"), None);
        assert_eq!(directive(" # escape=`"), None);
    }

    #[test]
    fn heredoc_words() {
        let h = heredoc_marker("<<-\"EOT\"").unwrap();
        assert_eq!((h.name.as_str(), h.chomp, h.expand), ("EOT", true, false));
        let h = heredoc_marker("3<<EOF").unwrap();
        assert_eq!(h.fd, Some(3));
        assert!(heredoc_marker("a<<b").is_none());
        assert!(heredoc_marker("<<").is_none());
    }

    #[test]
    fn case_insensitive_and_line_numbers() {
        let df = parse("from alpine\n\nrun echo hi \\\n  there\nCmd [\"sh\"]\n").unwrap();
        let lines: Vec<_> = df
            .instructions
            .iter()
            .map(|i| (i.line, i.end_line))
            .collect();
        assert_eq!(lines, vec![(1, 1), (3, 4), (5, 5)]);
        assert_eq!(
            df.instructions[1].command,
            Command::Run(CommandLine::Shell("echo hi   there".to_string()))
        );
    }

    #[test]
    fn invalid_json_falls_back_to_shell() {
        let df = parse("FROM a\nCMD [\"python\", app.py]\n").unwrap();
        assert_eq!(
            df.instructions[1].command,
            Command::Cmd(CommandLine::Shell("[\"python\", app.py]".to_string()))
        );
    }

    #[test]
    fn directives_only_at_the_top() {
        let df = parse("# unknown=x\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        let df = parse("\n# escape=`\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '\\');
        let df = parse("# Escape = `\n# syntax=x\nFROM a\n").unwrap();
        assert_eq!(df.directives.escape, '`');
        assert_eq!(df.directives.syntax.as_deref(), Some("x"));
        let err = parse("# escape=`\n# escape=\\\nFROM a\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dockerfile:2: only one escape parser directive can be used"
        );
    }

    #[test]
    fn crlf_and_bom() {
        let df = parse("\u{feff}FROM a\r\nRUN x \\\r\n  y\r\n").unwrap();
        assert_eq!(
            df.instructions[1].command,
            Command::Run(CommandLine::Shell("x   y".to_string()))
        );
    }

    #[test]
    fn repeatable_and_boolean_flags() {
        let df = parse("FROM a\nRUN --mount=type=cache,target=/a --mount=type=secret,id=b x\nCOPY --link=false a b\n").unwrap();
        assert_eq!(df.instructions[1].flags.len(), 2);
        assert_eq!(df.instructions[2].flag("link"), Some("false"));
        let err = parse("FROM a\nCOPY --link=maybe a b\n").unwrap_err();
        assert!(err.to_string().contains("expecting boolean"), "{err}");
        let err = parse("FROM a\nCMD --help\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Dockerfile:2: unknown flag for CMD: --help"
        );
    }

    #[test]
    fn heredoc_markers_only_for_run_copy_add() {
        let df = parse("FROM a\nENV X=<<EOF\nRUN cat <<EOF\nbody\nEOF\n").unwrap();
        assert!(df.instructions[1].heredocs.is_empty());
        assert_eq!(df.instructions[2].heredocs[0].content, "body\n");
        assert_eq!(
            (df.instructions[2].line, df.instructions[2].end_line),
            (3, 5)
        );
    }
}
