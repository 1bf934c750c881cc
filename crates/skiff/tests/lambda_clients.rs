//! Real Lambda clients against Skiff: a Python function on the
//! `public.ecr.aws/lambda/python:3.11` base (made offline by
//! scripts/base-images.sh) runs AWS's own runtime interface client
//! (awslambdaric), managed and invoked with the real `aws` CLI and boto3
//! (from PyPI, in /var/cache/skiff-venv: scripts/pytools.sh).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::daemon::Daemon;
use common::{base_image, load_layered, Skiff};

const VENV: &str = "/var/cache/skiff-venv";

const APP: &str = r#"import os, time
def handler(event, context):
    if event.get("fail"):
        raise ValueError("asked to fail")
    if event.get("sleep"):
        time.sleep(event["sleep"])
    print("handling", context.aws_request_id)
    return {"echo": event, "function": context.function_name,
            "memory": context.memory_limit_in_mb, "A": os.environ.get("A")}
"#;

const BOTO: &str = r#"import json, sys, concurrent.futures as cf
import boto3, botocore
c = boto3.client("lambda", endpoint_url=sys.argv[1], region_name="us-east-1",
                 aws_access_key_id="test", aws_secret_access_key="test",
                 config=botocore.config.Config(retries={"max_attempts": 0}, read_timeout=120))
def call(i):
    r = c.invoke(FunctionName="pyfn", Payload=json.dumps({"i": i}))
    return json.loads(r["Payload"].read())["echo"]["i"]
with cf.ThreadPoolExecutor(8) as ex:
    got = sorted(ex.map(call, range(16)))
assert got == list(range(16)), got
r = c.invoke(FunctionName="pyfn", Payload=b'{"fail": true}')
assert r["FunctionError"] == "Unhandled", r
assert json.loads(r["Payload"].read())["errorType"] == "ValueError"
r = c.invoke(FunctionName="pyfn", InvocationType="Event", Payload=b'{"async": 1}')
assert r["StatusCode"] == 202, r
try:
    c.invoke(FunctionName="missing", Payload=b"{}")
    raise SystemExit("no error for a missing function")
except c.exceptions.ResourceNotFoundException as e:
    assert "function:missing" in str(e), e
names = [f["FunctionName"] for f in c.list_functions()["Functions"]]
assert names == ["pyfn"], names
print("boto3 ok")
"#;

fn prerequisites() -> (PathBuf, PathBuf) {
    let aws = Path::new(VENV).join("bin/aws");
    let python = Path::new(VENV).join("bin/python");
    assert!(
        aws.is_file() && python.is_file(),
        "{VENV} with awscli and boto3 is missing: run scripts/pytools.sh (scripts/test.sh does)"
    );
    (aws, python)
}

/// `aws lambda ARGS...` against the gateway; stdout, or the failure.
fn aws(aws: &Path, gw: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new(aws)
        .args([
            "--endpoint-url",
            &format!("http://127.0.0.1:{gw}"),
            "lambda",
        ])
        .args(args)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_MAX_ATTEMPTS", "1")
        .output()
        .expect("run aws");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn aws_cli_and_boto3_run_an_awslambdaric_function() {
    let (aws_bin, python) = prerequisites();
    let s = Skiff::new();
    let work = tempfile::tempdir().unwrap();
    let app = work.path().join("app.py");
    std::fs::write(&app, APP).unwrap();
    load_layered(
        &s,
        "localhost/pyfn:latest",
        &base_image("lambda"),
        &[(&app, "/var/task/app.py")],
        r#"["app.handler"]"#,
    );
    let d = Daemon::start(&s);
    let gw = d.gateway;
    let a = |args: &[&str]| aws(&aws_bin, gw, args);

    let created = a(&[
        "create-function",
        "--function-name",
        "pyfn",
        "--package-type",
        "Image",
        "--code",
        "ImageUri=localhost/pyfn:latest",
        "--role",
        "arn:aws:iam::000000000000:role/lambda",
        "--timeout",
        "30",
    ])
    .unwrap();
    let c = json(&created);
    assert_eq!(c["FunctionName"], "pyfn");
    assert_eq!(c["PackageType"], "Image");
    assert_eq!(c["Timeout"], 30);
    assert_eq!(c["State"], "Active");
    // A second create is a conflict.
    let e = a(&[
        "create-function",
        "--function-name",
        "pyfn",
        "--package-type",
        "Image",
        "--code",
        "ImageUri=localhost/pyfn:latest",
        "--role",
        "r",
    ])
    .unwrap_err();
    assert!(e.contains("ResourceConflictException"), "{e}");

    // Invoke (aws CLI v1 sends --payload as it is).
    let out = work.path().join("out.json");
    let meta = a(&[
        "invoke",
        "--function-name",
        "pyfn",
        "--payload",
        r#"{"n": 1}"#,
        "--log-type",
        "Tail",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let meta = json(&meta);
    assert_eq!(meta["StatusCode"], 200, "{meta}");
    assert_eq!(meta["ExecutedVersion"], "$LATEST");
    let result = json(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(result["echo"]["n"], 1);
    assert_eq!(result["function"], "pyfn");
    assert_eq!(result["memory"], "128");
    let log = Command::new("sh")
        .args([
            "-c",
            &format!("echo {} | base64 -d", meta["LogResult"].as_str().unwrap()),
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("handling "), "{log}");

    // A handler that raises: FunctionError and the Python error.
    let meta = json(
        &a(&[
            "invoke",
            "--function-name",
            "pyfn",
            "--payload",
            r#"{"fail": true}"#,
            out.to_str().unwrap(),
        ])
        .unwrap(),
    );
    assert_eq!(meta["FunctionError"], "Unhandled");
    let err = json(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(err["errorType"], "ValueError");
    assert_eq!(err["errorMessage"], "asked to fail");

    // Configuration and code updates are new revisions that take over.
    let c = json(
        &a(&[
            "update-function-configuration",
            "--function-name",
            "pyfn",
            "--environment",
            "Variables={A=configured}",
            "--memory-size",
            "256",
        ])
        .unwrap(),
    );
    assert_eq!(c["Environment"]["Variables"]["A"], "configured");
    assert_eq!(c["MemorySize"], 256);
    a(&[
        "invoke",
        "--function-name",
        "pyfn",
        "--payload",
        "{}",
        out.to_str().unwrap(),
    ])
    .unwrap();
    let result = json(&std::fs::read_to_string(&out).unwrap());
    assert_eq!(result["A"], "configured", "{result}");
    assert_eq!(result["memory"], "256");
    let c = json(
        &a(&[
            "update-function-code",
            "--function-name",
            "pyfn",
            "--image-uri",
            "localhost/pyfn:latest",
        ])
        .unwrap(),
    );
    assert_eq!(c["RevisionId"], "pyfn-00003");
    let e = a(&[
        "update-function-code",
        "--function-name",
        "pyfn",
        "--image-uri",
        "localhost/nothing-here:latest",
    ])
    .unwrap_err();
    assert!(e.contains("InvalidParameterValueException"), "{e}");
    let got = json(&a(&["get-function", "--function-name", "pyfn"]).unwrap());
    assert_eq!(got["Code"]["ImageUri"], "localhost/pyfn:latest");
    assert_eq!(
        got["Configuration"]["Environment"]["Variables"]["A"],
        "configured"
    );

    // boto3: concurrent invocations, errors, Event, exceptions by name.
    let script = work.path().join("client.py");
    std::fs::write(&script, BOTO).unwrap();
    let out = Command::new(&python)
        .arg(&script)
        .arg(format!("http://127.0.0.1:{gw}"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Event retries and the on-failure destination.
    let cfg = json(
        &a(&[
            "put-function-event-invoke-config",
            "--function-name",
            "pyfn",
            "--maximum-retry-attempts",
            "0",
            "--destination-config",
            r#"{"OnFailure":{"Destination":"http://127.0.0.1:9/dlq"}}"#,
        ])
        .unwrap(),
    );
    assert_eq!(cfg["MaximumRetryAttempts"], 0, "{cfg}");
    let cfg = json(
        &a(&[
            "get-function-event-invoke-config",
            "--function-name",
            "pyfn",
        ])
        .unwrap(),
    );
    assert_eq!(
        cfg["DestinationConfig"]["OnFailure"]["Destination"],
        "http://127.0.0.1:9/dlq"
    );

    a(&["delete-function", "--function-name", "pyfn"]).unwrap();
    let e = a(&["get-function", "--function-name", "pyfn"]).unwrap_err();
    assert!(e.contains("ResourceNotFoundException"), "{e}");
    assert!(s.ok(&["services"]).lines().all(|l| !l.contains("pyfn")));
}

#[test]
fn with_credentials_only_signed_requests_pass() {
    let (aws_bin, _) = prerequisites();
    let s = Skiff::new();
    let creds = s.root.path().join("aws-credentials");
    std::fs::write(
        &creds,
        "[default]\naws_access_key_id = AKIDSKIFF\naws_secret_access_key = s3cr3t-of-the-daemon\n",
    )
    .unwrap();
    let d = Daemon::start_with(&s, &["--aws-credentials", creds.to_str().unwrap()]);
    let run = |key: &str, secret: &str| {
        Command::new(&aws_bin)
            .args([
                "--endpoint-url",
                &format!("http://127.0.0.1:{}", d.gateway),
                "lambda",
                "list-functions",
            ])
            .env("AWS_ACCESS_KEY_ID", key)
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_MAX_ATTEMPTS", "1")
            .output()
            .unwrap()
    };
    let ok = run("AKIDSKIFF", "s3cr3t-of-the-daemon");
    assert!(ok.status.success(), "{ok:?}");
    assert_eq!(
        json(&String::from_utf8_lossy(&ok.stdout))["Functions"],
        serde_json::json!([])
    );
    let bad = run("AKIDSKIFF", "a-wrong-secret");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("InvalidSignatureException"),
        "{err}"
    );
    let bad = run("AKIDOTHER", "s3cr3t-of-the-daemon");
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("UnrecognizedClientException"), "{err}");
    // Unsigned: 403, nothing runs.
    let (code, _, body) = common::daemon::get(d.gateway, "127.0.0.1", "/2015-03-31/functions/");
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("MissingAuthenticationToken"), "{body}");
}
