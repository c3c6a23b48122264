//! Reading Envoy's `/stats/prometheus`: the samples of a metric family whose labels include
//! given pairs, as counts.

use prometheus_parse::{Sample, Scrape, Value};

/// A scrape of `/stats/prometheus`, parsed.
#[derive(Debug)]
pub struct Metrics {
    scrape: Scrape,
}

impl Metrics {
    /// Parses the Prometheus text format.
    ///
    /// # Errors
    /// When the text is not the Prometheus text format.
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        let lines = text.lines().map(|line| Ok(line.to_owned()));
        Ok(Self {
            scrape: Scrape::parse(lines)?,
        })
    }

    /// Samples of `family` whose labels include every pair of `labels`.
    pub fn samples<'a>(
        &'a self,
        family: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.scrape.samples.iter().filter(move |sample| {
            sample.metric == family
                && labels
                    .iter()
                    .all(|(name, value)| sample.labels.get(name) == Some(*value))
        })
    }

    /// The sum of the counter `family` over the samples that have `labels`.
    pub fn counter(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(family, labels)
            .map(|sample| match sample.value {
                Value::Counter(value) | Value::Untyped(value) | Value::Gauge(value) => value,
                _ => 0.0,
            })
            .sum()
    }

    /// The number of observations of the histogram `family` over the samples that have
    /// `labels` (each histogram's `+Inf` bucket).
    pub fn histogram_count(&self, family: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples(family, labels)
            .filter_map(|sample| match &sample.value {
                Value::Histogram(buckets) => buckets
                    .iter()
                    .find(|bucket| bucket.less_than.is_infinite())
                    .map(|bucket| bucket.count),
                _ => None,
            })
            .sum()
    }

    /// The distinct values label `name` takes among the samples of `family`.
    pub fn label_values(&self, family: &str, name: &str) -> std::collections::BTreeSet<String> {
        self.samples(family, &[])
            .filter_map(|sample| sample.labels.get(name).map(str::to_owned))
            .collect()
    }
}
