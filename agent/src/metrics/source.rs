//! What a part of the agent that keeps its own figures writes when
//! Prometheus scrapes: whole families, through prometheus-client's encoder,
//! so the text format (names, `# HELP`/`# TYPE`, escaping) is the library's.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder},
    metrics::{counter::ConstCounter, gauge::ConstGauge, MetricType},
};

/// What a registered source writes into during one scrape.
pub type Scrape<'a> = DescriptorEncoder<'a>;

/// Whether a family counts up or goes up and down.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only grows.
    Counter,
    /// A value now.
    Gauge,
}

/// Writes one family and its samples. `name` is the name Prometheus shows:
/// a counter's ends in `_total`, which the encoder adds itself, so it is
/// taken off here and every caller spells the name as a query would. A
/// family with no samples is still declared, so a dashboard sees the name
/// before the first event.
pub fn family<L: EncodeLabelSet>(
    out: &mut Scrape<'_>,
    name: &str,
    kind: Kind,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = FamilyWriter::new(out, name, kind, help)?;
    samples.into_iter().try_for_each(|(labels, value)| family.sample(&labels, value))
}

/// A family being written sample by sample, for a source whose samples
/// come from a visit rather than an iterator (the inventory).
pub struct FamilyWriter<'a> {
    encoder: MetricEncoder<'a>,
    kind: Kind,
}

impl<'a> FamilyWriter<'a> {
    /// Declares the family (`name` as in [`family`]).
    pub fn new(out: &'a mut Scrape<'_>, name: &'a str, kind: Kind, help: &str) -> Result<Self, fmt::Error> {
        let (base, metric_type) = match kind {
            Kind::Counter => (name.strip_suffix("_total").unwrap_or(name), MetricType::Counter),
            Kind::Gauge => (name, MetricType::Gauge),
        };
        Ok(FamilyWriter { encoder: out.encode_descriptor(base, help, None, metric_type)?, kind })
    }

    /// Writes one sample.
    pub fn sample(&mut self, labels: &impl EncodeLabelSet, value: u64) -> fmt::Result {
        let sample = self.encoder.encode_family(labels)?;
        match self.kind {
            Kind::Counter => ConstCounter::new(value).encode(sample),
            Kind::Gauge => ConstGauge::new(value).encode(sample),
        }
    }
}

/// One family of one unlabelled sample.
pub fn single(out: &mut Scrape<'_>, name: &str, kind: Kind, help: &str, value: u64) -> fmt::Result {
    family(out, name, kind, help, [(NO_LABELS, value)])
}

/// The label set of an unlabelled sample.
const NO_LABELS: [(&str, &str); 0] = [];

/// A part's families, written when scraped.
pub(super) type SourceFn = Box<dyn Fn(&mut Scrape<'_>) -> fmt::Result + Send + Sync>;

/// A registered source as prometheus-client's registry calls it.
pub(super) struct SourceCollector(pub(super) SourceFn);

impl fmt::Debug for SourceCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SourceCollector")
    }
}

impl Collector for SourceCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        (self.0)(&mut encoder)
    }
}
