//! The control API: HTTP/1.1 JSON on `$SKIFF_ROOT/skiff.sock` (root only,
//! no token), and with `skiff serve --control ADDR` on TCP too, where every
//! request needs `Authorization: Bearer <token>` (`SKIFF_TOKEN`, else
//! `$SKIFF_ROOT/control.token`; see `auth`) or gets 401 before anything is read.
//!
//! ```text
//! POST   /v1/services/{name}/revisions   body: ServiceSpec → 201 {service, revision, traffic, urls}
//!        ?traffic=none: only create the revision
//!        ?base=REV: 409 unless REV is still the newest revision
//! PUT    /v1/services/{name}/traffic     body: [TrafficTarget] → {service, traffic}
//! GET    /v1/services                    → [{name, revision, instances, urls}]
//! GET    /v1/services/{name}             → {name, revisions, traffic, instances, urls}
//! DELETE /v1/services/{name}             → {deleted}
//! POST   /v1/services/{name}/invoke      a Lambda-mode service: as the Invoke API
//!        (payload body, X-Amz-Invocation-Type, X-Amz-Log-Type, ?Qualifier=)
//! ```
//! Errors are `{"error": "..."}` with 400 (bad input), 401 (TCP: no or wrong token), 404 or 500.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use skiff_core::{Mode, RevisionName, RevisionStatus, ServiceName, ServiceSpec, TrafficTarget};
use skiff_state::StateError;

use super::instances::{Revision, Unavailable};
use super::{all_traffic_to, json, json_error, service_name, Body, Daemon};
use crate::context::Context;

/// A deploy body larger than this is not a spec.
const MAX_BODY: usize = 1 << 20;

pub async fn handle(daemon: Arc<Daemon>, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_string();
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let method = req.method().clone();
    match (method, segs.as_slice()) {
        (Method::GET, ["v1", "services"]) => list(&daemon).await,
        (Method::GET, ["v1", "services", name]) => describe(&daemon, name).await,
        (Method::DELETE, ["v1", "services", name]) => delete(&daemon, name).await,
        (Method::POST, ["v1", "services", name, "revisions"]) => {
            let name = name.to_string();
            deploy(&daemon, &name, req).await
        }
        (Method::PUT, ["v1", "services", name, "traffic"]) => {
            let name = name.to_string();
            traffic(&daemon, &name, req).await
        }
        (Method::POST, ["v1", "services", name, "invoke"]) => {
            let name = name.to_string();
            let qualifier = req.uri().query().and_then(|q| {
                q.split('&')
                    .find_map(|kv| kv.strip_prefix("Qualifier="))
                    .map(str::to_string)
            });
            let req = req.map(super::incoming);
            super::lambda::invoke::invoke(&daemon, &name, qualifier, req, false)
                .await
                .1
        }
        _ => json_error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// Runs `f` on the state database off the async threads.
pub(super) async fn with_state<T: Send + 'static>(
    daemon: &Daemon,
    f: impl FnOnce(&skiff_state::State) -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    let root = daemon.root.clone();
    tokio::task::spawn_blocking(move || {
        let ctx = Context::new(root.to_path_buf());
        let state = ctx.state().map_err(internal)?;
        f(state)
    })
    .await
    .unwrap_or_else(|e| Err(internal(e)))
}

/// An answer other than success, made into a response at the end.
pub(super) struct ApiError {
    pub status: StatusCode,
    pub why: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, why: impl std::fmt::Display) -> ApiError {
        ApiError {
            status,
            why: why.to_string(),
        }
    }
}

impl From<ApiError> for Response<Body> {
    fn from(e: ApiError) -> Self {
        json_error(e.status, e.why)
    }
}

fn internal(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e)
}

fn state_err(e: StateError) -> ApiError {
    match e {
        StateError::Invalid(_) | StateError::RevisionFailed { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, e)
        }
        StateError::NoSuchService(_) | StateError::NoSuchRevision(_) => {
            ApiError::new(StatusCode::NOT_FOUND, e)
        }
        _ => internal(e),
    }
}

fn urls(daemon: &Daemon, name: &str) -> Value {
    let port = daemon.gateway.port();
    json!([
        format!("http://{name}.localhost:{port}/"),
        format!("http://{}/{name}/", daemon.gateway),
    ])
}

fn parse_name(name: &str) -> Result<ServiceName, ApiError> {
    ServiceName::new(name).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))
}

/// Creates a revision. The first of a service takes all traffic at once
/// (nothing else could serve). A later one starts one instance while the
/// old split keeps serving, and takes all traffic once that instance is
/// ready; if none can start, the revision is marked failed (with why) and
/// the split stays. The answer comes when that is decided.
async fn deploy(daemon: &Arc<Daemon>, name: &str, req: Request<Incoming>) -> Response<Body> {
    let name = match parse_name(name) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let query = req.uri().query().unwrap_or_default();
    let no_traffic = query.split('&').any(|p| p == "traffic=none");
    // `base=REV`: the revision the client merged its spec from (the CLI's
    // deploy keeps what its flags do not say); another deploy since then
    // would be undone by this one, so it is refused instead.
    let base = match query.split('&').find_map(|p| p.strip_prefix("base=")) {
        None => None,
        Some(b) => match b.parse::<RevisionName>() {
            Ok(b) => Some(b),
            Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("base: {e}")),
        },
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let spec: ServiceSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("service spec: {e}")),
    };
    match deploy_spec(daemon, name.clone(), spec, no_traffic, base).await {
        Ok((rev_name, traffic)) => json(
            StatusCode::CREATED,
            &json!({
                "service": name.as_str(),
                "revision": rev_name.to_string(),
                "traffic": traffic,
                "urls": urls(daemon, name.as_str()),
            }),
        ),
        Err(e) => e.into(),
    }
}

/// Deploys `spec` as the service's next revision (see `deploy`), if
/// `base` (when given) is still its newest; the revision, and how much
/// traffic it took: "all" or "none".
pub(super) async fn deploy_spec(
    daemon: &Arc<Daemon>,
    name: ServiceName,
    mut spec: ServiceSpec,
    no_traffic: bool,
    base: Option<RevisionName>,
) -> Result<(RevisionName, &'static str), ApiError> {
    // A Lambda runtime client takes one invocation at a time.
    if spec.mode == Mode::Lambda {
        spec.concurrency = 1;
    }
    spec.validate()
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, e))?;
    // The image here and its layers unpacked now, so that the first
    // request does not pay for it (and a bad image fails the deploy).
    let (root, image) = (daemon.root.clone(), spec.image.clone());
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let ctx = Context::new(root.to_path_buf());
        let img = crate::images::resolve_or_pull(&ctx, &image)?;
        ctx.store()?.layer_dirs(&img)?;
        Ok(())
    })
    .await
    .map_err(internal)?
    .map_err(|e| {
        // Named once: a failed pull says which image already.
        let why = format!("{e:#}");
        let why = if why.starts_with("image ") {
            why
        } else {
            format!("image {}: {why}", spec.image)
        };
        ApiError::new(StatusCode::BAD_REQUEST, why)
    })?;
    let one_at_a_time = daemon.changes.lock().await;
    let (n, s) = (name.clone(), spec.clone());
    let created = with_state(daemon, move |st| {
        if let Some(base) = base {
            let newest = st.list_revisions(&n).map_err(state_err)?;
            let newest = newest.first().map(|r| &r.name);
            if newest != Some(&base) {
                let now = newest.map_or("deleted".to_string(), |r| format!("now at {r}"));
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    format!("service {n} changed while this deploy read {base}'s settings ({now}): deploy again"),
                ));
            }
        }
        let first = st.traffic(&n).map_err(state_err)?.is_empty();
        let rev = st.create_revision(&n, &s).map_err(state_err)?;
        if first {
            st.set_traffic(&n, &all_traffic_to(&rev))
                .map_err(state_err)?;
        }
        Ok((rev, first))
    })
    .await;
    let (rev_name, first) = created?;
    let rev = Revision::new(
        rev_name.clone(),
        spec,
        daemon.root.clone(),
        daemon.hub.clone(),
    );
    let answer = |traffic: &'static str| {
        tracing::info!(revision = %rev_name, traffic, "deployed");
        Ok((rev_name.clone(), traffic))
    };
    if first {
        rev.ensure_min();
        let split = vec![super::Target {
            rev: rev.clone(),
            percent: 100,
            tag: None,
        }];
        retire(daemon.set_split(name.as_str(), Some(split)));
        return answer("all");
    }
    if no_traffic {
        return answer("none");
    }
    drop(one_at_a_time);

    // Readiness gate: one instance of the new revision, off the split.
    daemon.gate(&rev, true);
    let ready = rev.acquire().await;
    daemon.gate(&rev, false);
    let why = match ready {
        Ok(lease) => {
            drop(lease);
            None
        }
        Err(Unavailable::StartFailed(why)) => Some(why),
        Err(Unavailable::Timeout(t)) => Some(format!(
            "no instance was ready within the timeout ({}s)",
            t.as_secs_f64()
        )),
        // A fresh revision has no queue to fill; should it happen, the
        // revision did not fail either.
        Err(Unavailable::QueueFull(_)) => {
            rev.retire().await;
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{rev_name} could not be checked for readiness (overloaded); traffic unchanged"
                ),
            ));
        }
        // The daemon is stopping: the revision did not fail, it stays pending.
        Err(Unavailable::Retired) => {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the daemon stopped while {rev_name} started; traffic unchanged"),
            ))
        }
    };
    if let Some(why) = why {
        rev.retire().await;
        let (r, w) = (rev_name.clone(), why.clone());
        let _ = with_state(daemon, move |st| {
            st.set_revision_status(&r, RevisionStatus::Failed, Some(&w))
                .map_err(state_err)
        })
        .await;
        tracing::warn!(revision = %rev_name, "failed; traffic unchanged: {why}");
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("revision {rev_name} failed, traffic unchanged: {why}"),
        ));
    }
    let _one_at_a_time = daemon.changes.lock().await;
    let n = name.clone();
    let target = all_traffic_to(&rev_name);
    let set = with_state(daemon, move |st| {
        st.set_traffic(&n, &target).map_err(state_err)
    })
    .await;
    if let Err(e) = set {
        // Deleted meanwhile, say.
        rev.retire().await;
        return Err(e);
    }
    let split = daemon.targets(
        name.as_str(),
        &all_traffic_to(&rev_name),
        Vec::new(),
        Some(&rev),
    );
    retire(daemon.set_split(name.as_str(), Some(split)));
    answer("all")
}

/// Stops revisions that left a split, in the background.
fn retire(revs: Vec<Arc<Revision>>) {
    for r in revs {
        tokio::spawn(async move { r.retire().await });
    }
}

/// Replaces the whole split at once, or (invalid) changes nothing.
async fn traffic(daemon: &Arc<Daemon>, name: &str, req: Request<Incoming>) -> Response<Body> {
    let name = match parse_name(name) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let split: Vec<TrafficTarget> = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => {
            return json_error(
                StatusCode::BAD_REQUEST,
                format!(
                    "traffic: expected a JSON list of {{\"revision\", \"percent\", \"tag\"}} targets: {e}"
                ),
            )
        }
    };
    let _one_at_a_time = daemon.changes.lock().await;
    let n = name.clone();
    let set = with_state(daemon, move |st| {
        if st.get_service(&n).map_err(state_err)?.is_none() {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no service named {:?}", n.as_str()),
            ));
        }
        st.set_traffic(&n, &split).map_err(state_err)?;
        Ok((
            st.traffic(&n).map_err(state_err)?,
            st.list_revisions(&n).map_err(state_err)?,
        ))
    })
    .await;
    let (traffic, revisions) = match set {
        Ok(t) => t,
        Err(e) => return e.into(),
    };
    let targets = daemon.targets(name.as_str(), &traffic, revisions, None);
    for t in &targets {
        t.rev.ensure_min();
    }
    retire(daemon.set_split(name.as_str(), Some(targets)));
    tracing::info!(service = %name, "traffic set");
    json(
        StatusCode::OK,
        &json!({ "service": name.as_str(), "traffic": traffic }),
    )
}

async fn list(daemon: &Arc<Daemon>) -> Response<Body> {
    let services = match with_state(daemon, |st| st.list_services().map_err(state_err)).await {
        Ok(s) => s,
        Err(r) => return r.into(),
    };
    let rows: Vec<Value> = services
        .iter()
        .map(|s| {
            let split = daemon.split(s.name.as_str()).unwrap_or_default();
            json!({
                "name": s.name.as_str(),
                "revision": split.first().map(|t| t.rev.name.to_string()),
                "instances": split.iter().map(|t| t.rev.ready_count()).sum::<usize>(),
                "urls": urls(daemon, s.name.as_str()),
            })
        })
        .collect();
    json(StatusCode::OK, &Value::Array(rows))
}

async fn describe(daemon: &Arc<Daemon>, name: &str) -> Response<Body> {
    let name = match parse_name(name) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let n = name.clone();
    let found = with_state(daemon, move |st| {
        let Some(svc) = st.get_service(&n).map_err(state_err)? else {
            return Ok(None);
        };
        let revisions = st.list_revisions(&n).map_err(state_err)?;
        let traffic = st.traffic(&n).map_err(state_err)?;
        Ok(Some((svc, revisions, traffic)))
    })
    .await;
    let (svc, revisions, traffic) = match found {
        Ok(Some(f)) => f,
        Ok(None) => {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("no service named {:?}", name.as_str()),
            )
        }
        Err(r) => return r.into(),
    };
    let instances: Vec<_> = daemon
        .split(name.as_str())
        .unwrap_or_default()
        .iter()
        .flat_map(|t| t.rev.instances())
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "name": name.as_str(),
            "created_ms": svc.created_ms,
            "urls": urls(daemon, name.as_str()),
            "revisions": revisions,
            "traffic": traffic,
            "instances": instances,
        }),
    )
}

async fn delete(daemon: &Arc<Daemon>, name: &str) -> Response<Body> {
    let Some(name) = service_name(name) else {
        return json_error(StatusCode::NOT_FOUND, format!("no service named {name:?}"));
    };
    match delete_service(daemon, name.clone()).await {
        Ok(()) => json(StatusCode::OK, &json!({ "deleted": name.as_str() })),
        Err(e) => e.into(),
    }
}

/// Stops every instance of the service and forgets it (and its logs).
pub(super) async fn delete_service(
    daemon: &Arc<Daemon>,
    name: ServiceName,
) -> Result<(), ApiError> {
    let _one_at_a_time = daemon.changes.lock().await;
    let n = name.clone();
    if with_state(daemon, move |st| st.get_service(&n).map_err(state_err))
        .await?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            format!("no service named {:?}", name.as_str()),
        ));
    }
    // Out of the routing table first, so no request starts an instance anew.
    for rev in daemon.set_split(name.as_str(), None) {
        rev.retire().await;
    }
    let n = name.clone();
    with_state(daemon, move |st| st.delete_service(&n).map_err(state_err)).await?;
    // Its instances' logs outlived them, not the service.
    let (root, n) = (daemon.root.clone(), name.clone());
    let removed = tokio::task::spawn_blocking(move || {
        crate::logs::remove_service_logs(&Context::new(root.to_path_buf()), &n)
    });
    if let Ok(Err(e)) = removed.await {
        tracing::warn!(service = %name, "{e:#}");
    }
    tracing::info!(service = %name, "deleted");
    Ok(())
}
