//! Figures read at scrape time from the objects that own them (the
//! limiter, the circuits, the cache, the channels), rather than mirrored
//! into gauges on every change: a scrape sees the state as it is.
//!
//! A `Reader` fills `Readings`; one prometheus-client `Collector` encodes
//! what they read on each scrape.

use std::fmt::Debug;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;

/// Something that reads figures from engine objects on each scrape. Runs
/// on a metrics thread: it may take leaf locks for a copy, never block.
pub trait Reader: Send + Sync + 'static {
    fn read(&self, out: &mut Readings);
}

type Labels = Vec<(&'static str, String)>;

struct Family {
    name: &'static str,
    help: &'static str,
    kind: MetricType,
    samples: Vec<(Labels, f64)>,
}

/// What the readers read in one scrape, grouped by metric family (a name
/// given twice adds a sample to the same family).
#[derive(Default)]
pub struct Readings {
    families: Vec<Family>,
}

impl Readings {
    /// A gauge without labels. `name` is without the prefix.
    pub fn gauge(&mut self, name: &'static str, help: &'static str, value: f64) {
        self.add(name, help, MetricType::Gauge, &[], value);
    }

    pub fn gauge_with(&mut self, name: &'static str, help: &'static str, labels: &[(&'static str, &str)], value: f64) {
        self.add(name, help, MetricType::Gauge, labels, value);
    }

    /// A counter kept by its owner (e.g. a count of evictions); `name`
    /// without `_total`, which the encoding adds.
    pub fn counter_with(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: u64,
    ) {
        self.add(name, help, MetricType::Counter, labels, value as f64);
    }

    fn add(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        labels: &[(&'static str, &str)],
        v: f64,
    ) {
        let labels: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect();
        match self.families.iter_mut().find(|f| f.name == name) {
            Some(family) => family.samples.push((labels, v)),
            None => self.families.push(Family { name, help, kind, samples: vec![(labels, v)] }),
        }
    }
}

/// The registry's view of the readers.
pub(super) struct ReadersCollector(pub Vec<Box<dyn Reader>>);

impl Debug for ReadersCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReadersCollector({})", self.0.len())
    }
}

impl Collector for ReadersCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut readings = Readings::default();
        for reader in &self.0 {
            reader.read(&mut readings);
        }
        for family in &readings.families {
            let mut metric = encoder.encode_descriptor(family.name, family.help, None, family.kind)?;
            for (labels, value) in &family.samples {
                let sample = metric.encode_family(labels)?;
                if matches!(family.kind, MetricType::Counter) {
                    ConstCounter::new(*value as u64).encode(sample)?;
                } else if value.fract() == 0.0 && value.abs() < 1e15 {
                    // Whole figures (slots, channels) read as such.
                    ConstGauge::new(*value as i64).encode(sample)?;
                } else {
                    ConstGauge::new(*value).encode(sample)?;
                }
            }
        }
        Ok(())
    }
}
