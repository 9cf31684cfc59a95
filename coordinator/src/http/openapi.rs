//! `GET /api/openapi.json`: the API's OpenAPI 3.0 document, generated from the code.
//!
//! The schemas come from the same `schemars` derives that produce the published JSON
//! Schemas of the wire types (so HTTP and NATS clients see one contract); query
//! parameters are generated from the handlers' query structs. Each operation is listed
//! once in [`operations`]; a test checks every listed route exists in the router.

use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{json, Map, Value};

use super::{events, jobs, sched, stats, workers, ErrorBody, Health};

/// One documented operation.
pub struct Op {
    pub method: &'static str,
    /// Axum path syntax: `/api/jobs/{id}`.
    pub path: &'static str,
    pub summary: &'static str,
    /// `None`: public; `Some("viewer" | "operator")`: the role it needs.
    pub role: Option<&'static str>,
    /// Streams Server-Sent Events rather than returning JSON.
    pub sse: bool,
}

const fn op(
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    role: Option<&'static str>,
) -> Op {
    Op {
        method,
        path,
        summary,
        role,
        sse: false,
    }
}

const V: Option<&str> = Some("viewer");
const O: Option<&str> = Some("operator");

/// Every route of the API.
pub fn operations() -> Vec<Op> {
    vec![
        op("get", "/health", "Status, uptime and readiness of NATS, JetStream, buckets and the scheduler leader", None),
        op("get", "/api/openapi.json", "This document", None),
        op("get", "/api/whoami", "The caller's token name and role", V),
        op("get", "/api/jobs", "List jobs, newest first, filtered and paged", V),
        op("post", "/api/jobs", "Submit a job (body: a job spec); 201, or 200 for a repeat of an idempotency key", O),
        op("get", "/api/jobs/{id}", "One job: spec, state, lease, epoch, attempts", V),
        op("post", "/api/jobs/{id}/cancel", "Cancel a job; a running process is killed", O),
        Op { sse: true, ..op("get", "/api/jobs/{id}/logs/stream", "A job's log over SSE: replays from the start (or after Last-Event-ID), then follows; id = GF_LOGS stream sequence; `end` event when the job is over", V) },
        op("get", "/api/workers", "List workers with capabilities, slots and heartbeat", V),
        op("post", "/api/workers/{id}/drain", "Drain a worker: it finishes running jobs and claims nothing new", O),
        op("post", "/api/workers/{id}/undrain", "Undrain a worker: it claims jobs again", O),
        op("get", "/api/events", "Recent events from GF_EVENTS, newest first", V),
        Op { sse: true, ..op("get", "/api/events/stream", "Every event as it is published, over SSE; id = GF_EVENTS stream sequence", V) },
        op("get", "/api/stats", "Counters, throughput and latency series, model usage", V),
        op("post", "/api/jobs/{id}/requeue", "Send a dead, cancelled or rejected job round again (attempts reset, new epoch)", O),
        op("post", "/api/jobs/{id}/reject", "Refuse a pending or blocked job: it ends rejected with the reason", O),
        op("get", "/api/jobs/{id}/explain", "Why the job is where it is: score terms, each live worker's fit, what it waits for", V),
        op("get", "/api/jobs/{id}/dag", "The job with its dependencies and children, transitively", V),
        op("post", "/api/jobs/{id}/children", "Submit a child job under this one; the parent's completion waits for it", O),
        op("get", "/api/budgets", "Budgets of every product: limits, spend, history", V),
        op("get", "/api/budgets/{product}", "One product's budget", V),
        op("put", "/api/budgets/{product}", "Change a product's limits, period or pause", O),
        op("get", "/api/schedules", "Cron schedules", V),
        op("post", "/api/schedules", "Add a cron schedule", O),
        op("delete", "/api/schedules/{name}", "Remove a cron schedule", O),
        op("get", "/api/profiles", "Job profiles (named templates) from the coordinators' configuration", V),
        op("post", "/api/manifests", "Submit a manifest: named jobs with dependencies by name, as one unit; 201 if it created jobs, 200 if all existed", O),
        op("get", "/api/manifests/{name}", "A manifest's jobs (dependencies first) and their states", V),
        op("get", "/api/bridge/deliveries", "Echoes of bridged jobs' state changes to their trackers, with attempts and last error", V),
        op("post", "/api/bridge/deliveries/{id}/redeliver", "Send a delivery again (same id), at the end of its source's queue", O),
        op("post", "/api/bridge/{source}", "A tracker's webhook (public: authenticated by its signature, GitHub X-Hub-Signature-256 or Standard Webhooks); 201 if it created a job", None),
    ]
}

/// A JSON Schema generator configured for OpenAPI 3.0.
fn generator(serialize: bool) -> SchemaGenerator {
    let s = SchemaSettings::openapi3();
    if serialize {
        s.for_serialize().into_generator()
    } else {
        s.into_generator()
    }
}

/// The inline schema of an input type (deserialize contract), and the definitions it
/// refers to (added to `components`).
fn input_schema<T: JsonSchema>(components: &mut Map<String, Value>) -> Value {
    let mut v = generator(false).into_root_schema_for::<T>().to_value();
    if let Some(obj) = v.as_object_mut() {
        obj.remove("$schema");
        if let Some(Value::Object(defs)) = obj
            .remove("components")
            .and_then(|mut c| c.get_mut("schemas").map(Value::take))
        {
            for (k, d) in defs {
                components.entry(k).or_insert(d);
            }
        }
    }
    v
}

/// Query parameters from a query struct's fields.
fn query_params<T: JsonSchema>(components: &mut Map<String, Value>) -> Vec<Value> {
    let s = input_schema::<T>(components);
    let required: Vec<&str> = s["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    s["properties"]
        .as_object()
        .map(|props| {
            props
                .iter()
                .map(|(name, schema)| {
                    let mut schema = schema.clone();
                    let description = schema
                        .as_object_mut()
                        .and_then(|o| o.remove("description"))
                        .unwrap_or(Value::Null);
                    // `nullable` means nothing for a query parameter: absent is "none".
                    if let Some(o) = schema.as_object_mut() {
                        o.remove("nullable");
                        o.remove("default");
                    }
                    json!({"name": name, "in": "query", "required": required.contains(&name.as_str()),
                           "description": description, "schema": schema})
                })
                .collect()
        })
        .unwrap_or_default()
}

fn json_content(schema: Value) -> Value {
    json!({"application/json": {"schema": schema}})
}

/// The whole document.
pub fn document() -> Value {
    let mut out = generator(true);
    let mut components = Map::new();
    let error_ref = out.subschema_for::<ErrorBody>().to_value();
    let error =
        |desc: &str| json!({"description": desc, "content": json_content(error_ref.clone())});

    let mut paths = Map::new();
    for op in operations() {
        let mut params: Vec<Value> = Vec::new();
        if op.path.contains("{id}") {
            params.push(json!({"name": "id", "in": "path", "required": true,
                "description": if op.path.starts_with("/api/workers") { "worker id" } else if op.path.starts_with("/api/bridge") { "delivery id" } else { "job id (UUID)" },
                "schema": {"type": "string"}}));
        }
        for (name, desc) in [
            ("product", "product name"),
            ("name", "schedule or manifest name"),
            ("source", "bridge source name"),
        ] {
            if op.path.contains(&format!("{{{name}}}")) {
                params.push(json!({"name": name, "in": "path", "required": true, "description": desc, "schema": {"type": "string"}}));
            }
        }
        let mut body = None;
        let (code, ok): (&str, Value) = match (op.method, op.path) {
            ("get", "/health") => ("200", out.subschema_for::<Health>().to_value()),
            ("get", "/api/openapi.json") => ("200", json!({"type": "object"})),
            ("get", "/api/whoami") => (
                "200",
                out.subschema_for::<super::auth::Identity>().to_value(),
            ),
            ("get", "/api/jobs") => {
                params.extend(query_params::<jobs::ListQuery>(&mut components));
                ("200", out.subschema_for::<jobs::JobPage>().to_value())
            }
            ("post", "/api/jobs") => {
                body = Some(input_schema::<gf_schemas::JobSpec>(&mut components));
                (
                    "201",
                    out.subschema_for::<gf_schemas::rpc::SubmitReply>()
                        .to_value(),
                )
            }
            ("get", "/api/jobs/{id}") => (
                "200",
                out.subschema_for::<gf_schemas::JobRecord>().to_value(),
            ),
            ("post", "/api/jobs/{id}/cancel") => {
                body = Some(input_schema::<jobs::CancelBody>(&mut components));
                (
                    "200",
                    out.subschema_for::<gf_schemas::rpc::CancelReply>()
                        .to_value(),
                )
            }
            ("get", "/api/workers") => {
                params.extend(query_params::<workers::ListQuery>(&mut components));
                (
                    "200",
                    out.subschema_for::<Vec<workers::WorkerView>>().to_value(),
                )
            }
            ("post", p) if p.starts_with("/api/workers/") => {
                ("200", out.subschema_for::<workers::DrainReply>().to_value())
            }
            ("get", "/api/events") => {
                params.extend(query_params::<events::RecentQuery>(&mut components));
                ("200", out.subschema_for::<events::EventPage>().to_value())
            }
            ("get", "/api/stats") => ("200", out.subschema_for::<stats::Stats>().to_value()),
            ("post", "/api/jobs/{id}/requeue") => (
                "200",
                out.subschema_for::<gf_schemas::rpc::CancelReply>()
                    .to_value(),
            ),
            ("post", "/api/jobs/{id}/reject") => {
                body = Some(input_schema::<sched::ReasonBody>(&mut components));
                (
                    "200",
                    out.subschema_for::<gf_schemas::rpc::CancelReply>()
                        .to_value(),
                )
            }
            ("get", "/api/jobs/{id}/explain") => (
                "200",
                out.subschema_for::<gf_schemas::Explanation>().to_value(),
            ),
            ("get", "/api/jobs/{id}/dag") => (
                "200",
                out.subschema_for::<gf_schemas::rpc::Dag>().to_value(),
            ),
            ("post", "/api/jobs/{id}/children") => {
                body = Some(input_schema::<gf_schemas::JobSpec>(&mut components));
                (
                    "201",
                    out.subschema_for::<gf_schemas::rpc::SubmitReply>()
                        .to_value(),
                )
            }
            ("get", "/api/budgets") => (
                "200",
                out.subschema_for::<Vec<gf_schemas::Budget>>().to_value(),
            ),
            ("get", "/api/budgets/{product}") => {
                ("200", out.subschema_for::<gf_schemas::Budget>().to_value())
            }
            ("put", "/api/budgets/{product}") => {
                body = Some(input_schema::<sched::BudgetBody>(&mut components));
                ("200", out.subschema_for::<gf_schemas::Budget>().to_value())
            }
            ("get", "/api/schedules") => (
                "200",
                out.subschema_for::<Vec<gf_schemas::Schedule>>().to_value(),
            ),
            ("post", "/api/schedules") => {
                body = Some(input_schema::<gf_schemas::Schedule>(&mut components));
                (
                    "201",
                    out.subschema_for::<gf_schemas::Schedule>().to_value(),
                )
            }
            ("delete", "/api/schedules/{name}") => ("204", json!({"type": "string"})),
            ("get", "/api/profiles") => (
                "200",
                out.subschema_for::<Vec<gf_schemas::NamedProfile>>()
                    .to_value(),
            ),
            ("post", "/api/manifests") => {
                body = Some(input_schema::<gf_schemas::Manifest>(&mut components));
                (
                    "201",
                    out.subschema_for::<gf_schemas::ManifestStatus>().to_value(),
                )
            }
            ("get", "/api/manifests/{name}") => (
                "200",
                out.subschema_for::<gf_schemas::ManifestStatus>().to_value(),
            ),
            ("get", "/api/bridge/deliveries") => {
                params.extend(query_params::<gf_schemas::bridge::DeliveryQuery>(
                    &mut components,
                ));
                (
                    "200",
                    out.subschema_for::<Vec<gf_schemas::bridge::Delivery>>()
                        .to_value(),
                )
            }
            ("post", "/api/bridge/deliveries/{id}/redeliver") => (
                "200",
                out.subschema_for::<gf_schemas::bridge::Delivery>()
                    .to_value(),
            ),
            ("post", "/api/bridge/{source}") => {
                body = Some(json!({"type": "object", "description": "the tracker's JSON payload"}));
                (
                    "201",
                    out.subschema_for::<gf_schemas::bridge::WebhookReply>()
                        .to_value(),
                )
            }
            _ => ("200", json!({"type": "string"})),
        };
        if op.sse {
            params.push(json!({"name": "Last-Event-ID", "in": "header", "required": false,
                "description": "resume right after this stream sequence", "schema": {"type": "integer", "minimum": 0}}));
        }
        let mut responses = Map::new();
        if op.sse {
            responses.insert(
                "200".into(),
                json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
            );
        } else {
            responses.insert(
                code.into(),
                json!({"description": "success", "content": json_content(ok)}),
            );
        }
        if op.method == "post" && (op.path == "/api/manifests" || op.path == "/api/bridge/{source}")
        {
            let what = if op.path == "/api/manifests" {
                "every job existed already"
            } else {
                "nothing new: an existing item, a repeated delivery, or no matching rule"
            };
            let schema = if op.path == "/api/manifests" {
                out.subschema_for::<gf_schemas::ManifestStatus>().to_value()
            } else {
                out.subschema_for::<gf_schemas::bridge::WebhookReply>()
                    .to_value()
            };
            responses.insert(
                "200".into(),
                json!({"description": what, "content": json_content(schema)}),
            );
        }
        if op.method == "post" && op.path == "/api/jobs" {
            responses.insert("200".into(), json!({"description": "a repeat of an idempotency key: the first job",
                "content": json_content(out.subschema_for::<gf_schemas::rpc::SubmitReply>().to_value())}));
            responses.insert("413".into(), error("body too large"));
        }
        if op.path != "/health" && op.path != "/api/openapi.json" {
            responses.insert("400".into(), error("malformed or invalid input"));
            responses.insert(
                "401".into(),
                error(if op.role.is_none() {
                    "missing or wrong signature"
                } else {
                    "no or unknown API token"
                }),
            );
            responses.insert(
                "503".into(),
                error("the job store is unreachable; retry later"),
            );
        }
        if op.role == O {
            responses.insert("403".into(), error("the token's role is viewer"));
        }
        if op.path.contains('{') {
            responses.insert(
                "404".into(),
                error("no such job, worker, budget or schedule"),
            );
        }
        if op.path.ends_with("cancel")
            || op.path.contains("drain")
            || op.path.ends_with("requeue")
            || op.path.ends_with("reject")
            || op.path.ends_with("children")
            || op.path == "/api/schedules"
        {
            responses.insert(
                "409".into(),
                error("the job or worker is in a state that does not allow it"),
            );
        }
        let mut o = json!({
            "summary": op.summary,
            "operationId": format!("{}_{}", op.method, op.path.trim_start_matches('/').replace(['/', '{', '}', '.'], "_")),
            "parameters": params,
            "responses": responses,
        });
        match op.role {
            None => o["security"] = json!([]),
            Some(role) => o["x-required-role"] = json!(role),
        }
        if let Some(b) = body {
            let required = !(op.path.ends_with("cancel") || op.path.ends_with("reject"));
            o["requestBody"] = json!({"required": required, "content": json_content(b)});
        }
        paths
            .entry(op.path.to_string())
            .or_insert_with(|| json!({}))[op.method] = o;
    }
    for (k, v) in out.take_definitions(true) {
        components.insert(k, v);
    }
    json!({
        "openapi": "3.0.3",
        "info": {
            "title": "Gigafactory coordinator API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Jobs, workers, events and stats of a Gigafactory fleet. Errors are {\"error\": {\"kind\", \"message\"}}. Reads need a viewer token, actions an operator token (Authorization: Bearer), unless auth is disabled."
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}
        },
        "security": [{"bearer": []}],
    })
}

pub async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every `$ref` in the document points at a schema it defines.
    #[test]
    fn refs_resolve() {
        let doc = document();
        let defs = doc["components"]["schemas"].as_object().unwrap().clone();
        fn walk(v: &Value, defs: &Map<String, Value>, bad: &mut Vec<String>) {
            match v {
                Value::Object(o) => {
                    if let Some(Value::String(r)) = o.get("$ref") {
                        let name = r.trim_start_matches("#/components/schemas/");
                        if !defs.contains_key(name) {
                            bad.push(r.clone());
                        }
                    }
                    o.values().for_each(|x| walk(x, defs, bad));
                }
                Value::Array(a) => a.iter().for_each(|x| walk(x, defs, bad)),
                _ => {}
            }
        }
        let mut bad = Vec::new();
        walk(&doc, &defs, &mut bad);
        assert!(bad.is_empty(), "dangling refs: {bad:?}");
        assert!(doc["paths"]["/api/jobs"]["get"]["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "state"));
        assert!(defs.contains_key("JobRecord"));
    }
}
