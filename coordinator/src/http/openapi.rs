//! `GET /api/openapi.json`: the API's OpenAPI document, derived from the router.
//!
//! Every route of the API is registered through `aide` (`api_route` with the
//! operation's summary), so the document is generated from the routes themselves: a
//! route cannot be served without being described. Request bodies, query parameters
//! and responses come from the handlers' types (the same `schemars` derives as the
//! published JSON Schemas, so HTTP and NATS clients see one contract); [`finish`] adds
//! what follows from a route's path, method and role by rule: path parameters, the
//! role it needs (`x-required-role`, or `security: []` when public), the error
//! responses, and the event-stream responses of SSE routes.

use std::sync::Arc;

use aide::openapi::OpenApi;
use axum::{Extension, Json};
use serde_json::{json, Map, Value};

use super::auth;

/// Describes a path parameter by its name in the route's template.
fn path_param(path: &str, name: &str) -> Value {
    let description = match name {
        "id" if path.starts_with("/api/workers") => "worker id",
        "id" if path.starts_with("/api/bridge") => "delivery id",
        "id" => "job id (UUID)",
        "product" => "product name",
        "name" if path.starts_with("/api/manifests") => "manifest name",
        "name" if path.contains("/artifacts/") => "artifact path (URL-encoded)",
        "name" => "schedule name",
        "source" => "bridge source name",
        _ => "",
    };
    json!({"name": name, "in": "path", "required": true, "description": description,
           "schema": {"type": "string"}})
}

fn error_response(desc: &str) -> Value {
    json!({"description": desc, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}}})
}

/// Completes the generated document by rule (see the module's documentation).
pub fn finish(api: OpenApi) -> Value {
    let mut doc = serde_json::to_value(&api).expect("the document serializes");
    doc["info"] = json!({
        "title": "Gigafactory coordinator API",
        "version": env!("CARGO_PKG_VERSION"),
        "description": "Jobs, workers, events, stats, profiles, manifests and the tracker bridge of a Gigafactory fleet. Errors are {\"error\": {\"kind\", \"message\"}}. Reads need a viewer token, actions an operator token (Authorization: Bearer), unless auth is disabled; x-required-role names the role of each operation."
    });
    doc["security"] = json!([{"bearer": []}]);
    let mut components = match doc.get_mut("components").map(Value::take) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    components.insert(
        "securitySchemes".into(),
        json!({"bearer": {"type": "http", "scheme": "bearer"}}),
    );
    let schemas = components
        .entry("schemas")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("schemas is an object");
    if !schemas.contains_key("ErrorBody") {
        let mut g = schemars::generate::SchemaSettings::draft2020_12().into_generator();
        schemas.insert(
            "ErrorBody".into(),
            g.root_schema_for::<super::ErrorBody>().to_value(),
        );
    }
    doc["components"] = Value::Object(components);

    let Some(paths) = doc["paths"].as_object_mut() else {
        return doc;
    };
    for (path, item) in paths.iter_mut() {
        let Some(item) = item.as_object_mut() else {
            continue;
        };
        for (method, op) in item.iter_mut() {
            let Some(op) = op.as_object_mut() else {
                continue;
            };
            let m: axum::http::Method = match method.to_uppercase().parse() {
                Ok(m) => m,
                Err(_) => continue,
            };
            let public = auth::is_public(&m, path) || path == "/health";
            let sse = path.ends_with("/stream");
            // Path parameters, from the template.
            let params = op
                .entry("parameters")
                .or_insert_with(|| json!([]))
                .as_array_mut()
                .expect("parameters is an array");
            for name in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            {
                if !params
                    .iter()
                    .any(|p| p["name"] == name && p["in"] == "path")
                {
                    params.push(path_param(path, name));
                }
            }
            if sse {
                params.push(json!({"name": "Last-Event-ID", "in": "header", "required": false,
                    "description": "resume right after this stream sequence", "schema": {"type": "integer", "minimum": 0}}));
            }
            // The role.
            if public {
                op.insert("security".into(), json!([]));
            } else {
                op.insert(
                    "x-required-role".into(),
                    json!(auth::needed(&m, path).as_str()),
                );
            }
            // Responses.
            let has_body = op.contains_key("requestBody");
            let responses = op
                .entry("responses")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("responses is an object");
            if sse {
                responses.insert(
                    "200".into(),
                    json!({"description": "text/event-stream", "content": {"text/event-stream": {"schema": {"type": "string"}}}}),
                );
            }
            if path == "/api/schedules/{name}" && method == "delete" {
                responses.insert("204".into(), json!({"description": "removed"}));
            }
            if responses.is_empty() {
                responses.insert("200".into(), json!({"description": "success"}));
            }
            if path == "/health" {
                responses.insert(
                    "503".into(),
                    json!({"description": "degraded: NATS or the buckets are not reachable", "content": responses.get("200").and_then(|r| r.get("content")).cloned().unwrap_or(json!({}))}),
                );
            }
            if path != "/health" && path != "/api/openapi.json" {
                responses.insert("400".into(), error_response("malformed or invalid input"));
                responses.insert(
                    "401".into(),
                    error_response(if public {
                        "missing or wrong signature"
                    } else {
                        "no or unknown API token"
                    }),
                );
                responses.insert(
                    "503".into(),
                    error_response("the job store is unreachable; retry later"),
                );
            }
            if !public && auth::needed(&m, path) == crate::config::Role::Operator {
                responses.insert("403".into(), error_response("the token's role is viewer"));
            }
            if path.contains('{') {
                responses.insert(
                    "404".into(),
                    error_response(
                        "no such job, worker, budget, schedule, manifest, source, delivery, factory or token",
                    ),
                );
            }
            if has_body {
                responses.insert("413".into(), error_response("body too large"));
                // Bodies that may be left out.
                let optional = ["/cancel", "/reject"].iter().any(|s| path.ends_with(s));
                if optional {
                    op.get_mut("requestBody").expect("checked")["required"] = json!(false);
                }
            }
            let conflicts = [
                "/cancel",
                "/drain",
                "/undrain",
                "/requeue",
                "/reject",
                "/children",
            ]
            .iter()
            .any(|s| path.ends_with(s))
                || (path == "/api/schedules" && method == "post");
            if conflicts {
                let responses = op
                    .get_mut("responses")
                    .and_then(Value::as_object_mut)
                    .expect("responses");
                responses.insert(
                    "409".into(),
                    error_response("the job or worker is in a state that does not allow it"),
                );
            }
        }
    }
    doc
}

/// The document, made once when the router was built.
pub async fn serve(Extension(doc): Extension<Arc<Value>>) -> Json<Value> {
    Json((*doc).clone())
}
