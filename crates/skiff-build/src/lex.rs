//! Docker's shell-word processing (BuildKit `frontend/dockerfile/shell`),
//! plus the raw word splitting the parser uses.
//!
//! This is not a shell: there is no command substitution, globbing or field
//! splitting. A word is scanned once; quotes are removed, escapes applied
//! and `$` references replaced.

use std::collections::{BTreeMap, HashMap};

use crate::error::ExpandError;

/// Where `expand` looks variables up.
pub trait Lookup {
    fn lookup(&self, name: &str) -> Option<&str>;
}

impl Lookup for HashMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for BTreeMap<String, String> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name).map(String::as_str)
    }
}

impl Lookup for [(String, String)] {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Expands one word with the default escape character `\`.
///
/// `$V` and `${V}` substitute (unset → empty); `${V:-x}`/`${V-x}` give a
/// default, `${V:+x}`/`${V+x}` an alternative, `${V:?msg}`/`${V?msg}` fail
/// when unset. Single quotes are literal, double quotes still expand, and
/// the escape character makes the next character literal.
pub fn expand(word: &str, vars: &(impl Lookup + ?Sized)) -> Result<String, ExpandError> {
    expand_with_escape(word, vars, '\\')
}

/// [`expand`] with the Dockerfile's escape character (`# escape=`).
pub fn expand_with_escape(
    word: &str,
    vars: &(impl Lookup + ?Sized),
    escape: char,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer {
        chars: word.chars().collect(),
        pos: 0,
        escape,
        vars,
        word,
        raw_quotes: false,
    };
    lexer.process(None)
}

/// Expands a heredoc body (delimiter unquoted): `$` references and escapes
/// before `$` or the escape character, like a shell here-document. Quotes
/// are ordinary characters there, so they stay.
pub(crate) fn expand_heredoc(
    body: &str,
    vars: &(impl Lookup + ?Sized),
    escape: char,
) -> Result<String, ExpandError> {
    let mut lexer = Lexer {
        chars: body.chars().collect(),
        pos: 0,
        escape,
        vars,
        word: body,
        raw_quotes: true,
    };
    lexer.process(None)
}

struct Lexer<'a, L: Lookup + ?Sized> {
    chars: Vec<char>,
    pos: usize,
    escape: char,
    vars: &'a L,
    word: &'a str,
    /// Heredoc mode: quotes are literal, escapes only before `$`/escape.
    raw_quotes: bool,
}

impl<L: Lookup + ?Sized> Lexer<'_, L> {
    fn peek(&self) -> Option<char> {
        self.chars.get(self.pos).copied()
    }

    fn next(&mut self) -> Option<char> {
        let c = self.peek();
        if c.is_some() {
            self.pos += 1;
        }
        c
    }

    /// Processes until `stop` (consumed) or the end of input.
    fn process(&mut self, stop: Option<char>) -> Result<String, ExpandError> {
        let mut out = String::new();
        while let Some(c) = self.peek() {
            if Some(c) == stop {
                self.pos += 1;
                return Ok(out);
            }
            if self.raw_quotes && c != '$' {
                self.pos += 1;
                if c == self.escape {
                    match self.peek() {
                        Some(n) if n == '$' || n == self.escape => {
                            self.pos += 1;
                            out.push(n);
                        }
                        _ => out.push(c),
                    }
                } else {
                    out.push(c);
                }
                continue;
            }
            match c {
                '\'' => {
                    self.pos += 1;
                    out.push_str(&self.single_quoted()?);
                }
                '"' => {
                    self.pos += 1;
                    out.push_str(&self.double_quoted()?);
                }
                '$' => {
                    self.pos += 1;
                    out.push_str(&self.dollar()?);
                }
                c if c == self.escape => {
                    self.pos += 1;
                    // A trailing escape is dropped, as BuildKit does.
                    if let Some(n) = self.next() {
                        out.push(n);
                    }
                }
                c => {
                    self.pos += 1;
                    out.push(c);
                }
            }
        }
        match stop {
            Some(_) => Err(ExpandError::MissingBrace(self.word.to_string())),
            None => Ok(out),
        }
    }

    fn single_quoted(&mut self) -> Result<String, ExpandError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(ExpandError::Unterminated("single-quote")),
                Some('\'') => return Ok(out),
                Some(c) => out.push(c),
            }
        }
    }

    fn double_quoted(&mut self) -> Result<String, ExpandError> {
        let mut out = String::new();
        loop {
            match self.next() {
                None => return Err(ExpandError::Unterminated("double-quote")),
                Some('"') => return Ok(out),
                Some('$') => out.push_str(&self.dollar()?),
                Some(c) if c == self.escape => {
                    // Inside double quotes the escape only applies to `"`,
                    // `$` and itself; otherwise it is an ordinary character.
                    match self.peek() {
                        Some(n) if n == '"' || n == '$' || n == self.escape => {
                            self.pos += 1;
                            out.push(n);
                        }
                        _ => out.push(c),
                    }
                }
                Some(c) => out.push(c),
            }
        }
    }

    /// After a `$`.
    fn dollar(&mut self) -> Result<String, ExpandError> {
        if self.peek() != Some('{') {
            let name = self.name();
            if name.is_empty() {
                return Ok("$".to_string());
            }
            return Ok(self.vars.lookup(&name).unwrap_or("").to_string());
        }
        self.pos += 1;
        let name = self.name();
        if name.is_empty() {
            return Err(ExpandError::BadSubstitution(self.word.to_string()));
        }
        let value = self.vars.lookup(&name).map(str::to_string);
        match self.next() {
            Some('}') => Ok(value.unwrap_or_default()),
            Some(':') => {
                let op = self.next();
                match op {
                    Some(op @ ('-' | '+' | '?')) => {
                        let word = self.process(Some('}'))?;
                        let value = value.filter(|v| !v.is_empty());
                        apply(&name, value, op, word)
                    }
                    _ => Err(ExpandError::UnsupportedModifier {
                        modifier: format!(":{}", op.map(String::from).unwrap_or_default()),
                        word: self.word.to_string(),
                    }),
                }
            }
            Some(op @ ('-' | '+' | '?')) => {
                let word = self.process(Some('}'))?;
                apply(&name, value, op, word)
            }
            None => Err(ExpandError::MissingBrace(self.word.to_string())),
            Some(other) => Err(ExpandError::UnsupportedModifier {
                modifier: other.to_string(),
                word: self.word.to_string(),
            }),
        }
    }

    /// A variable name: letters, digits and `_`, or one digit or special
    /// parameter character (`$1`, `$@`), as BuildKit reads it.
    fn name(&mut self) -> String {
        let mut name = String::new();
        if let Some(c) = self.peek() {
            if c.is_ascii_digit() || "*#@?$!-".contains(c) {
                self.pos += 1;
                name.push(c);
                return name;
            }
        }
        while let Some(c) = self.peek() {
            if c.is_alphanumeric() || c == '_' {
                self.pos += 1;
                name.push(c);
            } else {
                break;
            }
        }
        name
    }
}

/// Applies `-`, `+` or `?` to a (possibly unset) value.
fn apply(name: &str, value: Option<String>, op: char, word: String) -> Result<String, ExpandError> {
    match (op, value) {
        ('-', Some(v)) => Ok(v),
        ('-', None) => Ok(word),
        ('+', Some(_)) => Ok(word),
        ('+', None) => Ok(String::new()),
        ('?', Some(v)) => Ok(v),
        (_, None) => Err(ExpandError::Required {
            name: name.to_string(),
            message: if word.is_empty() {
                "is not allowed to be unset".to_string()
            } else {
                word
            },
        }),
        (_, Some(v)) => Ok(v),
    }
}

/// Splits on whitespace, keeping quotes and escapes in the words (BuildKit
/// `parseWords`): used for ENV/LABEL/ARG pairs and to find heredoc markers.
pub(crate) fn split_words(text: &str, escape: char) -> Vec<String> {
    let chars: Vec<char> = text.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut quote: Option<char> = None;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        i += 1;
        match quote {
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            None => {
                in_word = true;
                if c == '\'' || c == '"' {
                    quote = Some(c);
                } else if c == escape {
                    if let Some(&n) = chars.get(i) {
                        word.push(c);
                        word.push(n);
                        i += 1;
                    }
                    continue;
                }
                word.push(c);
            }
            Some(q) => {
                if c == q {
                    quote = None;
                } else if c == escape && q != '\'' {
                    if let Some(&n) = chars.get(i) {
                        word.push(c);
                        word.push(n);
                        i += 1;
                    }
                    continue;
                }
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> HashMap<String, String> {
        [
            ("A", "a"),
            ("EMPTY", ""),
            ("PATH", "/usr/bin"),
            ("SP", "x y"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    fn ex(word: &str) -> String {
        expand(word, &vars()).unwrap()
    }

    #[test]
    fn plain_and_braced() {
        assert_eq!(ex("$A"), "a");
        assert_eq!(ex("${A}"), "a");
        assert_eq!(ex("pre-${A}-post"), "pre-a-post");
        assert_eq!(ex("$A$A"), "aa");
        assert_eq!(ex("$Ab"), "");
        assert_eq!(ex("${A}b"), "ab");
        assert_eq!(ex("$UNSET"), "");
        assert_eq!(ex("${PATH}:/bin"), "/usr/bin:/bin");
        assert_eq!(ex("x$"), "x$");
        assert_eq!(ex("$/"), "$/");
    }

    #[test]
    fn defaults_and_alternatives() {
        assert_eq!(ex("${UNSET:-d}"), "d");
        assert_eq!(ex("${EMPTY:-d}"), "d");
        assert_eq!(ex("${EMPTY-d}"), "");
        assert_eq!(ex("${UNSET-d}"), "d");
        assert_eq!(ex("${A:-d}"), "a");
        assert_eq!(ex("${A:+alt}"), "alt");
        assert_eq!(ex("${EMPTY:+alt}"), "");
        assert_eq!(ex("${EMPTY+alt}"), "alt");
        assert_eq!(ex("${UNSET+alt}"), "");
        assert_eq!(ex("${UNSET:-$A}"), "a");
        assert_eq!(ex("${UNSET:-${A}x}"), "ax");
        assert_eq!(ex("${UNSET:-a b}"), "a b");
    }

    #[test]
    fn required() {
        let err = expand("${UNSET:?need it}", &vars()).unwrap_err();
        assert_eq!(err.to_string(), "UNSET: need it");
        assert_eq!(ex("${A:?x}"), "a");
        assert!(expand("${EMPTY:?}", &vars()).is_err());
        assert_eq!(ex("${EMPTY?x}"), "");
    }

    #[test]
    fn quotes_and_escapes() {
        assert_eq!(ex("'$A'"), "$A");
        assert_eq!(ex("\"$A\""), "a");
        assert_eq!(ex("\"$SP\""), "x y");
        assert_eq!(ex("\\$A"), "$A");
        assert_eq!(ex("\"\\$A\""), "$A");
        assert_eq!(ex("\"a\\b\""), "a\\b");
        assert_eq!(ex("\"say \\\"hi\\\"\""), "say \"hi\"");
        assert_eq!(ex("a\\ b"), "a b");
        assert_eq!(ex("'it'\"'\"'s'"), "it's");
        assert_eq!(ex("\"v 2\""), "v 2");
        assert_eq!(ex("trailing\\"), "trailing");
    }

    #[test]
    fn backtick_escape() {
        let v = vars();
        assert_eq!(expand_with_escape("`$A", &v, '`').unwrap(), "$A");
        assert_eq!(expand_with_escape("c:\\$A", &v, '`').unwrap(), "c:\\a");
    }

    #[test]
    fn errors() {
        let v = vars();
        assert_eq!(
            expand("'abc", &v).unwrap_err(),
            ExpandError::Unterminated("single-quote")
        );
        assert_eq!(
            expand("\"abc", &v).unwrap_err(),
            ExpandError::Unterminated("double-quote")
        );
        assert!(matches!(
            expand("${A", &v),
            Err(ExpandError::MissingBrace(_))
        ));
        assert!(matches!(
            expand("${}", &v),
            Err(ExpandError::BadSubstitution(_))
        ));
        assert!(matches!(
            expand("${A%x}", &v),
            Err(ExpandError::UnsupportedModifier { .. })
        ));
        assert!(matches!(
            expand("${UNSET:-x", &v),
            Err(ExpandError::MissingBrace(_))
        ));
    }

    #[test]
    fn heredoc_bodies_keep_quotes() {
        let v = vars();
        assert_eq!(
            expand_heredoc("say \"$A\" '$A' \\$A ${UNSET:-d}\n", &v, '\\').unwrap(),
            "say \"a\" 'a' $A d\n"
        );
    }

    #[test]
    fn slices_look_up_last_binding() {
        let v = vec![
            ("A".to_string(), "1".to_string()),
            ("A".to_string(), "2".to_string()),
        ];
        assert_eq!(expand("$A", v.as_slice()).unwrap(), "2");
    }

    #[test]
    fn word_splitting_keeps_quotes() {
        assert_eq!(
            split_words(r#"K=V K2="v 2" K3='a b' K4=a\ b"#, '\\'),
            vec!["K=V", "K2=\"v 2\"", "K3='a b'", "K4=a\\ b"]
        );
        assert_eq!(split_words("  a   b ", '\\'), vec!["a", "b"]);
        assert_eq!(split_words("x=\"\"", '\\'), vec!["x=\"\""]);
    }
}
