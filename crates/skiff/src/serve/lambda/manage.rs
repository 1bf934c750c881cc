//! Enough of the Lambda management API for the `aws` CLI and the SDKs
//! (`--endpoint-url`) to handle container-image functions:
//!
//! ```text
//! POST   /2015-03-31/functions                        CreateFunction (PackageType Image)
//! GET    /2015-03-31/functions/                       ListFunctions
//! GET    /2015-03-31/functions/{name}                 GetFunction
//! GET    /2015-03-31/functions/{name}/configuration   GetFunctionConfiguration
//! PUT    /2015-03-31/functions/{name}/code            UpdateFunctionCode (ImageUri)
//! PUT    /2015-03-31/functions/{name}/configuration   UpdateFunctionConfiguration
//! DELETE /2015-03-31/functions/{name}                 DeleteFunction
//! PUT|POST|GET|DELETE /2019-09-25/functions/{name}/event-invoke-config
//!        (Put|Update|Get|Delete)FunctionEventInvokeConfig: retries and
//!        the on-failure destination of Event invocations
//! ```
//!
//! A function is a Lambda-mode service; every create or update is a new
//! revision (deployed as `skiff deploy` does: it takes the traffic once
//! an instance of it is ready).

use std::sync::Arc;
use std::time::Duration;

use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};
use skiff_core::{Mode, ServiceName, ServiceSpec};
use skiff_state::RevisionRecord;

use super::invoke::aws_error;
use super::DEFAULT_MEMORY;
use crate::serve::api::{delete_service, deploy_spec, with_state, ApiError};
use crate::serve::{full, read_body, Body, Daemon, ReadError};

/// Lambda's defaults for a new function.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3);
/// Lambda's limits.
const MAX_TIMEOUT_SECS: u64 = 900;
const MEMORY_MB: std::ops::RangeInclusive<u64> = 128..=10_240;
const MAX_REQUEST: usize = 1 << 20;

/// Is this one of the management calls?
pub fn is_manage_path(path: &str) -> bool {
    path == "/2015-03-31/functions"
        || (path.starts_with("/2015-03-31/functions/") && !path.ends_with("/invocations"))
        || (path.starts_with("/2019-09-25/functions/") && path.ends_with("/event-invoke-config"))
}

pub async fn handle(daemon: &Arc<Daemon>, req: Request<Body>) -> Response<Body> {
    let path = req.uri().path().to_string();
    if let Some(rest) = path.strip_prefix("/2019-09-25/functions/") {
        let fname = super::percent_decode(rest.trim_end_matches("/event-invoke-config"), false);
        let method = req.method().clone();
        let result = match method {
            Method::GET => event_config(daemon, &fname, None).await,
            Method::DELETE => event_config(daemon, &fname, Some(Value::Null)).await,
            _ => match body(req).await {
                Ok(b) => event_config(daemon, &fname, Some(b)).await,
                Err(e) => Err(e),
            },
        };
        return respond(result);
    }
    let segs: Vec<&str> = path
        .trim_start_matches("/2015-03-31/functions")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let segs: Vec<String> = segs
        .iter()
        .map(|s| super::percent_decode(s, false))
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let method = req.method().clone();
    let result = match (method, segs.as_slice()) {
        (Method::POST, []) => match body(req).await {
            Ok(b) => create(daemon, &b).await,
            Err(e) => Err(e),
        },
        (Method::GET, []) => list(daemon).await,
        (Method::GET, [name]) => get(daemon, name, true).await,
        (Method::GET, [name, "configuration"]) => get(daemon, name, false).await,
        (Method::PUT, [name, "code"]) => match body(req).await {
            Ok(b) => update(daemon, name, &b, true).await,
            Err(e) => Err(e),
        },
        (Method::PUT, [name, "configuration"]) => match body(req).await {
            Ok(b) => update(daemon, name, &b, false).await,
            Err(e) => Err(e),
        },
        (Method::DELETE, [name]) => delete(daemon, name).await,
        _ => Err(AwsError::new(
            StatusCode::NOT_FOUND,
            "UnknownOperationException",
            format!("Skiff does not implement {path} for this method"),
        )),
    };
    respond(result)
}

fn respond(result: Answer) -> Response<Body> {
    match result {
        Ok((status, v)) => {
            let text = if v.is_null() {
                String::new()
            } else {
                v.to_string()
            };
            let mut r = Response::new(full(text));
            *r.status_mut() = status;
            r.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            r
        }
        Err(e) => aws_error(e.status, e.kind, &e.message),
    }
}

#[derive(Debug)]
struct AwsError {
    status: StatusCode,
    kind: &'static str,
    message: String,
}

impl AwsError {
    fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> AwsError {
        AwsError {
            status,
            kind,
            message: message.into(),
        }
    }
    fn invalid(message: impl Into<String>) -> AwsError {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidParameterValueException",
            message,
        )
    }
}

impl From<ApiError> for AwsError {
    fn from(e: ApiError) -> AwsError {
        let kind = match e.status {
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => {
                "InvalidParameterValueException"
            }
            StatusCode::NOT_FOUND => "ResourceNotFoundException",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceException",
            _ => "ServiceException",
        };
        AwsError::new(e.status, kind, e.why)
    }
}

type Answer = Result<(StatusCode, Value), AwsError>;

async fn body(req: Request<Body>) -> Result<Value, AwsError> {
    let bytes = read_body(req.into_body(), MAX_REQUEST)
        .await
        .map_err(|e| match e {
            ReadError::TooLarge => AwsError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestTooLargeException",
                format!("the request is larger than {MAX_REQUEST} bytes"),
            ),
            ReadError::Broken(e) => AwsError::invalid(format!("cannot read the request: {e}")),
        })?;
    serde_json::from_slice(&bytes).map_err(|e| {
        AwsError::new(
            StatusCode::BAD_REQUEST,
            "InvalidRequestContentException",
            format!("Could not parse request body into json: {e}"),
        )
    })
}

fn name(s: &str) -> Result<ServiceName, AwsError> {
    // `name`, or the ARN the CLI may pass.
    let n = s.rsplit(":function:").next().unwrap_or(s);
    let n = n.split(':').next().unwrap_or(n);
    ServiceName::new(n).map_err(|e| {
        AwsError::invalid(format!(
            "FunctionName {s:?}: Skiff function names are service names: {e}"
        ))
    })
}

/// The function's revisions, newest first; not found unless Lambda-mode.
async fn revisions(daemon: &Arc<Daemon>, n: &ServiceName) -> Result<Vec<RevisionRecord>, AwsError> {
    let n2 = n.clone();
    let revs = with_state(daemon, move |st| {
        st.list_revisions(&n2)
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
    })
    .await?;
    match revs.first() {
        Some(r) if r.spec.mode == Mode::Lambda => Ok(revs),
        _ => Err(AwsError::new(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            format!(
                "Function not found: {}",
                daemon.hub.function_arn(n.as_str())
            ),
        )),
    }
}

async fn create(daemon: &Arc<Daemon>, req: &Value) -> Answer {
    let fname = req["FunctionName"]
        .as_str()
        .ok_or_else(|| AwsError::invalid("FunctionName is required"))?;
    let n = name(fname)?;
    match req["PackageType"].as_str() {
        Some("Image") => {}
        other => {
            return Err(AwsError::invalid(format!(
                "PackageType {}: Skiff runs container images; use --package-type Image --code ImageUri=IMAGE",
                other.unwrap_or("Zip")
            )))
        }
    }
    let image = req["Code"]["ImageUri"]
        .as_str()
        .ok_or_else(|| AwsError::invalid("Code.ImageUri is required for PackageType Image"))?;
    let exists = with_state(daemon, {
        let n = n.clone();
        move |st| {
            st.get_service(&n)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))
        }
    })
    .await?;
    if exists.is_some() {
        return Err(AwsError::new(
            StatusCode::CONFLICT,
            "ResourceConflictException",
            format!("Function already exist: {}", n.as_str()),
        ));
    }
    let mut spec = ServiceSpec {
        mode: Mode::Lambda,
        timeout: DEFAULT_TIMEOUT,
        memory: Some(DEFAULT_MEMORY),
        ..ServiceSpec::default()
    };
    // (Pulled and unpacked by the deploy: a bad URI fails it.)
    spec.image = image.to_string();
    configure(&mut spec, req)?;
    deploy(daemon, n, spec, StatusCode::CREATED).await
}

async fn update(daemon: &Arc<Daemon>, fname: &str, req: &Value, code: bool) -> Answer {
    let n = name(fname)?;
    let latest = revisions(daemon, &n).await?.remove(0);
    let mut spec = latest.spec;
    if code {
        let image = req["ImageUri"].as_str().ok_or_else(|| {
            AwsError::invalid("ImageUri is required (Skiff runs container images)")
        })?;
        spec.image = image.to_string();
    } else {
        configure(&mut spec, req)?;
    }
    deploy(daemon, n, spec, StatusCode::OK).await
}

async fn deploy(
    daemon: &Arc<Daemon>,
    n: ServiceName,
    spec: ServiceSpec,
    status: StatusCode,
) -> Answer {
    deploy_spec(daemon, n.clone(), spec, false, None).await?;
    let latest = revisions(daemon, &n).await?.remove(0);
    Ok((status, configuration(daemon, &n, &latest)))
}

/// Applies the configuration fields of a create or update request.
fn configure(spec: &mut ServiceSpec, req: &Value) -> Result<(), AwsError> {
    if let Some(t) = req.get("Timeout").filter(|v| !v.is_null()) {
        let t = t
            .as_u64()
            .filter(|t| (1..=MAX_TIMEOUT_SECS).contains(t))
            .ok_or_else(|| {
                AwsError::invalid(format!(
                    "Timeout {t}: expected 1 to {MAX_TIMEOUT_SECS} seconds"
                ))
            })?;
        spec.timeout = Duration::from_secs(t);
    }
    if let Some(m) = req.get("MemorySize").filter(|v| !v.is_null()) {
        let m = m
            .as_u64()
            .filter(|m| MEMORY_MB.contains(m))
            .ok_or_else(|| {
                AwsError::invalid(format!("MemorySize {m}: expected 128 to 10240 MB"))
            })?;
        spec.memory = Some(m << 20);
    }
    if let Some(vars) = req["Environment"].get("Variables").filter(|v| !v.is_null()) {
        let vars = vars
            .as_object()
            .ok_or_else(|| AwsError::invalid("Environment.Variables: expected an object"))?;
        spec.env = vars
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.clone())),
                _ => Err(AwsError::invalid(format!(
                    "Environment.Variables.{k}: expected a string"
                ))),
            })
            .collect::<Result<_, _>>()?;
    }
    let ic = &req["ImageConfig"];
    let list = |field: &str| -> Result<Option<Vec<String>>, AwsError> {
        match ic.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Array(a)) => a
                .iter()
                .map(|v| {
                    v.as_str().map(str::to_string).ok_or_else(|| {
                        AwsError::invalid(format!("ImageConfig.{field}: expected strings"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Some),
            Some(_) => Err(AwsError::invalid(format!(
                "ImageConfig.{field}: expected a list"
            ))),
        }
    };
    if let Some(c) = list("Command")? {
        spec.command = (!c.is_empty()).then_some(c);
    }
    if let Some(e) = list("EntryPoint")? {
        spec.entrypoint = Some(e);
    }
    if let Some(w) = ic.get("WorkingDirectory").and_then(Value::as_str) {
        spec.workdir = Some(w.to_string());
    }
    spec.validate()
        .map_err(|e| AwsError::invalid(e.to_string()))
}

/// Reads (`None`), sets (a request) or resets (`Null`) how Event
/// invocations are retried and where their failures go.
async fn event_config(daemon: &Arc<Daemon>, fname: &str, change: Option<Value>) -> Answer {
    let n = name(fname)?;
    let mut spec = revisions(daemon, &n).await?.remove(0).spec;
    if let Some(req) = change {
        if req.is_null() {
            spec.event_retries = ServiceSpec::default().event_retries;
            spec.on_failure = None;
        }
        if let Some(r) = req.get("MaximumRetryAttempts").filter(|v| !v.is_null()) {
            spec.event_retries = r
                .as_u64()
                .filter(|r| *r <= 2)
                .and_then(|r| u8::try_from(r).ok())
                .ok_or_else(|| {
                    AwsError::invalid(format!("MaximumRetryAttempts {r}: expected 0 to 2"))
                })?;
        }
        match req["DestinationConfig"]["OnFailure"].get("Destination") {
            Some(Value::String(d)) => spec.on_failure = Some(d.clone()),
            Some(Value::Null) | None => {}
            Some(other) => {
                return Err(AwsError::invalid(format!(
                    "DestinationConfig.OnFailure.Destination {other}: expected a string"
                )))
            }
        }
        if req["DestinationConfig"]["OnSuccess"]
            .get("Destination")
            .is_some_and(|d| !d.is_null())
        {
            return Err(AwsError::invalid(
                "DestinationConfig.OnSuccess: Skiff sends only failures to a destination",
            ));
        }
        spec.validate()
            .map_err(|e| AwsError::invalid(e.to_string()))?;
        deploy_spec(daemon, n.clone(), spec.clone(), false, None).await?;
    }
    let mut on_failure = json!({});
    if let Some(d) = &spec.on_failure {
        on_failure = json!({ "Destination": d });
    }
    Ok((
        StatusCode::OK,
        json!({
            "LastModified": skiff_state::now_ms() as f64 / 1000.0,
            "FunctionArn": format!("{}:$LATEST", daemon.hub.function_arn(n.as_str())),
            "MaximumRetryAttempts": spec.event_retries,
            "MaximumEventAgeInSeconds": 21600,
            "DestinationConfig": { "OnSuccess": {}, "OnFailure": on_failure },
        }),
    ))
}

async fn get(daemon: &Arc<Daemon>, fname: &str, whole: bool) -> Answer {
    let n = name(fname)?;
    let latest = revisions(daemon, &n).await?.remove(0);
    let config = configuration(daemon, &n, &latest);
    if !whole {
        return Ok((StatusCode::OK, config));
    }
    Ok((
        StatusCode::OK,
        json!({
            "Configuration": config,
            "Code": {
                "RepositoryType": "ECR",
                "ImageUri": latest.spec.image,
                "ResolvedImageUri": latest.spec.image,
            },
            "Tags": {},
        }),
    ))
}

async fn list(daemon: &Arc<Daemon>) -> Answer {
    let functions = with_state(daemon, |st| {
        let mut out = Vec::new();
        for svc in st
            .list_services()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?
        {
            let revs = st
                .list_revisions(&svc.name)
                .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e))?;
            if let Some(r) = revs
                .into_iter()
                .next()
                .filter(|r| r.spec.mode == Mode::Lambda)
            {
                out.push((svc.name, r));
            }
        }
        Ok(out)
    })
    .await?;
    let functions: Vec<Value> = functions
        .iter()
        .map(|(n, r)| configuration(daemon, n, r))
        .collect();
    Ok((StatusCode::OK, json!({ "Functions": functions })))
}

async fn delete(daemon: &Arc<Daemon>, fname: &str) -> Answer {
    let n = name(fname)?;
    revisions(daemon, &n).await?;
    delete_service(daemon, n).await?;
    Ok((StatusCode::NO_CONTENT, Value::Null))
}

/// A revision as Lambda's FunctionConfiguration.
fn configuration(daemon: &Daemon, n: &ServiceName, rev: &RevisionRecord) -> Value {
    let spec = &rev.spec;
    let vars: Map<String, Value> = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
        .collect();
    let mut image_config = Map::new();
    if let Some(c) = &spec.command {
        image_config.insert("Command".into(), json!(c));
    }
    if let Some(e) = &spec.entrypoint {
        image_config.insert("EntryPoint".into(), json!(e));
    }
    if let Some(w) = &spec.workdir {
        image_config.insert("WorkingDirectory".into(), json!(w));
    }
    let (state, reason) = match rev.status {
        skiff_core::RevisionStatus::Failed => {
            ("Failed", rev.status_reason.clone().unwrap_or_default())
        }
        // Lambda calls a function that can be invoked Active, instances or none.
        _ => ("Active", String::new()),
    };
    let mut c = json!({
        "FunctionName": n.as_str(),
        "FunctionArn": daemon.hub.function_arn(n.as_str()),
        "Role": format!("arn:aws:iam::{}:role/skiff", super::ACCOUNT),
        "CodeSize": 0,
        "Description": "",
        "Timeout": spec.timeout.as_secs(),
        "MemorySize": spec.memory.unwrap_or(DEFAULT_MEMORY) >> 20,
        "LastModified": iso8601(rev.created_ms),
        "CodeSha256": "",
        "Version": "$LATEST",
        "RevisionId": rev.name.to_string(),
        "PackageType": "Image",
        "State": state,
        "LastUpdateStatus": if state == "Failed" { "Failed" } else { "Successful" },
        "Architectures": ["x86_64"],
        "EphemeralStorage": { "Size": 512 },
        "TracingConfig": { "Mode": "PassThrough" },
    });
    if !vars.is_empty() {
        c["Environment"] = json!({ "Variables": vars });
    }
    if !image_config.is_empty() {
        c["ImageConfigResponse"] = json!({ "ImageConfig": image_config });
    }
    if !reason.is_empty() {
        c["StateReason"] = Value::from(reason.clone());
        c["LastUpdateStatusReason"] = Value::from(reason);
    }
    c
}

/// `2026-11-22T02:40:00.000+0000`, Lambda's LastModified format.
pub fn iso8601(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (y, m, d) = super::civil_from_days(secs.div_euclid(86_400));
    let t = secs.rem_euclid(86_400);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}+0000",
        t / 3600,
        t / 60 % 60,
        t % 60,
        ms.rem_euclid(1000)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_times() {
        assert!(is_manage_path("/2015-03-31/functions"));
        assert!(is_manage_path("/2015-03-31/functions/"));
        assert!(is_manage_path("/2015-03-31/functions/f/code"));
        assert!(!is_manage_path("/2015-03-31/functions/f/invocations"));
        assert_eq!(iso8601(1_583_348_638_390), "2020-03-04T19:03:58.390+0000");
    }

    #[test]
    fn configuration_fields() {
        let mut spec = ServiceSpec {
            image: "x".into(),
            mode: Mode::Lambda,
            ..ServiceSpec::default()
        };
        let req = json!({
            "Timeout": 10, "MemorySize": 256,
            "Environment": {"Variables": {"A": "1"}},
            "ImageConfig": {"Command": ["app.handler"], "EntryPoint": ["/lambda-entrypoint.sh"], "WorkingDirectory": "/var/task"},
        });
        configure(&mut spec, &req).unwrap();
        assert_eq!(spec.timeout, Duration::from_secs(10));
        assert_eq!(spec.memory, Some(256 << 20));
        assert_eq!(spec.env, vec![("A".to_string(), "1".to_string())]);
        assert_eq!(spec.command, Some(vec!["app.handler".to_string()]));
        assert_eq!(spec.workdir.as_deref(), Some("/var/task"));
        for bad in [
            json!({"Timeout": 0}),
            json!({"Timeout": 901}),
            json!({"MemorySize": 64}),
            json!({"Environment": {"Variables": {"A": 1}}}),
            json!({"ImageConfig": {"Command": "x"}}),
        ] {
            assert!(configure(&mut spec.clone(), &bad).is_err(), "{bad}");
        }
    }
}
