//! OpenTelemetry traces: one span per routed envelope, exported over OTLP/HTTP when
//! `--otlp-endpoint` is set. Spans carry twin ids, the message kind and the outcome; never a
//! payload, a uid or a token.

use std::time::{Duration, SystemTime};

use opentelemetry::trace::{Span as _, SpanKind, Tracer as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider, Tracer};

/// Why tracing could not be set up.
#[derive(Debug, thiserror::Error)]
#[error("setting `otlp-endpoint`: {0}")]
pub struct TelemetryError(String);

/// The span recorder; a no-op when tracing is off.
pub struct Telemetry {
    inner: Option<(SdkTracerProvider, Tracer)>,
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

    /// Whether spans are recorded.
    pub fn enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// Records the routing of one envelope, from `started` to now.
    pub fn routed(
        &self,
        started: SystemTime,
        source: u32,
        destination: u32,
        kind: &'static str,
        outcome: &'static str,
    ) {
        let Some((_, tracer)) = &self.inner else {
            return;
        };
        let mut span = tracer
            .span_builder("rmb.route")
            .with_kind(SpanKind::Server)
            .with_start_time(started)
            .with_attributes([
                KeyValue::new("rmb.source_twin", i64::from(source)),
                KeyValue::new("rmb.destination_twin", i64::from(destination)),
                KeyValue::new("rmb.kind", kind),
                KeyValue::new("rmb.outcome", outcome),
            ])
            .start(tracer);
        span.end();
    }

    /// Exports what is buffered and stops the exporter.
    pub fn shutdown(&self) {
        if let Some((provider, _)) = &self.inner {
            let _ = provider.force_flush();
            let _ = provider.shutdown();
        }
    }
}
