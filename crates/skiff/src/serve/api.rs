//! The control API: HTTP/1.1 JSON on `$SKIFF_ROOT/skiff.sock`.
//!
//! ```text
//! POST   /v1/services/{name}/revisions   body: ServiceSpec → 201 {service, revision, urls}
//! GET    /v1/services                    → [{name, revision, instances, urls}]
//! GET    /v1/services/{name}             → {name, revisions, traffic, instances, urls}
//! DELETE /v1/services/{name}             → {deleted}
//! ```
//! Errors are `{"error": "..."}` with 400 (bad input), 404 or 500.

use std::sync::Arc;

use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use skiff_core::{ServiceName, ServiceSpec};
use skiff_state::StateError;

use super::instances::Revision;
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
        _ => json_error(StatusCode::NOT_FOUND, format!("no such endpoint: {path}")),
    }
}

/// Runs `f` on the state database off the async threads.
async fn with_state<T: Send + 'static>(
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
struct ApiError {
    status: StatusCode,
    why: String,
}

impl ApiError {
    fn new(status: StatusCode, why: impl std::fmt::Display) -> ApiError {
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
        StateError::Invalid(_) => ApiError::new(StatusCode::BAD_REQUEST, e),
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

async fn deploy(daemon: &Arc<Daemon>, name: &str, req: Request<Incoming>) -> Response<Body> {
    let name = match parse_name(name) {
        Ok(n) => n,
        Err(r) => return r.into(),
    };
    let body = match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("request body: {e}")),
    };
    let spec: ServiceSpec = match serde_json::from_slice(&body) {
        Ok(s) => s,
        Err(e) => return json_error(StatusCode::BAD_REQUEST, format!("service spec: {e}")),
    };
    if let Err(e) = spec.validate() {
        return json_error(StatusCode::BAD_REQUEST, e);
    }
    let _one_at_a_time = daemon.changes.lock().await;
    let (n, s) = (name.clone(), spec.clone());
    let created = with_state(daemon, move |st| {
        let rev = st.create_revision(&n, &s).map_err(state_err)?;
        st.set_traffic(&n, &all_traffic_to(&rev))
            .map_err(state_err)?;
        Ok(rev)
    })
    .await;
    let rev_name = match created {
        Ok(r) => r,
        Err(resp) => return resp.into(),
    };
    // Not yet readiness-gated: the new revision takes all traffic at once
    // and the old one drains.
    let rev = Revision::new(rev_name.clone(), spec, daemon.root.clone());
    rev.ensure_min();
    if let Some(old) = daemon.set_route(name.as_str(), Some(rev)) {
        tokio::spawn(async move { old.retire().await });
    }
    tracing::info!(revision = %rev_name, "deployed");
    json(
        StatusCode::CREATED,
        &json!({
            "service": name.as_str(),
            "revision": rev_name.to_string(),
            "urls": urls(daemon, name.as_str()),
        }),
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
            let rev = daemon.route(s.name.as_str());
            json!({
                "name": s.name.as_str(),
                "revision": rev.as_ref().map(|r| r.name.to_string()),
                "instances": rev.as_ref().map_or(0, |r| r.ready_count()),
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
    let instances = daemon
        .route(name.as_str())
        .map(|r| r.instances())
        .unwrap_or_default();
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
    let _one_at_a_time = daemon.changes.lock().await;
    let n = name.clone();
    match with_state(daemon, move |st| st.get_service(&n).map_err(state_err)).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return json_error(
                StatusCode::NOT_FOUND,
                format!("no service named {:?}", name.as_str()),
            )
        }
        Err(r) => return r.into(),
    }
    // Out of the routing table first, so no request starts an instance anew.
    if let Some(rev) = daemon.set_route(name.as_str(), None) {
        rev.retire().await;
    }
    let n = name.clone();
    if let Err(r) = with_state(daemon, move |st| st.delete_service(&n).map_err(state_err)).await {
        return r.into();
    }
    tracing::info!(service = %name, "deleted");
    json(StatusCode::OK, &json!({ "deleted": name.as_str() }))
}
