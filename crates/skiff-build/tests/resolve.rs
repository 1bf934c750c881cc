//! ARG/ENV scoping with `--build-arg` values and base-image ENV.

use std::collections::BTreeMap;

use skiff_build::{parse, resolve, resolve_with_base_env, Command, CommandLine, Stage};

fn args(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn stages(text: &str, build_args: &[(&str, &str)]) -> Vec<Stage> {
    resolve(&parse(text).expect("parse"), &args(build_args)).expect("resolve")
}

fn workdir(stage: &Stage, step: usize) -> &str {
    match &stage.steps[step].instruction.command {
        Command::Workdir(w) => w,
        other => panic!("not WORKDIR: {other:?}"),
    }
}

#[test]
fn build_args_override_defaults_but_only_when_declared() {
    let text = "ARG V=1\nFROM img:$V\nARG V\nARG W=def\nWORKDIR /$V/$W/$UNDECLARED\n";
    let s = stages(text, &[]);
    assert_eq!(s[0].base, "img:1");
    assert_eq!(workdir(&s[0], 2), "/1/def/");
    let s = stages(text, &[("V", "2"), ("W", "cli"), ("UNDECLARED", "x")]);
    assert_eq!(s[0].base, "img:2");
    assert_eq!(workdir(&s[0], 2), "/2/cli/");
}

#[test]
fn global_args_need_redeclaring_and_stage_args_end_with_the_stage() {
    let text = "ARG G=g\nFROM a\nARG S=s\nWORKDIR /$G/$S\nFROM b\nWORKDIR /$G/$S\n";
    let s = stages(text, &[]);
    assert_eq!(workdir(&s[0], 1), "//s");
    assert_eq!(workdir(&s[1], 0), "//");
}

#[test]
fn env_beats_arg_and_run_gets_args() {
    let text = "FROM a\nARG X=arg\nENV X=env\nWORKDIR /$X\nRUN echo $X\n";
    let s = stages(text, &[("X", "cli")]);
    assert_eq!(workdir(&s[0], 2), "/env");
    let run = &s[0].steps[3];
    assert_eq!(
        run.instruction.command,
        Command::Run(CommandLine::Shell("echo $X".into()))
    );
    assert_eq!(run.args, args(&[("X", "cli")]));
}

#[test]
fn platform_args_are_predefined_for_from() {
    let text = "FROM --platform=$BUILDPLATFORM golang AS b\nFROM alpine:$TARGETARCH\n";
    let s = stages(
        text,
        &[("BUILDPLATFORM", "linux/amd64"), ("TARGETARCH", "arm64")],
    );
    assert_eq!(s[0].platform.as_deref(), Some("linux/amd64"));
    assert_eq!(s[1].base, "alpine:arm64");
    assert_eq!(stages(text, &[])[0].platform, None);
}

#[test]
fn base_image_env_is_visible() {
    let df = parse("FROM python:3.11\nENV PATH=/venv/bin:$PATH\nFROM python:3.11 AS x\nFROM x\nWORKDIR $PATH\n")
        .expect("parse");
    let base_env = |image: &str| {
        assert!(image.starts_with("python"), "asked about {image}");
        vec![("PATH".to_string(), "/usr/bin".to_string())]
    };
    let s = resolve_with_base_env(&df, &args(&[]), &base_env).expect("resolve");
    match &s[0].steps[0].instruction.command {
        Command::Env(kv) => assert_eq!(kv[0].value.as_deref(), Some("/venv/bin:/usr/bin")),
        other => panic!("{other:?}"),
    }
    assert_eq!(workdir(&s[2], 0), "/usr/bin");
}

#[test]
fn escape_directive_applies_to_expansion() {
    let s = stages("# escape=`\nFROM a\nENV P=C:\\x\nWORKDIR `$P/$P\n", &[]);
    assert_eq!(workdir(&s[0], 1), "$P/C:\\x");
}
