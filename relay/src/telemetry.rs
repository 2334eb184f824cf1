//! OpenTelemetry traces, exported over OTLP/HTTP when `--otlp-endpoint` is set.
//!
//! The relay's code only makes `tracing` spans: one per session (`session`, with the twin
//! and session id) and one per routed envelope (`rmb.route`, with source and destination
//! twin, message kind and outcome; never a payload, a uid or a token). The exporter is a
//! `tracing` layer ([`Telemetry::layer`]) the binary installs next to its log output, so a log
//! line carries the span it happened in and a trace carries the log events of its span.

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Tracer};
use tracing::Subscriber;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting `otlp-endpoint`: {0}")]
pub struct TelemetryError(String);

/// The span exporter; nothing when tracing is off.
pub struct Telemetry {
    inner: Option<(SdkTracerProvider, Tracer)>,
}

/// What is exported: the relay's own spans and events at debug level and up (the libraries'
/// spans, such as Redis commands, stay out).
fn exported() -> Targets {
    Targets::new()
        .with_target("rmb_relay", LevelFilter::DEBUG)
        .with_target("rmb_federation", LevelFilter::INFO)
}

impl Telemetry {
    /// Tracing off.
    pub fn off() -> Telemetry {
        Telemetry { inner: None }
    }

    /// Exports to an OTLP/HTTP collector at `endpoint` (for example
    /// `http://otel-collector:4318`; `/v1/traces` is appended when missing).
    pub fn otlp(endpoint: &str, service: &str) -> Result<Telemetry, TelemetryError> {
        use opentelemetry_otlp::WithExportConfig;
        let url = if endpoint.trim_end_matches('/').ends_with("/v1/traces") {
            endpoint.to_string()
        } else {
            format!("{}/v1/traces", endpoint.trim_end_matches('/'))
        };
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url)
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| TelemetryError(e.to_string()))?;
        let processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_scheduled_delay(Duration::from_millis(500))
                    .with_max_queue_size(65_536)
                    .build(),
            )
            .build();
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("rmb-relay");
        Ok(Telemetry {
            inner: Some((provider, tracer)),
        })
    }

    /// The settings' exporter: OTLP when `--otlp-endpoint` is given, else none.
    pub fn from_args(args: &crate::config::TelemetryArgs) -> Result<Telemetry, TelemetryError> {
        match &args.otlp_endpoint {
            Some(endpoint) => Telemetry::otlp(endpoint, "rmb-relay"),
            None => Ok(Telemetry::off()),
        }
    }

    /// The `tracing` layer that exports spans, or `None` when tracing is off.
    pub fn layer<S>(&self) -> Option<impl Layer<S>>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        let (_, tracer) = self.inner.as_ref()?;
        Some(
            tracing_opentelemetry::layer()
                .with_tracer(tracer.clone())
                .with_filter(exported()),
        )
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}
