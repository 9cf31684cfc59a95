//! Distributed tracing: `tracing` spans exported to OpenTelemetry, with the W3C trace
//! context (`traceparent`, `tracestate`) carried in NATS message headers.
//!
//! One job is one trace: the client's submit request carries its context to the
//! coordinator, which stores the `traceparent` in the job record; the scheduler parents
//! its dispatch on it and puts it on the dispatch notice; the worker's claim, run and
//! completion are children of the notice. Spans follow the OpenTelemetry messaging
//! conventions: named `{operation} {subject}` with `messaging.system = "nats"`,
//! `messaging.destination.name` and `messaging.operation.type`.
//!
//! Without an exporter installed (no `tracing.otlp_endpoint`) the spans are plain
//! `tracing` spans and nothing is put in headers.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use async_nats::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

/// The W3C header that carries the trace id and parent span id.
pub const TRACEPARENT: &str = "traceparent";

struct Headers<'a>(&'a mut HeaderMap);

impl Injector for Headers<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key, value.as_str());
    }
}

struct ReadHeaders<'a>(&'a HeaderMap);

impl Extractor for ReadHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(|v| v.as_str())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_ref()).collect()
    }
}

/// Writes the current span's trace context into `headers`.
pub fn inject(headers: &mut HeaderMap) {
    inject_span(&Span::current(), headers);
}

/// Writes `span`'s trace context into `headers` (nothing when tracing is off).
pub fn inject_span(span: &Span, headers: &mut HeaderMap) {
    let cx = span.context();
    if cx.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&cx, &mut Headers(headers));
    }
}

/// The trace context carried by `headers` (an empty context when there is none).
pub fn extract(headers: Option<&HeaderMap>) -> Context {
    match headers {
        Some(h) => TraceContextPropagator::new().extract(&ReadHeaders(h)),
        None => Context::new(),
    }
}

/// The current span's context as a `traceparent` value, to store with a job.
pub fn current_traceparent() -> Option<String> {
    let cx = Span::current().context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove(TRACEPARENT)
}

/// `span`'s context as a `traceparent` value (`None` when tracing is off): to carry a
/// trace in a message body, e.g. one of many items sharing a message.
pub fn span_traceparent(span: &Span) -> Option<String> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    map.remove(TRACEPARENT)
}

/// Span for processing one item of a message that carries its own trace context
/// (`process gf.ctl.worker.*` for a lease granted at dispatch), parented by it.
pub fn consume_item_span(subject: &str, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        "grant.process",
        otel.name = %format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.operation.type = "process",
        messaging.operation.name = "start",
    );
    if let Some(tp) = traceparent {
        parent(&span, context_from_traceparent(tp));
    }
    span
}

/// The context a stored `traceparent` value names.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    let map = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    TraceContextPropagator::new().extract(&map)
}

/// The last subject token, a bounded operation name (`gf.rpc.submit` → `submit`).
fn operation_name(subject: &str) -> &str {
    subject.rsplit('.').next().unwrap_or(subject)
}

/// Span for a request sent to the coordinators (`send gf.rpc.submit`). `name` is the
/// subject's bounded form (a factory subject's factory as `*`: `gf.rpc.w.*.claim`),
/// `subject` the subject itself.
pub fn rpc_client_span(name: &str, subject: &str) -> Span {
    tracing::info_span!(
        "rpc.send",
        otel.name = %format!("send {name}"),
        otel.kind = "client",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.destination.template = %name,
        messaging.operation.type = "send",
        messaging.operation.name = "send",
        rpc.method = operation_name(name),
        otel.status_code = tracing::field::Empty,
    )
}

/// Span for a coordinator answering a request, parented by the request's headers
/// (`process gf.rpc.submit`); `name` as for [`rpc_client_span`].
pub fn rpc_server_span(name: &str, subject: &str, headers: Option<&HeaderMap>) -> Span {
    let span = tracing::info_span!(
        "rpc.process",
        otel.name = %format!("process {name}"),
        otel.kind = "server",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.destination.template = %name,
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        rpc.method = operation_name(name),
    );
    parent(&span, extract(headers));
    span
}

/// Span for publishing a message on behalf of the trace a job stored
/// (`send gf.dispatch.…`); inject its context with [`inject_span`].
pub fn publish_span(subject: &str, job: &str, traceparent: Option<&str>) -> Span {
    let span = tracing::info_span!(
        "dispatch",
        otel.name = %format!("send {subject}"),
        otel.kind = "producer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.operation.type = "send",
        messaging.operation.name = "dispatch",
        gf.job_id = %job,
    );
    if let Some(tp) = traceparent {
        parent(&span, context_from_traceparent(tp));
    }
    span
}

/// Span for consuming a message, parented by its headers (`process gf.dispatch.…`).
pub fn consume_span(subject: &str, headers: Option<&HeaderMap>) -> Span {
    let span = tracing::info_span!(
        "notice.process",
        otel.name = %format!("process {subject}"),
        otel.kind = "consumer",
        messaging.system = "nats",
        messaging.destination.name = %subject,
        messaging.operation.type = "process",
        messaging.operation.name = "claim",
    );
    parent(&span, extract(headers));
    span
}

fn parent(span: &Span, cx: Context) {
    if cx.span().span_context().is_valid() {
        // Only fails when the span is disabled, i.e. tracing is off.
        let _ = span.set_parent(cx);
    }
}

/// An installed OpenTelemetry pipeline. Dropping it flushes and shuts the exporter down.
pub struct OtelGuard {
    provider: SdkTracerProvider,
    service: String,
}

impl OtelGuard {
    /// Exports to `endpoint` over OTLP/HTTP (protobuf). `endpoint` is the collector's
    /// base URL (`http://localhost:4318`); `/v1/traces` is added unless already there.
    pub fn otlp(
        endpoint: &str,
        headers: &BTreeMap<String, String>,
        service: &str,
    ) -> Result<Self, String> {
        use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
        http_authority(endpoint)?;
        let endpoint = traces_url(endpoint);
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(10))
            .with_headers(headers.clone().into_iter().collect())
            .build()
            .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource(service))
            .build();
        Ok(Self::from_provider(provider, service))
    }

    /// Wraps a provider built elsewhere (tests use an in-memory exporter).
    pub fn from_provider(provider: SdkTracerProvider, service: &str) -> Self {
        Self {
            provider,
            service: service.to_string(),
        }
    }

    /// The `tracing` layer that turns spans into OpenTelemetry spans of this pipeline.
    pub fn layer<S>(
        &self,
    ) -> tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>
    where
        S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    {
        tracing_opentelemetry::layer().with_tracer(self.provider.tracer(self.service.clone()))
    }

    /// Exports every finished span now.
    pub fn flush(&self) {
        let _ = self.provider.force_flush();
    }
}

impl Drop for OtelGuard {
    fn drop(&mut self) {
        let _ = self.provider.shutdown();
    }
}

/// The resource every span of this process carries (`service.name`, `service.version`).
pub fn resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_string())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build()
}

/// `host:port` of a plain-HTTP endpoint; this build has no TLS, so `https` is refused.
pub fn http_authority(endpoint: &str) -> Result<String, String> {
    let rest = match endpoint.split_once("://") {
        Some(("http", rest)) => rest,
        Some((scheme, _)) => {
            return Err(format!(
                "`{endpoint}`: only plain http is supported (scheme `{scheme}`); \
                 terminate TLS in a local collector"
            ))
        }
        None => return Err(format!("`{endpoint}` is not a URL like http://host:4318")),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    if authority.is_empty() {
        return Err(format!("`{endpoint}` has no host"));
    }
    // The host part of `user@host:port` never matters here; default the OTLP/HTTP port.
    let authority = authority.rsplit('@').next().unwrap_or(authority);
    if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        Ok(authority.to_string())
    } else {
        Ok(format!("{authority}:80"))
    }
}

/// `http://host:4318` → `http://host:4318/v1/traces`.
pub fn traces_url(endpoint: &str) -> String {
    let base = endpoint.trim_end_matches('/');
    if base.ends_with("/v1/traces") {
        base.to_string()
    } else {
        format!("{base}/v1/traces")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_sdk::trace::InMemorySpanExporter;
    use tracing_subscriber::layer::SubscriberExt;

    #[test]
    fn endpoints_must_be_plain_http() {
        assert_eq!(http_authority("http://c:4318").unwrap(), "c:4318");
        assert_eq!(http_authority("http://c/x").unwrap(), "c:80");
        assert!(http_authority("https://c:4318")
            .unwrap_err()
            .contains("plain http"));
        assert!(http_authority("c:4318").is_err());
    }

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        assert_eq!(
            traces_url("http://c:4318"),
            "http://c:4318/v1/traces".to_string()
        );
        assert_eq!(traces_url("http://c:4318/"), "http://c:4318/v1/traces");
        assert_eq!(
            traces_url("http://c:4318/v1/traces"),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn context_round_trips_through_headers_and_traceparent() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let guard = OtelGuard::from_provider(provider, "test");
        let subscriber = tracing_subscriber::registry().with(guard.layer());
        tracing::subscriber::with_default(subscriber, || {
            let mut headers = HeaderMap::new();
            let stored = {
                let client = rpc_client_span("gf.rpc.submit", "gf.rpc.submit");
                let _e = client.enter();
                inject(&mut headers);
                let server = rpc_server_span("gf.rpc.submit", "gf.rpc.submit", Some(&headers));
                let _s = server.enter();
                current_traceparent().expect("a traceparent inside a span")
            };
            assert!(headers.get(TRACEPARENT).is_some());
            let dispatch = publish_span("gf.dispatch.default", "j1", Some(&stored));
            let mut notice = HeaderMap::new();
            inject_span(&dispatch, &mut notice);
            drop(dispatch);
            let worker = consume_span("gf.dispatch.default", Some(&notice));
            drop(worker);
        });
        guard.flush();
        let spans = exporter.get_finished_spans().expect("spans");
        let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
        assert_eq!(spans.len(), 4, "{names:?}");
        let trace = spans[0].span_context.trace_id();
        assert!(
            spans.iter().all(|s| s.span_context.trace_id() == trace),
            "{names:?}"
        );
    }

    /// With an endpoint, spans leave over OTLP/HTTP: a POST of protobuf to
    /// `/v1/traces` reaches a local listener when the guard is dropped (flush).
    #[test]
    fn otlp_pipeline_posts_spans_to_the_endpoint() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("a connection");
            conn.set_read_timeout(Some(Duration::from_secs(10))).ok();
            let mut head = Vec::new();
            let mut buf = [0u8; 4096];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = conn.read(&mut buf).expect("read");
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n");
            String::from_utf8_lossy(&head).to_string()
        });
        let headers = BTreeMap::from([("x-api-key".to_string(), "k1".to_string())]);
        let guard = OtelGuard::otlp(&format!("http://127.0.0.1:{port}"), &headers, "gf-test")
            .expect("pipeline");
        let subscriber = tracing_subscriber::registry().with(guard.layer());
        tracing::subscriber::with_default(subscriber, || {
            let span = rpc_client_span("gf.rpc.submit", "gf.rpc.submit");
            drop(span.enter());
        });
        drop(guard);
        let request = server.join().expect("listener thread");
        let lower = request.to_ascii_lowercase();
        assert!(request.starts_with("POST /v1/traces "), "{request}");
        assert!(
            lower.contains("content-type: application/x-protobuf"),
            "{request}"
        );
        assert!(lower.contains("x-api-key: k1"), "{request}");
    }

    #[test]
    fn nothing_is_injected_without_a_pipeline() {
        let mut headers = HeaderMap::new();
        let span = rpc_client_span("gf.rpc.submit", "gf.rpc.submit");
        inject_span(&span, &mut headers);
        assert!(headers.get(TRACEPARENT).is_none());
        assert!(current_traceparent().is_none());
    }
}
