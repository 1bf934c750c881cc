//! Skiff's Dockerfile front end: a parser and a variable resolver.
//!
//! We write our own parser because the existing crates lack heredocs. It
//! follows BuildKit's `frontend/dockerfile/parser` and `instructions`
//! packages so that a Dockerfile means the same thing here as under
//! `docker build`:
//!
//! * [`parse`] turns text into a [`Dockerfile`]: parser directives
//!   (`# syntax=`, `# escape=`), comments, line continuations, heredocs,
//!   flags, JSON (exec) and shell forms. Every [`Instruction`] keeps its
//!   line span, and every error names the line.
//! * [`expand`] is Docker's shell-word processing (`$V`, `${V:-x}`, quotes,
//!   escapes) for the instructions where Docker expands variables.
//! * [`resolve`] walks the parsed file with ARG/ENV scoping rules and
//!   `--build-arg` values, returning the build [`Stage`]s with their
//!   arguments expanded. `RUN`/`CMD`/`ENTRYPOINT` are left alone: the shell
//!   (or nobody) expands those.
//!
//! ```
//! use std::collections::BTreeMap;
//!
//! let text = "ARG PY=3.11\nFROM python:${PY}-slim\nWORKDIR /app\nCMD [\"python\", \"app.py\"]\n";
//! let dockerfile = skiff_build::parse(text)?;
//! let build_args = BTreeMap::from([("PY".to_string(), "3.12".to_string())]);
//! let stages = skiff_build::resolve(&dockerfile, &build_args)?;
//! assert_eq!(stages[0].base, "python:3.12-slim");
//! assert_eq!(stages[0].steps[0].instruction.line, 3);
//!
//! let err = skiff_build::parse("FROM a\nRUNN x\n").unwrap_err();
//! assert_eq!(err.to_string(), "Dockerfile:2: unknown instruction: RUNN");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod ast;
mod builder;
mod config;
pub mod context;
mod copy;
mod error;
pub mod layer;
mod lex;
mod parser;
mod resolve;
mod run;

pub use ast::{
    Command, CommandLine, Directives, Dockerfile, Flag, Healthcheck, HealthcheckOptions, Heredoc,
    Instruction, KeyValue,
};
pub use builder::{BuildFailure, BuildHost, BuildOptions, Builder, Built};
pub use config::ImageConfig;
pub use error::{BuildError, ExpandError, ParseError, ParseErrorKind};
pub use lex::{expand, expand_with_escape, Lookup};
pub use parser::parse;
pub use resolve::{resolve, resolve_with_base_env, Stage, Step};
pub use run::RunNetwork;
