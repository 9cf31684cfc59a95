//! One trace per job across processes: the submit request, the coordinator's handling,
//! the leader's dispatch (the lease it grants), the worker's start of the granted job,
//! its run and completion all share the trace
//! id the client started, carried in NATS headers (W3C `traceparent`) and in the job
//! record between submission and dispatch.
//!
//! The `tracing` subscriber is global, so this file holds one test (nextest runs each
//! test in its own process anyway).

mod common;

use std::time::Duration;

use common::*;
use gf_schemas::JobState;
use gf_telemetry::trace::OtelGuard;
use gf_testkit::{eventually, NatsServer};
use opentelemetry::trace::{SpanKind, TraceId};
use opentelemetry::Value;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

fn attr<'a>(span: &'a SpanData, key: &str) -> Option<&'a Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_from_submit_to_completion() -> anyhow::Result<()> {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .with_resource(gf_telemetry::trace::resource("gf-test"))
        .build();
    let otel = OtelGuard::from_provider(provider, "gf-test");
    tracing_subscriber::registry()
        .with(otel.layer())
        .with(tracing_subscriber::EnvFilter::new("info"))
        .init();

    let nats = NatsServer::start()?;
    let coord = Running::coordinator(coordinator_config(&nats.url())).await?;
    let worker = Running::worker(worker_config(&nats.url(), 1)).await?;
    let client = Client::connect(&nats).await?;

    let id = client.submit(&sh("echo traced")).await?.job_id;
    let rec = client.wait_terminal(id, Duration::from_secs(30)).await?;
    assert_eq!(rec.state, JobState::Succeeded, "{rec:?}");
    let stored = rec
        .trace_parent
        .clone()
        .expect("the job record keeps the traceparent");

    // The client's submit span is the root of the job's trace.
    let spans = exporter.get_finished_spans()?;
    let submit = spans
        .iter()
        .find(|s| s.name == "send gf.rpc.submit" && attr(s, "rpc.method").is_some())
        .expect("a client submit span");
    assert_eq!(submit.span_kind, SpanKind::Client);
    let trace: TraceId = submit.span_context.trace_id();
    assert!(
        stored.contains(&trace.to_string()),
        "stored {stored} is in trace {trace}"
    );

    // Every step shows up in that trace. Server spans end just after their replies, so
    // poll until the last of them has been exported.
    let wanted = [
        "send gf.rpc.submit",
        "process gf.rpc.submit",
        "send gf.ctl.worker.*",
        "process gf.ctl.worker.*",
        "run",
        "send gf.rpc.w.*.complete",
        "process gf.rpc.w.*.complete",
    ];
    let in_trace = eventually(Duration::from_secs(10), "every step in one trace", || {
        let spans = exporter.get_finished_spans().unwrap_or_default();
        async move {
            let mine: Vec<SpanData> = spans
                .into_iter()
                .filter(|s| s.span_context.trace_id() == trace)
                .collect();
            wanted
                .iter()
                .all(|w| mine.iter().any(|s| s.name.starts_with(w)))
                .then_some(mine)
        }
    })
    .await
    .map_err(|e| {
        let names: Vec<String> = exporter
            .get_finished_spans()
            .unwrap_or_default()
            .iter()
            .map(|s| format!("{} {}", s.span_context.trace_id(), s.name))
            .collect();
        anyhow::anyhow!("{e}: {names:#?}")
    })?;

    // Messaging attributes by the OpenTelemetry conventions.
    let dispatch = in_trace
        .iter()
        .find(|s| s.name.starts_with("send gf.ctl.worker.*"))
        .expect("dispatch span");
    assert_eq!(dispatch.span_kind, SpanKind::Producer);
    assert_eq!(
        attr(dispatch, "messaging.system"),
        Some(&Value::from("nats"))
    );
    assert_eq!(
        attr(dispatch, "messaging.operation.type"),
        Some(&Value::from("send"))
    );
    assert_eq!(
        attr(dispatch, "messaging.destination.name").map(|v| v.to_string()),
        Some(dispatch.name.trim_start_matches("send ").to_string())
    );
    let notice = in_trace
        .iter()
        .find(|s| s.name.starts_with("process gf.ctl.worker.*"))
        .expect("notice span");
    assert_eq!(notice.span_kind, SpanKind::Consumer);
    assert_eq!(
        notice.parent_span_id,
        dispatch.span_context.span_id(),
        "the worker's start span is the dispatch's child"
    );
    let run = in_trace.iter().find(|s| s.name == "run").expect("run span");
    assert_eq!(
        run.parent_span_id,
        notice.span_context.span_id(),
        "the run is the start's child"
    );
    let server = in_trace
        .iter()
        .find(|s| s.name == "process gf.rpc.submit")
        .expect("server submit span");
    assert_eq!(server.span_kind, SpanKind::Server);
    assert_eq!(server.parent_span_id, submit.span_context.span_id());
    assert_eq!(
        attr(server, "messaging.operation.type"),
        Some(&Value::from("process"))
    );
    assert_eq!(attr(server, "rpc.method"), Some(&Value::from("submit")));
    assert_eq!(
        dispatch.parent_span_id,
        server.span_context.span_id(),
        "dispatch is parented by the stored submission context"
    );

    worker.stop().await?;
    coord.stop().await?;
    Ok(())
}
