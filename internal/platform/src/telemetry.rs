//! Logs and traces: `tracing` everywhere, JSON or pretty output, optional OTLP export, and
//! the W3C trace-context propagator that carries a trace across HTTP, RabbitMQ and the
//! outbox.
//!
//! Spans follow OpenTelemetry's conventions through `tracing-opentelemetry`'s special
//! fields: `otel.name` (the span's name), `otel.kind` (`server`, `client`, `producer`,
//! `consumer`), `otel.status_code`, plus the conventional attributes (`http.*`,
//! `messaging.*`, `db.*`) as fields with those dotted names.

use std::collections::HashMap;
use std::sync::OnceLock;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{DynFilterFn, FilterExt};
use tracing_subscriber::fmt::TestWriter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, TelemetrySettings};

/// What is exported as spans: ours and our libraries' at `info`, without one event per SQL
/// statement or AMQP frame.
const TRACE_FILTER: &str = "info,sqlx=warn,lapin=warn";

/// Set by the first [`install`]; later calls install nothing.
static INSTALLED: OnceLock<()> = OnceLock::new();
/// The exporting provider, for [`flush`].
static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// Keeps the trace exporter alive; dropping it flushes the spans still buffered.
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("flushing traces failed: {err}");
        }
    }
}

/// Installs the global subscriber, logging to stderr. Safe to call more than once (tests
/// start many apps in one process): only the first call installs anything.
pub fn init(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, BoxMakeWriter::new(std::io::stderr))
}

/// [`init`] for integration tests: the logs go through the test harness's capture, so a
/// passing test that provokes errors on purpose prints nothing, and a failing one shows
/// its own logs next to its panic.
pub fn init_for_tests(settings: &TelemetrySettings) -> anyhow::Result<TelemetryGuard> {
    install(settings, BoxMakeWriter::new(TestWriter::new()))
}

fn install(settings: &TelemetrySettings, writer: BoxMakeWriter) -> anyhow::Result<TelemetryGuard> {
    if INSTALLED.get().is_some() {
        return Ok(TelemetryGuard { provider: None });
    }
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.log_level))
        .map_err(|e| anyhow::anyhow!("invalid configuration: telemetry.log_level: {e}"))?;
    // Logs go to stderr, so a command's own output on stdout (ids, tokens, reports) can be
    // piped; containers collect both streams.
    let log = if settings.log_format == LogFormat::Json {
        tracing_subscriber::fmt::layer()
            .with_writer(writer)
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .boxed()
    } else {
        tracing_subscriber::fmt::layer().with_writer(writer).with_target(false).boxed()
    };

    let provider = if settings.otlp_endpoint.is_empty() {
        None
    } else {
        let exporter =
            opentelemetry_otlp::SpanExporter::builder().with_http().with_endpoint(&settings.otlp_endpoint).build()?;
        let resource = opentelemetry_sdk::Resource::builder().with_service_name(settings.service_name.clone()).build();
        // Parent-based: a caller that sampled its trace gets ours joined to it, one that
        // did not gets nothing; only new traces are sampled by the ratio.
        let sampler = Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(settings.sample_ratio)));
        Some(
            SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(resource)
                .with_sampler(sampler)
                .build(),
        )
    };
    // Traces have their own level: `telemetry.log_level = "warn"` quiets the logs, not the
    // spans of the requests and messages a collector was asked for.
    let otel = provider.as_ref().map(|provider| {
        let details = settings.span_details;
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(settings.service_name.clone()))
            .with_tracked_inactivity(details)
            .with_threads(details)
            .with_location(details)
            .with_filter(EnvFilter::new(TRACE_FILTER).and(DynFilterFn::new(within_traced_work)))
    });

    let installed = tracing_subscriber::registry().with(log.with_filter(filter)).with(otel).try_init().is_ok();
    let _ = INSTALLED.set(());
    if installed && let Some(provider) = &provider {
        opentelemetry::global::set_tracer_provider(provider.clone());
        let _ = PROVIDER.set(provider.clone());
        tracing::info!(endpoint = %settings.otlp_endpoint, "exporting traces over OTLP");
    }
    Ok(TelemetryGuard { provider })
}

/// Exports every finished span now (tests read the receiver right after).
pub fn flush() {
    if let Some(provider) = PROVIDER.get()
        && let Err(err) = provider.force_flush()
    {
        eprintln!("flushing traces failed: {err}");
    }
}

/// Postgres statements and Redis scripts are exported only as part of traced work (a
/// request, a message): the relay's polls and the sweeps would otherwise each be a trace
/// of their own, every few seconds.
fn within_traced_work<S>(meta: &tracing::Metadata<'_>, cx: &tracing_subscriber::layer::Context<'_, S>) -> bool
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let client = meta.target().starts_with("repo::db") || meta.target() == "repo::cache::lua";
    !(meta.is_span() && client && cx.lookup_current().is_none())
}

/// `span`'s context as a W3C `traceparent` value, if it has one (only while traces are
/// exported: without the OpenTelemetry layer spans have no trace id).
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| {
        let flags = if span_context.is_sampled() { "01" } else { "00" };
        format!("00-{}-{}-{flags}", span_context.trace_id(), span_context.span_id())
    })
}

/// `span`'s trace id, if it has one (see [`traceparent_of`]).
pub fn trace_id_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then(|| span_context.trace_id().to_string())
}

/// Renames `span` once it has started (a server span learns its route only after routing).
pub fn rename(span: &tracing::Span, name: String) {
    span.context().span().update_name(name);
}

/// The current span's trace context as W3C headers (`traceparent`, `tracestate`), ready to
/// be stored in the outbox or put into AMQP message headers.
pub fn current_trace_headers() -> HashMap<String, String> {
    trace_headers_of(&tracing::Span::current())
}

/// `span`'s trace context as W3C headers (empty when `span` has none).
pub fn trace_headers_of(span: &tracing::Span) -> HashMap<String, String> {
    let context = span.context();
    let mut headers = HashMap::new();
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(&context, &mut MapInjector(&mut headers));
    });
    headers
}

/// Makes `span` a child of the trace described by `headers` (a no-op without a valid
/// `traceparent` among them: the span keeps the current span as its parent).
pub fn adopt_trace_headers(span: &tracing::Span, headers: &HashMap<String, String>) {
    if let Some(parent) = span_context_of(headers) {
        let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
    }
}

/// Adds a link from `span` to the trace described by `headers` (a no-op without them): for
/// work done for many traces at once, where only one can be the parent.
pub fn link_trace_headers(span: &tracing::Span, headers: &HashMap<String, String>) {
    if let Some(linked) = span_context_of(headers) {
        span.add_link(linked);
    }
}

/// The span context `headers` carry, if they carry a valid one.
fn span_context_of(headers: &HashMap<String, String>) -> Option<SpanContext> {
    if headers.is_empty() {
        return None;
    }
    let context =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(&MapExtractor(headers)));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn a_trace_survives_the_trip_through_message_headers() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        let provider = SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let publish = tracing::info_span!("publish");
            let headers = publish.in_scope(current_trace_headers);
            let traceparent = headers.get("traceparent").expect("a traceparent header");
            let trace_id = publish.context().span().span_context().trace_id();
            assert!(traceparent.contains(&trace_id.to_string()), "{traceparent}");

            let consume = tracing::info_span!("consume");
            adopt_trace_headers(&consume, &headers);
            assert_eq!(consume.context().span().span_context().trace_id(), trace_id);
        });
    }
}
