//! Errors: each names the Dockerfile line it is about.

/// A parse failure: `Dockerfile:LINE: what was wrong`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("Dockerfile:{line}: {kind}")]
pub struct ParseError {
    /// 1-based line; for errors about the whole file, the last line.
    pub line: usize,
    pub kind: ParseErrorKind,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ParseErrorKind {
    #[error("unknown instruction: {0}")]
    UnknownInstruction(String),
    #[error("{0} requires at least one argument")]
    MissingArgument(&'static str),
    #[error("FROM requires an image")]
    FromWithoutImage,
    #[error("unterminated heredoc <<{name} (started at line {start})")]
    UnterminatedHeredoc { name: String, start: usize },
    #[error("unknown flag for {instruction}: --{flag}")]
    UnknownFlag {
        instruction: &'static str,
        flag: String,
    },
    #[error("{0} must come after FROM (only ARG may precede the first FROM)")]
    BeforeFrom(&'static str),
    #[error("no FROM instruction")]
    NoFrom,
    #[error("{0}")]
    Syntax(String),
}

/// A shell-word expansion failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ExpandError {
    #[error("unexpected end of statement while looking for matching {0}")]
    Unterminated(&'static str),
    #[error("missing '}}' in {0}")]
    MissingBrace(String),
    #[error("bad substitution: {0}")]
    BadSubstitution(String),
    #[error("unsupported modifier ({modifier}) in substitution: {word}")]
    UnsupportedModifier { modifier: String, word: String },
    /// `${V:?message}` with V unset (or empty).
    #[error("{name}: {message}")]
    Required { name: String, message: String },
}

/// A failure while resolving stages and variables.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BuildError {
    #[error("Dockerfile:{line}: {source}")]
    Expand { line: usize, source: ExpandError },
    #[error("Dockerfile:{line}: duplicate stage name {name:?} (first used at line {first})")]
    DuplicateStage {
        line: usize,
        name: String,
        first: usize,
    },
    #[error("Dockerfile:{line}: invalid stage name {name:?}: must start with a letter and contain only letters, digits, '-', '_' and '.'")]
    InvalidStageName { line: usize, name: String },
    #[error("Dockerfile:{line}: base image {raw:?} expands to an empty name")]
    EmptyBase { line: usize, raw: String },
}
