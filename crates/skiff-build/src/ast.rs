//! The parsed form of a Dockerfile.
//!
//! Values are kept as written (quotes included) wherever Docker expands
//! variables later, so that [`crate::resolve`] can apply the scoping rules;
//! the resolver produces the same types with the values expanded.

use serde::Serialize;

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    /// Every instruction in order, including the ARGs before the first FROM.
    pub instructions: Vec<Instruction>,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Directives {
    /// `# syntax=`: recorded, never acted on (we are the only frontend).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syntax: Option<String>,
    /// `# escape=`: `\` (default) or `` ` ``; used for continuations and
    /// for the shell-word lexer.
    pub escape: char,
    /// `# check=`: recorded, not acted on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            syntax: None,
            escape: '\\',
            check: None,
        }
    }
}

/// One instruction with the lines it spans (1-based, inclusive; heredoc
/// bodies count).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instruction {
    pub line: usize,
    pub end_line: usize,
    /// `--name[=value]` flags, quotes removed as Docker does. Values such
    /// as `--mount=...` are otherwise kept raw.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub flags: Vec<Flag>,
    /// Heredoc bodies, in the order their markers appear on the line.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub heredocs: Vec<Heredoc>,
    pub command: Command,
}

impl Instruction {
    /// The value of flag `--name`, if given (last one wins); `Some("")`
    /// for a bare boolean flag.
    pub fn flag(&self, name: &str) -> Option<&str> {
        self.flags
            .iter()
            .rev()
            .find(|f| f.name == name)
            .map(|f| f.value.as_deref().unwrap_or(""))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Flag {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// A here-document (`<<EOF` ... `EOF`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Heredoc {
    /// The delimiter word with quotes removed; for COPY/ADD it is also the
    /// name of the file the body becomes.
    pub name: String,
    /// The body, one `\n` after every line; with `<<-` leading tabs are
    /// already stripped.
    pub content: String,
    /// False when the delimiter was quoted (`<<"EOF"`, `<<'EOF'`): the
    /// body is then taken literally.
    pub expand: bool,
    /// `<<-`: leading tabs were stripped from the body and terminator.
    pub chomp: bool,
    /// The file descriptor prefix (`3<<EOF`), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fd: Option<u32>,
}

/// `KEY=VALUE` from ENV, LABEL or ARG.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyValue {
    pub key: String,
    /// None only for `ARG NAME` without a default.
    pub value: Option<String>,
}

/// Exec (JSON) form or shell form of RUN, CMD, ENTRYPOINT, HEALTHCHECK CMD.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum CommandLine {
    /// `["exe", "arg"]`: run directly, no shell.
    Exec(Vec<String>),
    /// Everything after the instruction (and flags), run with the SHELL.
    /// For RUN with heredocs the markers stay in the text; the bodies are in
    /// [`Instruction::heredocs`].
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable any inherited check.
    None,
    Cmd {
        #[serde(flatten)]
        options: HealthcheckOptions,
        command: CommandLine,
    },
}

/// HEALTHCHECK flags, durations in milliseconds (Go duration syntax parsed).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HealthcheckOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_period_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub start_interval_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retries: Option<u32>,
}

/// The instruction proper.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum Command {
    From {
        image: String,
        /// `AS name`, lowercased (stage names are case-insensitive).
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    Run(CommandLine),
    Cmd(CommandLine),
    Entrypoint(CommandLine),
    /// Always JSON form.
    Shell(Vec<String>),
    Label(Vec<KeyValue>),
    Maintainer(String),
    Expose(Vec<String>),
    Env(Vec<KeyValue>),
    /// Sources exclude heredoc markers; those are in
    /// [`Instruction::heredocs`] and become files named after the delimiter.
    Add {
        sources: Vec<String>,
        dest: String,
    },
    Copy {
        sources: Vec<String>,
        dest: String,
    },
    Volume(Vec<String>),
    User(String),
    Workdir(String),
    Arg(Vec<KeyValue>),
    /// The trigger, parsed; never expanded here (it runs in a child build).
    Onbuild(Box<Instruction>),
    Stopsignal(String),
    Healthcheck(Healthcheck),
}

impl Command {
    /// The instruction keyword, upper case.
    pub fn keyword(&self) -> &'static str {
        match self {
            Command::From { .. } => "FROM",
            Command::Run(_) => "RUN",
            Command::Cmd(_) => "CMD",
            Command::Entrypoint(_) => "ENTRYPOINT",
            Command::Shell(_) => "SHELL",
            Command::Label(_) => "LABEL",
            Command::Maintainer(_) => "MAINTAINER",
            Command::Expose(_) => "EXPOSE",
            Command::Env(_) => "ENV",
            Command::Add { .. } => "ADD",
            Command::Copy { .. } => "COPY",
            Command::Volume(_) => "VOLUME",
            Command::User(_) => "USER",
            Command::Workdir(_) => "WORKDIR",
            Command::Arg(_) => "ARG",
            Command::Onbuild(_) => "ONBUILD",
            Command::Stopsignal(_) => "STOPSIGNAL",
            Command::Healthcheck(_) => "HEALTHCHECK",
        }
    }
}
