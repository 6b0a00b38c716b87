//! A fake Kubernetes API server, faithful enough that kube-rs cannot tell:
//! HTTP on 127.0.0.1 with the real URL layout and wire format.
//!
//! What it does like the real one:
//! - list with a collection `resourceVersion`; watch from a resourceVersion,
//!   streaming `ADDED`/`MODIFIED`/`DELETED` events as JSON lines; a watch from
//!   a compacted resourceVersion gets `ERROR` 410 Gone, so clients relist;
//! - create (409 AlreadyExists, `generateName`), get, update with optimistic
//!   concurrency (409 Conflict on a stale `resourceVersion`), JSON merge
//!   patch, JSON patch (RFC 6902), strategic merge patch, server-side apply
//!   with field ownership (409 Conflict when another manager owns a field
//!   with a different value, unless forced);
//! - delete honouring finalizers (`deletionTimestamp`, removal when the last
//!   finalizer goes); `status` subresources (main-resource writes keep
//!   status, status writes keep the rest);
//! - the resources doryd and its libraries use: PVCs, PVs, StorageClasses,
//!   core and events.k8s.io Events, Leases.
//!
//! Where it differs (documented, not hidden):
//! - strategic merge patch is a JSON merge patch: lists are replaced, never
//!   merged by key (doryd never patches a keyed list);
//! - no admission, defaulting, validation or schema: objects are stored as
//!   sent, plus uid, resourceVersion, creationTimestamp and generation;
//! - label and field selectors, pagination (`limit`/`continue`) and
//!   bookmarks are ignored: lists are always complete;
//! - server-side apply tracks ownership of leaf fields only and never
//!   removes fields an applier stopped sending;
//! - one global resourceVersion counter, as etcd has, but history is kept in
//!   memory until [`FakeApiServer::compact`].

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

/// The resources served: URL plural, API group/version, kind, namespaced,
/// has a status subresource.
const RESOURCES: &[(&str, &str, &str, bool, bool)] = &[
    ("persistentvolumeclaims", "v1", "PersistentVolumeClaim", true, true),
    ("persistentvolumes", "v1", "PersistentVolume", false, true),
    ("events", "v1", "Event", true, false),
    ("storageclasses", "storage.k8s.io/v1", "StorageClass", false, false),
    ("events", "events.k8s.io/v1", "Event", true, false),
    ("leases", "coordination.k8s.io/v1", "Lease", true, false),
    ("nodes", "v1", "Node", false, true),
];

/// Identifies a stored object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectKey {
    /// API group/version, e.g. `v1` or `storage.k8s.io/v1`.
    pub api: String,
    /// URL plural, e.g. `persistentvolumeclaims`.
    pub plural: String,
    /// Namespace, empty for cluster-scoped objects.
    pub namespace: String,
    /// Name.
    pub name: String,
}

#[derive(Clone, Debug)]
struct WatchEvent {
    rv: u64,
    api: String,
    plural: String,
    namespace: String,
    kind: &'static str,
    object: Value,
}

#[derive(Default)]
struct State {
    rv: u64,
    uid: u64,
    objects: BTreeMap<ObjectKey, Value>,
    /// Field owners for server-side apply, per object: leaf path -> manager.
    owners: HashMap<ObjectKey, BTreeMap<String, String>>,
    history: Vec<WatchEvent>,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted_below: u64,
    /// Requests seen, per verb and plural, for assertions.
    requests: BTreeMap<String, u64>,
}

/// An API error in the Kubernetes `Status` shape.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self { code, reason, message: message.into() }
    }

    fn body(&self) -> Value {
        json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        })
    }
}

/// The fake API server; dropping it stops serving.
pub struct FakeApiServer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    disconnect: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApiServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

impl FakeApiServer {
    /// Starts serving on 127.0.0.1 on a free port.
    pub async fn start() -> Self {
        Self::start_on(0).await.expect("bind fake API server")
    }

    /// Starts serving on 127.0.0.1:`port` (0 for a free one).
    pub async fn start_on(port: u16) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(Mutex::new(State { rv: 1, ..State::default() }));
        let (events, _) = broadcast::channel(65_536);
        let (disconnect, _) = watch::channel(0u64);
        let shared = Shared { state: state.clone(), events: events.clone(), disconnect: disconnect.clone() };
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        let shared = shared.clone();
                        async move { Ok::<_, Infallible>(shared.handle(request).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Self { addr, state, events, disconnect, task })
    }

    /// The server's URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig file's content pointing at this server.
    pub fn kubeconfig(&self) -> String {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: {}\n\
             contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    namespace: default\n\
             current-context: fake\nusers:\n- name: fake\n  user:\n    token: fake-token\n",
            self.url()
        )
    }

    fn shared(&self) -> Shared {
        Shared { state: self.state.clone(), events: self.events.clone(), disconnect: self.disconnect.clone() }
    }

    /// Creates an object as a client would (`apiVersion` and `kind` from the body).
    pub fn create(&self, object: Value) -> Result<Value, ApiError> {
        let (api, plural, namespaced) = resource_of(&object)?;
        let namespace = if namespaced {
            object["metadata"]["namespace"].as_str().unwrap_or("default").to_owned()
        } else {
            String::new()
        };
        self.shared().create(&api, &plural, &namespace, object)
    }

    /// One object, if it exists.
    pub fn get(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let key = ObjectKey { api: api.into(), plural: plural.into(), namespace: namespace.into(), name: name.into() };
        self.state.lock().unwrap().objects.get(&key).cloned()
    }

    /// Every object of a resource.
    pub fn list(&self, api: &str, plural: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.objects.iter().filter(|(k, _)| k.api == api && k.plural == plural).map(|(_, v)| v.clone()).collect()
    }

    /// Applies `change` to a stored object as an update (bumps the
    /// resourceVersion, notifies watchers, completes deletion when the last
    /// finalizer goes). `status` says whether it is a status write.
    pub fn update_with(
        &self,
        api: &str,
        plural: &str,
        namespace: &str,
        name: &str,
        change: impl FnOnce(&mut Value),
    ) -> Result<Value, ApiError> {
        let key = ObjectKey { api: api.into(), plural: plural.into(), namespace: namespace.into(), name: name.into() };
        self.shared().modify(&key, None, |object| {
            change(object);
            Ok(())
        })
    }

    /// Deletes an object as a client would.
    pub fn delete(&self, api: &str, plural: &str, namespace: &str, name: &str) -> Result<Value, ApiError> {
        let key = ObjectKey { api: api.into(), plural: plural.into(), namespace: namespace.into(), name: name.into() };
        self.shared().delete(&key)
    }

    /// Forgets watch history: watches from an older resourceVersion now get
    /// 410 Gone and their clients must relist.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted_below = state.rv + 1;
        state.history.clear();
    }

    /// Ends every open watch stream, as an API server restart or a load
    /// balancer timeout would.
    pub fn disconnect_watches(&self) {
        self.disconnect.send_modify(|n| *n += 1);
    }

    /// How many requests of a verb (`list`, `watch`, `get`, `create`,
    /// `update`, `patch`, `delete`) reached a resource plural.
    pub fn request_count(&self, verb: &str, plural: &str) -> u64 {
        self.state.lock().unwrap().requests.get(&format!("{verb} {plural}")).copied().unwrap_or(0)
    }

    /// Objects of a resource that match `predicate`.
    pub fn count(&self, api: &str, plural: &str, predicate: impl Fn(&Value) -> bool) -> usize {
        self.list(api, plural).iter().filter(|o| predicate(o)).count()
    }
}

fn resource_of(object: &Value) -> Result<(String, String, bool), ApiError> {
    let api = object["apiVersion"].as_str().unwrap_or_default();
    let kind = object["kind"].as_str().unwrap_or_default();
    RESOURCES
        .iter()
        .find(|(_, a, k, _, _)| *a == api && *k == kind)
        .map(|(plural, a, _, namespaced, _)| ((*a).to_owned(), (*plural).to_owned(), *namespaced))
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "NotFound", format!("no resource for {api} {kind}")))
}

fn has_status_subresource(api: &str, plural: &str) -> bool {
    RESOURCES.iter().any(|(p, a, _, _, status)| *p == plural && *a == api && *status)
}

fn kind_of(api: &str, plural: &str) -> &'static str {
    RESOURCES.iter().find(|(p, a, ..)| *p == plural && *a == api).map(|(_, _, k, ..)| *k).unwrap_or("Unknown")
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}

#[derive(Clone)]
struct Shared {
    state: Arc<Mutex<State>>,
    events: broadcast::Sender<WatchEvent>,
    disconnect: watch::Sender<u64>,
}

/// A parsed request path.
struct Route {
    api: String,
    plural: String,
    namespace: Option<String>,
    name: Option<String>,
    status: bool,
}

fn parse_route(path: &str) -> Option<Route> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (api, rest) = match parts.as_slice() {
        ["api", "v1", rest @ ..] => ("v1".to_owned(), rest),
        ["apis", group, version, rest @ ..] => (format!("{group}/{version}"), rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (Some((*ns).to_owned()), rest),
        _ => (None, rest),
    };
    let (plural, name, status) = match rest {
        [plural] => (*plural, None, false),
        [plural, name] => (*plural, Some((*name).to_owned()), false),
        [plural, name, "status"] => (*plural, Some((*name).to_owned()), true),
        _ => return None,
    };
    let known = RESOURCES.iter().find(|(p, a, ..)| *p == plural && *a == api)?;
    if known.3 && name.is_some() && namespace.is_none() {
        return None;
    }
    Some(Route { api, plural: plural.to_owned(), namespace, name, status })
}

fn query(request: &Request<Incoming>) -> HashMap<String, String> {
    request
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.replace("%3A", ":").replace("%2F", "/")))
        .collect()
}

fn full(status: StatusCode, value: &Value) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from(value.to_string())).boxed());
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().unwrap());
    response
}

fn error(err: ApiError) -> Response<Body> {
    full(err.code, &err.body())
}

impl Shared {
    async fn handle(self, request: Request<Incoming>) -> Response<Body> {
        let path = request.uri().path().to_owned();
        if path == "/version" {
            return full(StatusCode::OK, &json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-fake"}));
        }
        let Some(route) = parse_route(&path) else {
            return error(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("the server could not find {path}"),
            ));
        };
        let query = query(&request);
        let method = request.method().clone();
        let content_type =
            request.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let body = match request.into_body().collect().await {
            Ok(body) => body.to_bytes(),
            Err(_) => Bytes::new(),
        };
        let parsed: Option<Value> = if body.is_empty() { None } else { serde_json::from_slice(&body).ok() };
        let verb = match (&method, &route.name) {
            (&Method::GET, None) if query.get("watch").is_some_and(|w| w == "true" || w == "1") => "watch",
            (&Method::GET, None) => "list",
            (&Method::GET, Some(_)) => "get",
            (&Method::POST, _) => "create",
            (&Method::PUT, _) => "update",
            (&Method::PATCH, _) => "patch",
            (&Method::DELETE, _) => "delete",
            _ => "other",
        };
        *self.state.lock().unwrap().requests.entry(format!("{verb} {}", route.plural)).or_default() += 1;
        let namespace = route.namespace.clone().unwrap_or_default();
        let key = |name: &str| ObjectKey {
            api: route.api.clone(),
            plural: route.plural.clone(),
            namespace: namespace.clone(),
            name: name.to_owned(),
        };
        // Server-side apply of a missing object creates it: 201, as for POST.
        let created_by_apply = verb == "patch"
            && content_type.starts_with("application/apply-patch")
            && !self.state.lock().unwrap().objects.contains_key(&key(route.name.as_deref().unwrap_or_default()));
        let result = match verb {
            "watch" => return self.watch(&route, &query),
            "list" => Ok(self.list(&route)),
            "get" => {
                let state = self.state.lock().unwrap();
                state.objects.get(&key(route.name.as_deref().unwrap_or_default())).cloned().ok_or_else(|| {
                    ApiError::new(
                        StatusCode::NOT_FOUND,
                        "NotFound",
                        format!("{} \"{}\" not found", route.plural, route.name.as_deref().unwrap_or_default()),
                    )
                })
            }
            "create" => match parsed {
                Some(object) => self.create(&route.api, &route.plural, &namespace, object),
                None => Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "a JSON body is required")),
            },
            "update" => match parsed {
                Some(object) => self.update(&key(route.name.as_deref().unwrap_or_default()), object, route.status),
                None => Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "a JSON body is required")),
            },
            "patch" => match parsed {
                Some(patch) => {
                    let manager = query.get("fieldManager").cloned().unwrap_or_else(|| "unknown".into());
                    let force = query.get("force").is_some_and(|f| f == "true");
                    let name = route.name.clone().unwrap_or_default();
                    self.patch(&route, &namespace, &name, &content_type, patch, &manager, force)
                }
                None => Err(ApiError::new(StatusCode::BAD_REQUEST, "BadRequest", "a JSON body is required")),
            },
            "delete" => self.delete(&key(route.name.as_deref().unwrap_or_default())),
            _ => Err(ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "not supported")),
        };
        match result {
            Ok(value) if verb == "create" || created_by_apply => full(StatusCode::CREATED, &value),
            Ok(value) => full(StatusCode::OK, &value),
            Err(err) => error(err),
        }
    }

    fn list(&self, route: &Route) -> Value {
        let state = self.state.lock().unwrap();
        let items: Vec<Value> = state
            .objects
            .iter()
            .filter(|(k, _)| k.api == route.api && k.plural == route.plural)
            .filter(|(k, _)| route.namespace.as_ref().is_none_or(|ns| &k.namespace == ns))
            .map(|(_, v)| v.clone())
            .collect();
        json!({
            "kind": format!("{}List", kind_of(&route.api, &route.plural)),
            "apiVersion": route.api,
            "metadata": {"resourceVersion": state.rv.to_string()},
            "items": items,
        })
    }

    fn watch(&self, route: &Route, query: &HashMap<String, String>) -> Response<Body> {
        let from: u64 = query.get("resourceVersion").and_then(|rv| rv.parse().ok()).unwrap_or(0);
        let timeout = query.get("timeoutSeconds").and_then(|t| t.parse().ok()).map(Duration::from_secs);
        let matches = {
            let (api, plural, namespace) = (route.api.clone(), route.plural.clone(), route.namespace.clone());
            move |event: &WatchEvent| {
                event.api == api && event.plural == plural && namespace.as_ref().is_none_or(|ns| &event.namespace == ns)
            }
        };
        let mut receiver = self.events.subscribe();
        let mut disconnect = self.disconnect.subscribe();
        disconnect.mark_unchanged();
        let (backlog, gone) = {
            let state = self.state.lock().unwrap();
            if from != 0 && from < state.compacted_below {
                (Vec::new(), true)
            } else {
                (state.history.iter().filter(|e| e.rv > from && matches(e)).cloned().collect::<Vec<_>>(), false)
            }
        };
        let line =
            |event: &WatchEvent| Bytes::from(format!("{}\n", json!({"type": event.kind, "object": event.object})));
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(1024);
        tokio::spawn(async move {
            if gone {
                let status = ApiError::new(StatusCode::GONE, "Expired", format!("too old resource version: {from}"));
                let _ = tx.send(Bytes::from(format!("{}\n", json!({"type": "ERROR", "object": status.body()})))).await;
                return;
            }
            let mut last = from;
            for event in &backlog {
                last = event.rv;
                if tx.send(line(event)).await.is_err() {
                    return;
                }
            }
            let deadline = tokio::time::sleep(timeout.unwrap_or(Duration::from_secs(3600)));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    () = &mut deadline => return,
                    _ = disconnect.changed() => return,
                    received = receiver.recv() => match received {
                        Ok(event) if event.rv > last && matches(&event) => {
                            last = event.rv;
                            if tx.send(line(&event)).await.is_err() {
                                return;
                            }
                        }
                        Ok(_) => {}
                        Err(broadcast::error::RecvError::Lagged(_)) | Err(broadcast::error::RecvError::Closed) => return,
                    },
                }
            }
        });
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|bytes| (Ok::<_, Infallible>(Frame::data(bytes)), rx))
        });
        let mut response = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        response.headers_mut().insert("content-type", "application/json".parse().unwrap());
        response
    }

    fn record(&self, state: &mut State, key: &ObjectKey, kind: &'static str, object: &Value) {
        let event = WatchEvent {
            rv: state.rv,
            api: key.api.clone(),
            plural: key.plural.clone(),
            namespace: key.namespace.clone(),
            kind,
            object: object.clone(),
        };
        state.history.push(event.clone());
        let _ = self.events.send(event);
    }

    fn create(&self, api: &str, plural: &str, namespace: &str, mut object: Value) -> Result<Value, ApiError> {
        let mut state = self.state.lock().unwrap();
        if !object["metadata"].is_object() {
            object["metadata"] = json!({});
        }
        let name = match object["metadata"]["name"].as_str().filter(|n| !n.is_empty()) {
            Some(name) => name.to_owned(),
            None => match object["metadata"]["generateName"].as_str() {
                Some(prefix) => format!("{prefix}{:05x}", state.uid + 1),
                None => {
                    return Err(ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", "metadata.name: Required"));
                }
            },
        };
        let key = ObjectKey { api: api.into(), plural: plural.into(), namespace: namespace.into(), name: name.clone() };
        if state.objects.contains_key(&key) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "AlreadyExists",
                format!("{plural} \"{name}\" already exists"),
            ));
        }
        state.rv += 1;
        state.uid += 1;
        let uid = format!("{:08x}-0000-4000-8000-{:012x}", state.uid, state.uid);
        let metadata = object["metadata"].as_object_mut().expect("metadata object");
        metadata.insert("name".into(), json!(name));
        if !namespace.is_empty() {
            metadata.insert("namespace".into(), json!(namespace));
        }
        metadata.insert("uid".into(), json!(uid));
        metadata.insert("resourceVersion".into(), json!(state.rv.to_string()));
        metadata.insert("creationTimestamp".into(), json!(now_rfc3339()));
        metadata.insert("generation".into(), json!(1));
        metadata.remove("deletionTimestamp");
        object["apiVersion"] = json!(api);
        object["kind"] = json!(kind_of(api, plural));
        state.objects.insert(key.clone(), object.clone());
        self.record(&mut state, &key, "ADDED", &object);
        Ok(object)
    }

    /// Changes a stored object under the lock: `change` edits it; the
    /// server then bumps the resourceVersion, finishes a deletion whose
    /// finalizers are gone and notifies watchers. `expected_rv` enforces
    /// optimistic concurrency.
    fn modify(
        &self,
        key: &ObjectKey,
        expected_rv: Option<&str>,
        change: impl FnOnce(&mut Value) -> Result<(), ApiError>,
    ) -> Result<Value, ApiError> {
        let mut state = self.state.lock().unwrap();
        let Some(current) = state.objects.get(key).cloned() else {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "NotFound",
                format!("{} \"{}\" not found", key.plural, key.name),
            ));
        };
        let current_rv = current["metadata"]["resourceVersion"].as_str().unwrap_or_default().to_owned();
        if let Some(expected) = expected_rv.filter(|rv| !rv.is_empty())
            && expected != current_rv
        {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "Conflict",
                format!(
                    "Operation cannot be fulfilled on {} \"{}\": the object has been modified; please apply your changes to the latest version and try again",
                    key.plural, key.name
                ),
            ));
        }
        let mut object = current.clone();
        change(&mut object)?;
        // Identity fields are the server's.
        for field in ["uid", "creationTimestamp", "name", "namespace", "deletionTimestamp"] {
            match current["metadata"].get(field) {
                Some(value) => object["metadata"][field] = value.clone(),
                None => {
                    if let Some(metadata) = object["metadata"].as_object_mut() {
                        metadata.remove(field);
                    }
                }
            }
        }
        if object == current {
            return Ok(current);
        }
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        let deleting = object["metadata"].get("deletionTimestamp").is_some();
        let finalizers_left = object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty());
        if deleting && !finalizers_left {
            state.objects.remove(key);
            state.owners.remove(key);
            self.record(&mut state, key, "DELETED", &object);
        } else {
            state.objects.insert(key.clone(), object.clone());
            self.record(&mut state, key, "MODIFIED", &object);
        }
        Ok(object)
    }

    fn update(&self, key: &ObjectKey, object: Value, status_only: bool) -> Result<Value, ApiError> {
        let expected = object["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        let with_status = has_status_subresource(&key.api, &key.plural);
        self.modify(key, expected.as_deref(), |stored| {
            let old = stored.clone();
            if status_only {
                stored["status"] = object.get("status").cloned().unwrap_or(Value::Null);
            } else {
                *stored = object;
                if with_status {
                    set_status(stored, old.get("status").cloned());
                }
            }
            Ok(())
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn patch(
        &self,
        route: &Route,
        namespace: &str,
        name: &str,
        content_type: &str,
        patch: Value,
        manager: &str,
        force: bool,
    ) -> Result<Value, ApiError> {
        let key = ObjectKey {
            api: route.api.clone(),
            plural: route.plural.clone(),
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        };
        let apply = content_type.starts_with("application/apply-patch");
        if apply && !self.state.lock().unwrap().objects.contains_key(&key) {
            let mut object = patch.clone();
            object["metadata"]["name"] = json!(name);
            let created = self.create(&route.api, &route.plural, namespace, object)?;
            let mut state = self.state.lock().unwrap();
            let owners = state.owners.entry(key).or_default();
            for path in leaf_paths(&patch) {
                owners.insert(path, manager.to_owned());
            }
            return Ok(created);
        }
        let status_only = route.status;
        let with_status = has_status_subresource(&route.api, &route.plural);
        let expected = patch["metadata"]["resourceVersion"].as_str().map(str::to_owned);
        let (before, owners_before) = {
            let state = self.state.lock().unwrap();
            (state.objects.get(&key).cloned(), state.owners.get(&key).cloned().unwrap_or_default())
        };
        let result = self.modify(&key, expected.as_deref(), |stored| {
            let old = stored.clone();
            if apply {
                if !force {
                    for path in leaf_paths(&patch) {
                        let owner = owners_before.get(&path);
                        let current = value_at(stored, &path);
                        let wanted = value_at(&patch, &path);
                        if owner.is_some_and(|o| o != manager) && current.is_some() && current != wanted {
                            return Err(ApiError::new(
                                StatusCode::CONFLICT,
                                "Conflict",
                                format!("Apply failed with 1 conflict: conflict with \"{}\": {path}", owner.unwrap()),
                            ));
                        }
                    }
                }
                merge_patch(stored, &patch);
            } else if content_type.starts_with("application/json-patch") {
                json_patch(stored, &patch)?;
            } else {
                // merge-patch+json and strategic-merge-patch+json
                merge_patch(stored, &patch);
            }
            if with_status {
                if status_only {
                    let status = stored.get("status").cloned();
                    *stored = old.clone();
                    set_status(stored, status);
                } else {
                    set_status(stored, old.get("status").cloned());
                }
            }
            Ok(())
        })?;
        // Field ownership: appliers own what they sent; updaters own what
        // they changed; removed fields are owned by nobody.
        let mut state = self.state.lock().unwrap();
        let owners = state.owners.entry(key).or_default();
        if apply {
            for path in leaf_paths(&patch) {
                owners.insert(path, manager.to_owned());
            }
        } else if let Some(before) = before {
            let after_paths = leaf_paths(&result);
            owners.retain(|path, _| after_paths.contains(path));
            for path in after_paths {
                if value_at(&before, &path) != value_at(&result, &path) {
                    owners.insert(path, manager.to_owned());
                }
            }
        }
        Ok(result)
    }

    fn delete(&self, key: &ObjectKey) -> Result<Value, ApiError> {
        let has_finalizers = {
            let state = self.state.lock().unwrap();
            let Some(object) = state.objects.get(key) else {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    format!("{} \"{}\" not found", key.plural, key.name),
                ));
            };
            object["metadata"]["finalizers"].as_array().is_some_and(|f| !f.is_empty())
        };
        let mut state = self.state.lock().unwrap();
        let Some(mut object) = state.objects.get(key).cloned() else {
            return Err(ApiError::new(StatusCode::NOT_FOUND, "NotFound", "gone"));
        };
        if has_finalizers {
            if object["metadata"].get("deletionTimestamp").is_none() {
                state.rv += 1;
                object["metadata"]["deletionTimestamp"] = json!(now_rfc3339());
                object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
                state.objects.insert(key.clone(), object.clone());
                self.record(&mut state, key, "MODIFIED", &object);
            }
            return Ok(object);
        }
        state.rv += 1;
        object["metadata"]["resourceVersion"] = json!(state.rv.to_string());
        state.objects.remove(key);
        state.owners.remove(key);
        self.record(&mut state, key, "DELETED", &object);
        Ok(object)
    }
}

/// Sets or removes an object's `status`.
fn set_status(object: &mut Value, status: Option<Value>) {
    match status {
        Some(status) => object["status"] = status,
        None => {
            if let Some(map) = object.as_object_mut() {
                map.remove("status");
            }
        }
    }
}

/// Every leaf path of a JSON object, dotted (`spec.holderIdentity`),
/// without `apiVersion`, `kind` and identity metadata.
fn leaf_paths(value: &Value) -> Vec<String> {
    fn walk(value: &Value, prefix: &str, out: &mut Vec<String>) {
        match value {
            Value::Object(map) if !map.is_empty() => {
                for (k, v) in map {
                    let path = if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") };
                    walk(v, &path, out);
                }
            }
            Value::Null => {}
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    walk(value, "", &mut out);
    out.retain(|p| {
        !matches!(
            p.as_str(),
            "apiVersion" | "kind" | "metadata.name" | "metadata.namespace" | "metadata.resourceVersion"
        )
    });
    out
}

fn value_at<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, part| v.get(part)).filter(|v| !v.is_null())
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(patch_map) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            let map = target.as_object_mut().expect("object");
            for (key, value) in patch_map {
                if value.is_null() {
                    map.remove(key);
                } else {
                    merge_patch(map.entry(key.clone()).or_insert(Value::Null), value);
                }
            }
        }
        other => *target = other.clone(),
    }
}

/// RFC 6902 JSON patch: add, remove, replace, test.
fn json_patch(target: &mut Value, patch: &Value) -> Result<(), ApiError> {
    let invalid = |m: String| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", m);
    let ops = patch.as_array().ok_or_else(|| invalid("a JSON patch is a list of operations".into()))?;
    for op in ops {
        let path = op["path"].as_str().ok_or_else(|| invalid("op without path".into()))?;
        let parts: Vec<String> = path.split('/').skip(1).map(|p| p.replace("~1", "/").replace("~0", "~")).collect();
        let (last, parents) = parts.split_last().ok_or_else(|| invalid("empty path".into()))?;
        let mut parent = &mut *target;
        for part in parents {
            parent = match parent {
                Value::Object(map) => map.get_mut(part),
                Value::Array(items) => part.parse::<usize>().ok().and_then(|i| items.get_mut(i)),
                _ => None,
            }
            .ok_or_else(|| invalid(format!("path {path} does not exist")))?;
        }
        match op["op"].as_str().unwrap_or_default() {
            "test" => {
                let current = match &*parent {
                    Value::Object(map) => map.get(last),
                    Value::Array(items) => last.parse::<usize>().ok().and_then(|i| items.get(i)),
                    _ => None,
                };
                if current != Some(&op["value"]) {
                    return Err(invalid(format!("test failed at {path}")));
                }
            }
            "remove" => match parent {
                Value::Object(map) => {
                    map.remove(last).ok_or_else(|| invalid(format!("nothing to remove at {path}")))?;
                }
                Value::Array(items) => {
                    let index = last.parse::<usize>().map_err(|_| invalid(format!("bad index in {path}")))?;
                    if index >= items.len() {
                        return Err(invalid(format!("nothing to remove at {path}")));
                    }
                    items.remove(index);
                }
                _ => return Err(invalid(format!("cannot remove at {path}"))),
            },
            "add" | "replace" => {
                let value = op["value"].clone();
                match parent {
                    Value::Object(map) => {
                        map.insert(last.clone(), value);
                    }
                    Value::Array(items) if last == "-" => items.push(value),
                    Value::Array(items) => {
                        let index = last.parse::<usize>().map_err(|_| invalid(format!("bad index in {path}")))?;
                        if op["op"] == "add" && index <= items.len() {
                            items.insert(index, value);
                        } else if index < items.len() {
                            items[index] = value;
                        } else {
                            return Err(invalid(format!("index out of range in {path}")));
                        }
                    }
                    _ => return Err(invalid(format!("cannot {} at {path}", op["op"]))),
                }
            }
            other => return Err(invalid(format!("unsupported op {other}"))),
        }
    }
    Ok(())
}
