//! `skiff build` end to end: real Dockerfiles built on crun into the store,
//! then run; the cache; multi-stage; bad input that must change nothing;
//! the seed-style Flask app on the offline python base, run and deployed
//! with `deploy --source`.

mod common;

use std::fs;
use std::path::Path;

use common::{base_image, daemon::Daemon, Skiff};
use serde_json::Value;

/// A context directory holding `files` (path, content) and a static busybox.
fn context(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    fs::copy("/bin/busybox", dir.path().join("busybox")).expect("copy busybox");
    for (path, content) in files {
        let p = dir.path().join(path);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }
    dir
}

fn build(s: &Skiff, ctx: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["build"];
    all.extend_from_slice(args);
    all.push(ctx.to_str().unwrap());
    s.run(&all)
}

fn built_id(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "build failed ({:?}):\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(id.starts_with("sha256:"), "stdout is the image id: {id}");
    id
}

/// The stored config of image `id` (a `sha256:` digest).
fn config(s: &Skiff, id: &str) -> Value {
    let hex = id.trim_start_matches("sha256:");
    let bytes = fs::read(s.root.path().join("images/blobs/sha256").join(hex)).expect("config blob");
    serde_json::from_slice(&bytes).expect("config JSON")
}

/// Scratch directories and mounts a build leaves behind.
fn build_leftovers(s: &Skiff) -> Vec<String> {
    let mut found = s.leftovers();
    if let Ok(rd) = fs::read_dir(s.root.path().join("build")) {
        found.extend(rd.flatten().map(|e| e.path().display().to_string()));
    }
    found
}

const BUSYBOX_DOCKERFILE: &str = r#"# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE}
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ARG GREETING=hello
ENV APP_HOME=/srv/app \
    MODE=test
RUN <<EOF
set -e
mkdir -p /etc
echo "root:x:0:0:root:/root:/bin/sh" > /etc/passwd
echo "app:x:1000:1000:app:/home/app:/bin/sh" >> /etc/passwd
echo "root:x:0:" > /etc/group
echo "app:x:1000:" >> /etc/group
echo "$GREETING from RUN" > /greeting
EOF
WORKDIR $APP_HOME
COPY --chown=app:app --chmod=0640 conf/app.conf ./conf/
COPY src/ ./src
COPY *.txt /notes/
ADD files.tar.gz /unpacked/
COPY <<EOF /etc/motd
motd for $MODE
EOF
LABEL org.example.team=platform version="1.0"
EXPOSE 8080 53/udp
STOPSIGNAL SIGINT
HEALTHCHECK --interval=5s --retries=2 CMD wget -q -O- http://127.0.0.1:8080/ || exit 1
USER app
ENTRYPOINT ["/bin/sh", "-c"]
CMD ["cat /greeting /etc/motd"]
"#;

fn busybox_context() -> tempfile::TempDir {
    let ctx = context(&[
        ("Dockerfile", BUSYBOX_DOCKERFILE),
        ("conf/app.conf", "port=8080\n"),
        ("src/main.sh", "echo main\n"),
        ("src/lib/util.sh", "echo util\n"),
        ("src/secret.key", "do not ship\n"),
        ("a.txt", "A\n"),
        ("b.txt", "B\n"),
        ("notes.md", "not copied\n"),
        (".dockerignore", "# keys stay out\n**/*.key\n"),
    ]);
    // A gzip tar for ADD to unpack.
    let tar_dir = tempfile::tempdir().unwrap();
    fs::create_dir(tar_dir.path().join("pkg")).unwrap();
    fs::write(tar_dir.path().join("pkg/data"), "from the tarball\n").unwrap();
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(ctx.path().join("files.tar.gz"))
        .arg("-C")
        .arg(tar_dir.path())
        .arg("pkg")
        .status()
        .expect("tar");
    assert!(status.success());
    ctx
}

#[test]
fn a_dockerfile_builds_runs_and_rebuilds_from_the_cache() {
    let s = Skiff::new();
    let ctx = busybox_context();
    let out = build(
        &s,
        ctx.path(),
        &["-t", "bb-app:v1", "--build-arg", "GREETING=hi"],
    );
    let id = built_id(&out);

    // The image runs with everything the Dockerfile put in place.
    let run = s.ok(&["run", "--rm", "bb-app:v1"]);
    assert_eq!(run, "hi from RUN\nmotd for test\n");
    let probe = s.ok(&[
        "run",
        "--rm",
        "bb-app:v1",
        "id -u; pwd; stat -c '%U:%G %a' conf/app.conf; cat conf/app.conf src/main.sh src/lib/util.sh; \
         ls src; ls /notes; cat /unpacked/pkg/data; echo $APP_HOME $MODE; ls -ld /srv/app | cut -c1-10",
    ]);
    assert_eq!(
        probe,
        "1000\n/srv/app\napp:app 640\nport=8080\necho main\necho util\nlib\nmain.sh\na.txt\nb.txt\n\
         from the tarball\n/srv/app test\ndrwxr-xr-x\n",
        ".dockerignore must keep secret.key out"
    );

    // The config is what Docker writes for this file.
    let c = config(&s, &id);
    let cfg = &c["config"];
    assert_eq!(cfg["User"], "app");
    assert_eq!(cfg["WorkingDir"], "/srv/app");
    assert_eq!(cfg["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(cfg["Cmd"], serde_json::json!(["cat /greeting /etc/motd"]));
    assert_eq!(cfg["StopSignal"], "SIGINT");
    assert_eq!(
        cfg["ExposedPorts"],
        serde_json::json!({"8080/tcp": {}, "53/udp": {}})
    );
    assert_eq!(cfg["Labels"]["org.example.team"], "platform");
    assert_eq!(cfg["Labels"]["version"], "1.0");
    assert_eq!(
        cfg["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "wget -q -O- http://127.0.0.1:8080/ || exit 1"])
    );
    assert_eq!(cfg["Healthcheck"]["Interval"], 5_000_000_000u64);
    let env: Vec<&str> = cfg["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(env.contains(&"APP_HOME=/srv/app") && env.contains(&"MODE=test"));
    assert!(
        env.iter().any(|e| e.starts_with("PATH=")),
        "scratch gets a PATH"
    );
    assert!(
        !env.iter().any(|e| e.starts_with("GREETING")),
        "ARGs are not kept"
    );
    let layers = c["rootfs"]["diff_ids"].as_array().unwrap().len();
    let history = c["history"].as_array().unwrap();
    assert_eq!(
        history.iter().filter(|h| h["empty_layer"] != true).count(),
        layers,
        "one history entry per layer"
    );
    assert!(layers >= 8, "each filesystem step is a layer: {layers}");

    // No change: every step from the cache, the same image.
    let again = build(
        &s,
        ctx.path(),
        &["-t", "bb-app:v1", "--build-arg", "GREETING=hi"],
    );
    assert_eq!(built_id(&again), id);
    assert!(String::from_utf8_lossy(&again.stderr).contains("(0 steps run"));

    // One source file changed: only its COPY and what follows run again.
    fs::write(ctx.path().join("src/main.sh"), "echo changed\n").unwrap();
    let changed = build(
        &s,
        ctx.path(),
        &["-t", "bb-app:v2", "--build-arg", "GREETING=hi"],
    );
    let id2 = built_id(&changed);
    assert_ne!(id2, id);
    let log = String::from_utf8_lossy(&changed.stderr);
    assert_eq!(log.matches("--> Using cache").count(), 5, "{log}");
    assert!(s.ok(&["run", "--rm", "bb-app:v2", "cat src/main.sh"]) == "echo changed\n");

    // A different build arg reruns the RUN that sees it.
    let other = build(
        &s,
        ctx.path(),
        &["-t", "bb-app:v3", "--build-arg", "GREETING=yo"],
    );
    built_id(&other);
    assert_eq!(
        s.ok(&["run", "--rm", "bb-app:v3"]),
        "yo from RUN\nmotd for test\n"
    );

    // --no-cache runs everything again.
    let fresh = build(
        &s,
        ctx.path(),
        &[
            "-t",
            "bb-app:v4",
            "--no-cache",
            "--build-arg",
            "GREETING=hi",
        ],
    );
    built_id(&fresh);
    assert!(!String::from_utf8_lossy(&fresh.stderr).contains("Using cache"));
    assert!(build_leftovers(&s).is_empty(), "{:?}", build_leftovers(&s));
}

#[test]
fn multi_stage_builds_copy_from_stages_and_images_and_stop_at_a_target() {
    let s = Skiff::new();
    let busybox = s.load_busybox();
    let ctx = context(&[(
        "Dockerfile",
        &format!(
            r#"FROM {busybox} AS builder
RUN mkdir -p /out && echo built > /out/artifact && chmod 751 /out/artifact
FROM builder AS tester
RUN echo tested > /out/test-report
FROM scratch
COPY --from=builder /out/artifact /app/artifact
COPY --from={busybox} /bin/busybox /bin/sh
COPY --from=0 /out /copied-dir
COPY --from=builder /out/arti* /globbed/
CMD ["/bin/sh", "-c", "cat /app/artifact; ls /copied-dir /globbed; stat -c %a /app/artifact"]
"#
        ),
    )]);
    let id = built_id(&build(&s, ctx.path(), &["-t", "final"]));
    assert_eq!(
        s.ok(&["run", "--rm", "final"]),
        "built\n/copied-dir:\nartifact\n\n/globbed:\nartifact\n751\n"
    );
    // The unused `tester` stage is not built for the final image.
    let c = config(&s, &id);
    assert_eq!(c["rootfs"]["diff_ids"].as_array().unwrap().len(), 4);

    let out = build(&s, ctx.path(), &["-t", "tester", "--target", "tester"]);
    built_id(&out);
    assert_eq!(
        s.ok(&["run", "--rm", "tester", "cat", "/out/test-report"]),
        "tested\n"
    );
}

#[test]
fn bad_builds_say_what_is_wrong_and_leave_nothing_behind() {
    let s = Skiff::new();
    let images_before = s.ok(&["images", "-q"]);
    // (what, context files, extra flags, expected error)
    type Case<'a> = (&'a str, &'a [(&'a str, &'a str)], &'a [&'a str], &'a str);
    let cases: &[Case] = &[
        (
            "unknown instruction",
            &[(
                "Dockerfile",
                "FROM scratch\nCOPY busybox /bin/busybox\nRUNN echo\n",
            )],
            &[],
            "Dockerfile:3: unknown instruction: RUNN",
        ),
        (
            "missing COPY source",
            &[("Dockerfile", "FROM scratch\nCOPY nothere.txt /x\n")],
            &[],
            "Dockerfile:2: COPY nothere.txt /x: \"nothere.txt\": not found",
        ),
        (
            "COPY outside the context",
            &[("Dockerfile", "FROM scratch\nCOPY ../etc/passwd /x\n")],
            &[],
            "outside the build context",
        ),
        (
            "unknown target",
            &[("Dockerfile", "FROM scratch AS a\n")],
            &["--target", "nope"],
            "no stage named \"nope\"",
        ),
        (
            "cyclic --from",
            &[(
                "Dockerfile",
                "FROM scratch AS a\nCOPY --from=b /x /x\nFROM scratch AS b\nCOPY --from=a /y /y\n",
            )],
            &[],
            "circular dependency between stages",
        ),
        (
            "unknown stage number",
            &[("Dockerfile", "FROM scratch\nCOPY --from=3 /x /x\n")],
            &[],
            "there is no stage 3",
        ),
        (
            "bad variable",
            &[("Dockerfile", "FROM scratch\nENV A=${B:?required}\n")],
            &[],
            "Dockerfile:2: B: required",
        ),
    ];
    for (what, files, args, expect) in cases {
        let ctx = context(files);
        let mut all: Vec<&str> = vec!["build", "-q", "-t", "bad:1"];
        all.extend_from_slice(args);
        all.push(ctx.path().to_str().unwrap());
        let err = s.fails(&all);
        assert!(err.contains(expect), "{what}: {err}");
    }

    // A symlink out of the context is refused, not followed.
    let ctx = context(&[("Dockerfile", "FROM scratch\nCOPY secret /secret\n")]);
    std::os::unix::fs::symlink("/etc/shadow", ctx.path().join("secret")).unwrap();
    let err = s.fails(&["build", "-q", "-t", "bad:1", ctx.path().to_str().unwrap()]);
    assert!(err.contains("outside"), "{err}");

    // An xz archive is refused, never copied as a plain file.
    let ctx = context(&[("Dockerfile", "FROM scratch\nADD rootfs.tar.xz /\n")]);
    fs::write(ctx.path().join("rootfs.tar.xz"), b"\xfd7zXZ\x00rest").unwrap();
    let err = s.fails(&["build", "-q", "-t", "bad:1", ctx.path().to_str().unwrap()]);
    assert!(err.contains("cannot unpack xz or bzip2"), "{err}");

    // A failing RUN: its exit code and its last output, nothing tagged.
    let ctx = context(&[(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/sh\nRUN [\"/bin/sh\", \"-c\", \"echo first; echo about to fail >&2; exit 3\"]\nCMD [\"x\"]\n",
    )]);
    let out = build(&s, ctx.path(), &["-q", "-t", "bad:1"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Dockerfile:3: RUN"), "{err}");
    assert!(err.contains("exited with code 3"), "{err}");
    assert!(err.contains("about to fail"), "{err}");
    // RUN --network none really has no network.
    let ctx = context(&[(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox ip -o link | /bin/busybox wc -l | /bin/busybox grep -qx 1\"]\n",
    )]);
    let out = build(
        &s,
        ctx.path(),
        &["-q", "-t", "nonet:1", "--network", "none"],
    );
    built_id(&out);

    assert_eq!(
        s.ok(&["images", "-q"]).lines().count(),
        images_before.lines().count() + 1
    );
    assert!(s.run(&["run", "--rm", "bad:1"]).status.code() != Some(0));
    assert!(build_leftovers(&s).is_empty(), "{:?}", build_leftovers(&s));
}

#[test]
fn output_archives_load_elsewhere() {
    let s = Skiff::new();
    let ctx = context(&[(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nCMD [\"/bin/busybox\", \"echo\", \"from the archive\"]\n",
    )]);
    let out_dir = tempfile::tempdir().unwrap();
    for kind in ["oci", "docker"] {
        let archive = out_dir.path().join(format!("{kind}.tar"));
        let spec = format!("{kind}:{}", archive.display());
        built_id(&build(
            &s,
            ctx.path(),
            &["-q", "-t", "arch:1", "--output", &spec],
        ));
        let other = Skiff::new();
        other.ok(&["load", "-q", "-i", archive.to_str().unwrap()]);
        assert_eq!(other.ok(&["run", "--rm", "arch:1"]), "from the archive\n");
    }
    let err = s.fails(&[
        "build",
        "-q",
        "-t",
        "x",
        "--output",
        "tar:/tmp/x",
        ctx.path().to_str().unwrap(),
    ]);
    assert!(err.contains("expected oci:FILE or docker:FILE"), "{err}");
}

/// The seed articles' Flask app: python base, requirements, app. pip
/// reaches PyPI from the RUN step (the host's network).
#[test]
fn the_seed_flask_app_builds_runs_and_deploys_from_source() {
    let s = Skiff::new();
    s.ok(&["load", "-q", "-i", base_image("python").to_str().unwrap()]);
    let ctx = tempfile::tempdir().unwrap();
    fs::write(ctx.path().join("requirements.txt"), "flask==3.0.3\n").unwrap();
    fs::write(
        ctx.path().join("app.py"),
        "import os\nfrom flask import Flask\napp = Flask(__name__)\n\n@app.route('/')\ndef hello():\n    return 'Hello from Flask\\n'\n\nif __name__ == '__main__':\n    app.run(host='0.0.0.0', port=int(os.environ.get('PORT', 5000)))\n",
    )
    .unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt .\nRUN pip install --no-cache-dir -r requirements.txt\nCOPY . .\nEXPOSE 5000\nCMD [\"python\", \"app.py\"]\n",
    )
    .unwrap();
    built_id(&build(&s, ctx.path(), &["-t", "flask-app"]));
    let port = common::free_port();
    let publish = format!("{port}:5000");
    s.ok(&["run", "-d", "--name", "web", "-p", &publish, "flask-app"]);
    let answer = common::http_get(port, "/", 100).expect("the app answers");
    assert!(answer.ends_with("Hello from Flask\n"), "{answer}");
    s.ok(&["rm", "-f", "web"]);

    // deploy --source: built (from the cache) and served by the gateway.
    let d = Daemon::start(&s);
    let src = ctx.path().to_str().unwrap();
    let out = s.ok(&["deploy", "hello", "--source", src, "--port", "5000"]);
    assert!(out.contains("revision hello-00001"), "{out}");
    let (code, _, body) = common::daemon::get(d.gateway, "hello.localhost", "/");
    assert_eq!((code, body.as_str()), (200, "Hello from Flask\n"));
    let described = s.ok(&["describe", "hello", "--json"]);
    assert!(described.contains("localhost/source/hello:"), "{described}");
}

#[test]
fn run_mounts_keep_a_cache_bind_the_context_and_stay_out_of_the_image() {
    let s = Skiff::new();
    let ctx = context(&[
        (
            "Dockerfile",
            "FROM scratch\nCOPY busybox /bin/busybox\n\
             RUN --mount=type=cache,target=/var/cache/thing [\"/bin/busybox\", \"sh\", \"-c\", \"echo x >> /var/cache/thing/runs; /bin/busybox wc -l < /var/cache/thing/runs > /runs-seen\"]\n\
             RUN --mount=type=bind,source=data,target=/mnt/data --mount=type=tmpfs,target=/scratch [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /mnt/data/in > /copied && echo tmp > /scratch/t && ! /bin/busybox touch /mnt/data/new 2>/dev/null && ! /bin/busybox test -e /mnt/data/secret\"]\n\
             RUN --mount=type=cache,target=/home/cache,uid=1000,gid=1001,mode=0700 [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox stat -c '%u:%g %a' /home/cache > /cache-owner\"]\n\
             CMD [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox cat /runs-seen /copied /cache-owner; /bin/busybox ls /mnt /scratch /var/cache 2>&1 | /bin/busybox wc -l\"]\n",
        ),
        ("data/in", "bound\n"),
        ("data/secret", "ignored\n"),
        (".dockerignore", "data/secret\n"),
    ]);
    built_id(&build(&s, ctx.path(), &["-q", "-t", "mounts:1"]));
    built_id(&build(
        &s,
        ctx.path(),
        &["-q", "-t", "mounts:2", "--no-cache"],
    ));
    // The cache mount saw both builds; .dockerignore holds for a bind;
    // nothing mounted is in the image (ls prints three "No such file or
    // directory" lines).
    assert_eq!(
        s.ok(&["run", "--rm", "mounts:1"]),
        "1\nbound\n1000:1001 700\n3\n"
    );
    assert_eq!(
        s.ok(&["run", "--rm", "mounts:2"]),
        "2\nbound\n1000:1001 700\n3\n"
    );
    // A bound file is part of the step's cache key.
    fs::write(ctx.path().join("data/in"), "changed\n").unwrap();
    built_id(&build(&s, ctx.path(), &["-q", "-t", "mounts:3"]));
    assert_eq!(
        s.ok(&["run", "--rm", "mounts:3", "/bin/busybox", "cat", "/copied"]),
        "changed\n"
    );
    assert!(!ctx.path().join("data/new").exists());
}

#[test]
fn onbuild_triggers_run_in_the_child_build_with_its_context() {
    let s = Skiff::new();
    let base = context(&[(
        "Dockerfile",
        "FROM scratch\nCOPY busybox /bin/busybox\nONBUILD COPY greeting.txt /app/\nONBUILD RUN [\"/bin/busybox\", \"cp\", \"/app/greeting.txt\", \"/app/copy.txt\"]\n",
    )]);
    let id = built_id(&build(&s, base.path(), &["-q", "-t", "onbuild-base"]));
    assert_eq!(
        config(&s, &id)["config"]["OnBuild"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let child = context(&[
        (
            "Dockerfile",
            "FROM onbuild-base\nCMD [\"/bin/busybox\", \"cat\", \"/app/copy.txt\"]\n",
        ),
        ("greeting.txt", "from the child's context\n"),
    ]);
    let id = built_id(&build(&s, child.path(), &["-q", "-t", "onbuild-child"]));
    assert_eq!(
        s.ok(&["run", "--rm", "onbuild-child"]),
        "from the child's context\n"
    );
    assert!(
        config(&s, &id)["config"].get("OnBuild").is_none(),
        "triggers are not inherited"
    );
}

#[test]
fn heredoc_scripts_run_by_their_shebang_or_the_shell_and_venv_works() {
    let s = Skiff::new();
    s.ok(&["load", "-q", "-i", base_image("python").to_str().unwrap()]);
    let ctx = tempfile::tempdir().unwrap();
    fs::write(
        ctx.path().join("Dockerfile"),
        "FROM python:3.11-slim\n\
         RUN <<EOF\n#!/usr/bin/env python3\nimport sys\nopen('/py.txt', 'w').write('python %d\\n' % sys.version_info[0])\nEOF\n\
         RUN <<-SCRIPT\n\tset -e\n\techo \"shell heredoc\" > /sh.txt\n\tSCRIPT\n\
         RUN cat > /cat.txt <<'EOT'\nliteral $HOME\nEOT\n\
         RUN python -m venv /opt/venv && /opt/venv/bin/pip --version > /venv.txt\n\
         CMD cat /py.txt /sh.txt /cat.txt && grep -c /opt/venv /venv.txt\n",
    )
    .unwrap();
    built_id(&build(&s, ctx.path(), &["-q", "-t", "heredocs"]));
    assert_eq!(
        s.ok(&["run", "--rm", "heredocs"]),
        "python 3\nshell heredoc\nliteral $HOME\n1\n"
    );
}
