//! ARG/ENV scoping and variable expansion over a parsed Dockerfile.
//!
//! Docker's rules, which this follows:
//! * ARGs before the first FROM are global: usable only in FROM lines
//!   (image and `--platform`). Inside a stage, `ARG NAME` without a default
//!   imports the global value.
//! * An ARG inside a stage is visible from its declaration to the end of
//!   that stage. `--build-arg` values override ARG defaults, but only for
//!   ARGs the Dockerfile declares.
//! * ENV overrides an ARG of the same name, and carries into stages built
//!   `FROM` an earlier stage.
//! * All words of one instruction are expanded against the scope before
//!   that instruction (`ENV A=1 B=$A` sees the old A).
//! * RUN, CMD, ENTRYPOINT, SHELL, HEALTHCHECK and ONBUILD are not
//!   expanded: the shell (or the child build) does that.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::ast::{Command, Dockerfile, Flag, Heredoc, Instruction, KeyValue};
use crate::error::{BuildError, ExpandError};
use crate::lex::{expand_heredoc, expand_with_escape, Lookup};

/// One build stage, with its instructions' arguments expanded.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// 0-based position; `COPY --from=0` refers to it.
    pub index: usize,
    /// `AS name`, lowercased.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The base image (or an earlier stage's name), variables expanded.
    pub base: String,
    /// `FROM --platform=`, expanded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Line of the FROM.
    pub line: usize,
    pub steps: Vec<Step>,
}

/// An instruction of a stage, expanded where Docker expands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Step {
    #[serde(flatten)]
    pub instruction: Instruction,
    /// For RUN only: the ARG values in scope, which Docker puts in the
    /// command's environment (not persisted into the image).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub args: BTreeMap<String, String>,
}

/// The variables visible at one point of a stage.
#[derive(Default, Clone)]
struct Scope {
    env: Vec<(String, String)>,
    /// Declared ARGs; None when declared without a value.
    args: Vec<(String, Option<String>)>,
}

impl Lookup for Scope {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.env.as_slice().lookup(name).or_else(|| {
            self.args
                .iter()
                .rev()
                .find(|(k, _)| k == name)
                .and_then(|(_, v)| v.as_deref())
        })
    }
}

impl Scope {
    fn arg_values(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (k, v) in &self.args {
            match v {
                Some(v) => out.insert(k.clone(), v.clone()),
                None => out.remove(k),
            };
        }
        out
    }
}

/// ARGs Docker predefines for FROM lines without a declaration; their
/// values come from `build_args` (the builder fills in the platform).
const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// What FROM lines see: the global ARGs, then the predefined platform ARGs.
struct FromScope<'a, B: Lookup + ?Sized> {
    globals: &'a Scope,
    build_args: &'a B,
}

impl<B: Lookup + ?Sized> Lookup for FromScope<'_, B> {
    fn lookup(&self, name: &str) -> Option<&str> {
        self.globals.lookup(name).or_else(|| {
            PLATFORM_ARGS
                .contains(&name)
                .then(|| self.build_args.lookup(name))
                .flatten()
        })
    }
}

/// Splits `dockerfile` into stages and expands variables, with
/// `build_args` as the `--build-arg` values. Base images' own ENV is taken
/// as empty; see [`resolve_with_base_env`].
///
/// Does not check `--from` references (the builder does); does reject
/// duplicate or malformed stage names and bases that expand to nothing.
pub fn resolve(
    dockerfile: &Dockerfile,
    build_args: &(impl Lookup + ?Sized),
) -> Result<Vec<Stage>, BuildError> {
    resolve_with_base_env(dockerfile, build_args, &|_| Vec::new())
}

/// [`resolve`], with `base_env(image)` giving an external base image's ENV
/// (so `ENV PATH=/venv/bin:$PATH` sees the image's PATH). Stages built on
/// an earlier stage inherit that stage's ENV instead.
pub fn resolve_with_base_env(
    dockerfile: &Dockerfile,
    build_args: &(impl Lookup + ?Sized),
    base_env: &dyn Fn(&str) -> Vec<(String, String)>,
) -> Result<Vec<Stage>, BuildError> {
    let escape = dockerfile.directives.escape;
    let mut globals = Scope::default();
    let mut stages: Vec<Stage> = Vec::new();
    let mut stage_env: Vec<Vec<(String, String)>> = Vec::new();
    let mut scope = Scope::default();

    for inst in &dockerfile.instructions {
        let line = inst.line;
        let ex = |word: &str, scope: &Scope| {
            expand_with_escape(word, scope, escape)
                .map_err(|source| BuildError::Expand { line, source })
        };
        match &inst.command {
            Command::From { image, name } => {
                if !stages.is_empty() {
                    stage_env.push(std::mem::take(&mut scope.env));
                }
                let from_scope = FromScope {
                    globals: &globals,
                    build_args,
                };
                let from_ex = |word: &str| {
                    expand_with_escape(word, &from_scope, escape)
                        .map_err(|source| BuildError::Expand { line, source })
                };
                let base = from_ex(image)?;
                if base.is_empty() {
                    return Err(BuildError::EmptyBase {
                        line,
                        raw: image.clone(),
                    });
                }
                if let Some(name) = name {
                    check_stage_name(name, line, &stages)?;
                }
                let platform = inst
                    .flag("platform")
                    .map(from_ex)
                    .transpose()?
                    .filter(|p| !p.is_empty());
                // A stage built on an earlier one inherits its ENV.
                let lower = base.to_ascii_lowercase();
                let inherited = match stages
                    .iter()
                    .position(|s| s.name.as_deref() == Some(lower.as_str()))
                {
                    Some(i) => stage_env.get(i).cloned().unwrap_or_default(),
                    None => base_env(&base),
                };
                scope = Scope {
                    env: inherited,
                    args: Vec::new(),
                };
                stages.push(Stage {
                    index: stages.len(),
                    name: name.clone(),
                    base,
                    platform,
                    line,
                    steps: Vec::new(),
                });
            }
            Command::Arg(pairs) => {
                let in_stage = !stages.is_empty();
                let mut resolved = Vec::new();
                for kv in pairs {
                    let target = if in_stage { &scope } else { &globals };
                    let value = match build_args.lookup(&kv.key) {
                        Some(v) => Some(v.to_string()),
                        None => match &kv.value {
                            Some(default) => Some(ex(default, target)?),
                            // `ARG NAME` in a stage imports the global value.
                            None if in_stage => globals.lookup(&kv.key).map(str::to_string),
                            None => None,
                        },
                    };
                    resolved.push(KeyValue {
                        key: kv.key.clone(),
                        value: value.clone(),
                    });
                    let target = if in_stage { &mut scope } else { &mut globals };
                    target.args.push((kv.key.clone(), value));
                }
                if let Some(stage) = stages.last_mut() {
                    stage
                        .steps
                        .push(step(inst, Command::Arg(resolved), &scope)?);
                }
            }
            other => {
                let Some(stage) = stages.last_mut() else {
                    // The parser only lets ARG precede the first FROM.
                    continue;
                };
                let mut inst = inst.clone();
                inst.command = expand_command(other, &scope, &|w, s| ex(w, s))?;
                inst.flags = expand_flags(&inst.flags, &scope, &|w, s| ex(w, s))?;
                if matches!(other, Command::Add { .. } | Command::Copy { .. }) {
                    inst.heredocs = expand_heredocs(&inst.heredocs, &scope, escape)
                        .map_err(|source| BuildError::Expand { line, source })?;
                }
                if let Command::Env(pairs) = &inst.command {
                    for kv in pairs {
                        scope
                            .env
                            .push((kv.key.clone(), kv.value.clone().unwrap_or_default()));
                    }
                }
                stage.steps.push(step(&inst, inst.command.clone(), &scope)?);
            }
        }
    }
    Ok(stages)
}

fn step(inst: &Instruction, command: Command, scope: &Scope) -> Result<Step, BuildError> {
    let args = match command {
        Command::Run(_) => scope.arg_values(),
        _ => BTreeMap::new(),
    };
    Ok(Step {
        instruction: Instruction {
            command,
            ..inst.clone()
        },
        args,
    })
}

/// Stage names: `^[a-z][a-z0-9-_.]*$` (already lowercased), unique.
fn check_stage_name(name: &str, line: usize, stages: &[Stage]) -> Result<(), BuildError> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c));
    if !valid {
        return Err(BuildError::InvalidStageName {
            line,
            name: name.to_string(),
        });
    }
    if let Some(first) = stages.iter().find(|s| s.name.as_deref() == Some(name)) {
        return Err(BuildError::DuplicateStage {
            line,
            name: name.to_string(),
            first: first.line,
        });
    }
    Ok(())
}

type Ex<'a> = dyn Fn(&str, &Scope) -> Result<String, BuildError> + 'a;

/// Expands the words of the instructions Docker expands; the rest are
/// returned unchanged.
fn expand_command(cmd: &Command, scope: &Scope, ex: &Ex) -> Result<Command, BuildError> {
    let words = |ws: &[String]| {
        ws.iter()
            .map(|w| ex(w, scope))
            .collect::<Result<Vec<_>, _>>()
    };
    let pairs = |kvs: &[KeyValue]| {
        kvs.iter()
            .map(|kv| {
                Ok(KeyValue {
                    key: ex(&kv.key, scope)?,
                    value: kv.value.as_deref().map(|v| ex(v, scope)).transpose()?,
                })
            })
            .collect::<Result<Vec<_>, BuildError>>()
    };
    Ok(match cmd {
        Command::Env(kvs) => Command::Env(pairs(kvs)?),
        Command::Label(kvs) => Command::Label(pairs(kvs)?),
        Command::Add { sources, dest } => Command::Add {
            sources: words(sources)?,
            dest: ex(dest, scope)?,
        },
        Command::Copy { sources, dest } => Command::Copy {
            sources: words(sources)?,
            dest: ex(dest, scope)?,
        },
        Command::Expose(ports) => Command::Expose(words(ports)?),
        Command::Volume(paths) => Command::Volume(words(paths)?),
        Command::User(u) => Command::User(ex(u, scope)?),
        Command::Workdir(w) => Command::Workdir(ex(w, scope)?),
        Command::Stopsignal(s) => Command::Stopsignal(ex(s, scope)?),
        other => other.clone(),
    })
}

/// COPY/ADD `--from`, `--chown`, `--chmod` are expanded; other flags
/// (RUN `--mount` included) are left for the builder.
fn expand_flags(flags: &[Flag], scope: &Scope, ex: &Ex) -> Result<Vec<Flag>, BuildError> {
    flags
        .iter()
        .map(|f| {
            let value = match (&f.value, f.name.as_str()) {
                (Some(v), "from" | "chown" | "chmod") => Some(ex(v, scope)?),
                (v, _) => v.clone(),
            };
            Ok(Flag {
                name: f.name.clone(),
                value,
            })
        })
        .collect()
}

fn expand_heredocs(
    docs: &[Heredoc],
    scope: &Scope,
    escape: char,
) -> Result<Vec<Heredoc>, ExpandError> {
    docs.iter()
        .map(|h| {
            let content = if h.expand {
                expand_heredoc(&h.content, scope, escape)?
            } else {
                h.content.clone()
            };
            Ok(Heredoc {
                content,
                ..h.clone()
            })
        })
        .collect()
}
