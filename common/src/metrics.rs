//! Creating and registering Prometheus metrics, written once.
//!
//! Every crate keeps its own registry (several relays share a test process), builds its
//! metrics through a [`Registrar`], and gets a [`MetricError`] naming the metric instead of a
//! panic when a definition is wrong; a binary reports it at start-up.

use prometheus::core::Collector;
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// A metric that could not be created or registered (an invalid name, label or bucket list,
/// or a name registered twice): a programming error, reported rather than panicking.
#[derive(Debug, thiserror::Error)]
#[error("metric {name}: {source}")]
pub struct MetricError {
    /// The metric's name.
    pub name: String,
    /// What Prometheus said.
    #[source]
    pub source: prometheus::Error,
}

/// Creates metrics and registers them in one registry.
#[derive(Clone, Copy)]
pub struct Registrar<'r> {
    registry: &'r Registry,
    keep_duplicates: bool,
}

impl<'r> Registrar<'r> {
    /// Every failure, a name already registered included, is an error.
    pub fn new(registry: &'r Registry) -> Registrar<'r> {
        Registrar {
            registry,
            keep_duplicates: false,
        }
    }

    /// A name already registered is not an error: the metric is returned, working but
    /// unregistered. For parts that may be built twice against one registry.
    pub fn keeping_duplicates(registry: &'r Registry) -> Registrar<'r> {
        Registrar {
            registry,
            keep_duplicates: true,
        }
    }

    /// The registry.
    pub fn registry(&self) -> &'r Registry {
        self.registry
    }

    /// Registers a metric built elsewhere (`built` as its constructor returned it).
    pub fn register<C>(&self, name: &str, built: prometheus::Result<C>) -> Result<C, MetricError>
    where
        C: Collector + Clone + 'static,
    {
        let failed = |source| MetricError {
            name: name.to_string(),
            source,
        };
        let metric = built.map_err(failed)?;
        match self.registry.register(Box::new(metric.clone())) {
            Ok(()) => Ok(metric),
            Err(prometheus::Error::AlreadyReg) if self.keep_duplicates => Ok(metric),
            Err(e) => Err(failed(e)),
        }
    }

    /// An integer counter.
    pub fn counter(&self, name: &str, help: &str) -> Result<IntCounter, MetricError> {
        self.register(name, IntCounter::new(name, help))
    }

    /// Integer counters by `labels`.
    pub fn counter_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntCounterVec, MetricError> {
        self.register(name, IntCounterVec::new(Opts::new(name, help), labels))
    }

    /// An integer gauge.
    pub fn gauge(&self, name: &str, help: &str) -> Result<IntGauge, MetricError> {
        self.register(name, IntGauge::new(name, help))
    }

    /// Integer gauges by `labels`.
    pub fn gauge_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
    ) -> Result<IntGaugeVec, MetricError> {
        self.register(name, IntGaugeVec::new(Opts::new(name, help), labels))
    }

    /// A floating-point gauge.
    pub fn float_gauge(&self, name: &str, help: &str) -> Result<Gauge, MetricError> {
        self.register(name, Gauge::new(name, help))
    }

    /// A histogram with `buckets` (upper bounds, increasing).
    pub fn histogram(
        &self,
        name: &str,
        help: &str,
        buckets: &[f64],
    ) -> Result<Histogram, MetricError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(name, Histogram::with_opts(opts))
    }

    /// Histograms by `labels`, with `buckets`.
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<HistogramVec, MetricError> {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(name, HistogramVec::new(opts, labels))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::Encoder as _;

    fn render(registry: &Registry) -> String {
        let mut out = Vec::new();
        let encoded = prometheus::TextEncoder::new().encode(&registry.gather(), &mut out);
        assert!(encoded.is_ok(), "{encoded:?}");
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn registered_metrics_appear_in_the_exposition() -> Result<(), MetricError> {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        r.counter("t_events_total", "Events")?.inc_by(3);
        r.counter_vec("t_by_kind_total", "By kind", &["kind"])?
            .with_label_values(&["a"])
            .inc();
        r.gauge("t_open", "Open")?.set(2);
        r.gauge_vec("t_up", "Up", &["peer"])?
            .with_label_values(&["x"])
            .set(1);
        r.float_gauge("t_lag_seconds", "Lag")?.set(0.5);
        r.histogram("t_seconds", "Latency", &[0.001, 0.01])?
            .observe(0.002);
        r.histogram_vec("t_request_seconds", "Requests", &["to"], &[0.1, 1.0])?
            .with_label_values(&["y"])
            .observe(0.2);
        let text = render(&registry);
        for expected in [
            "t_events_total 3",
            "t_by_kind_total{kind=\"a\"} 1",
            "t_open 2",
            "t_up{peer=\"x\"} 1",
            "t_lag_seconds 0.5",
            "t_seconds_count 1",
            "t_request_seconds_bucket{to=\"y\",le=\"1\"} 1",
        ] {
            assert!(text.contains(expected), "{expected} missing in\n{text}");
        }
        Ok(())
    }

    #[test]
    fn a_bad_definition_is_an_error_naming_the_metric() {
        let registry = Registry::new();
        let r = Registrar::new(&registry);
        let err = r.counter("not a name", "bad").err();
        let text = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(text.starts_with("metric not a name:"), "{text}");
        let unsorted = r.histogram("t_h", "bad buckets", &[1.0, 0.5]);
        assert!(unsorted.is_err());
    }

    #[test]
    fn a_duplicate_is_an_error_unless_duplicates_are_kept() -> Result<(), MetricError> {
        let registry = Registry::new();
        Registrar::new(&registry).counter("t_twice_total", "Twice")?;
        assert!(Registrar::new(&registry)
            .counter("t_twice_total", "Twice")
            .is_err());
        let kept = Registrar::keeping_duplicates(&registry).counter("t_twice_total", "Twice")?;
        kept.inc();
        assert_eq!(kept.get(), 1, "the unregistered copy still counts");
        Ok(())
    }
}
