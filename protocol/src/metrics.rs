//! Prometheus' text exposition format (version 0.0.4), written by hand: a few families of
//! counters, gauges and histograms do not need a registry crate.
//!
//! [`Histogram`] and [`Counters`] hold the numbers between scrapes (atomics and a bounded map);
//! [`Exposition`] writes one scrape. Names follow Prometheus' conventions (`_total` counters,
//! `_seconds` and `_bytes` units); label values are escaped as the format says.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// Latency buckets in seconds, from 1 ms (a loopback RPC) to 10 s (an RPC timeout).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Distinct label sets one family keeps; later ones are counted under `other`, so a peer
/// that invents names cannot grow the manager's memory.
const MAX_SERIES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// Observations in fixed buckets, lock-free.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per bucket (not cumulative), the last one for `+Inf`.
    counts: Vec<AtomicU64>,
    /// In microseconds, so the sum stays an integer atomic.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, seconds: f64) {
        let seconds = if seconds.is_finite() {
            seconds.max(0.0)
        } else {
            0.0
        };
        let bucket = self
            .bounds
            .iter()
            .position(|&b| seconds <= b)
            .unwrap_or(self.bounds.len());
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }
}

/// Counters by label values (e.g. RPC errors by method and code).
#[derive(Debug, Default)]
pub struct Counters {
    series: Mutex<BTreeMap<Vec<String>, u64>>,
}

impl Counters {
    pub fn add(&self, labels: &[&str], n: u64) {
        let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        let mut key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        if !series.contains_key(&key) && series.len() >= MAX_SERIES {
            key = labels.iter().map(|_| "other".to_string()).collect();
        }
        *series.entry(key).or_insert(0) += n;
    }

    pub fn snapshot(&self) -> Vec<(Vec<String>, u64)> {
        let series = self.series.lock().unwrap_or_else(|p| p.into_inner());
        series.iter().map(|(k, v)| (k.clone(), *v)).collect()
    }
}

/// Histograms by label values (e.g. RPC latency by method).
#[derive(Debug)]
pub struct Histograms {
    bounds: &'static [f64],
    series: Mutex<BTreeMap<Vec<String>, std::sync::Arc<Histogram>>>,
}

impl Histograms {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            series: Mutex::new(BTreeMap::new()),
        }
    }

    pub fn observe(&self, labels: &[&str], seconds: f64) {
        let histogram = {
            let mut series = self.series.lock().unwrap_or_else(|p| p.into_inner());
            let mut key: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
            if !series.contains_key(&key) && series.len() >= MAX_SERIES {
                key = labels.iter().map(|_| "other".to_string()).collect();
            }
            series
                .entry(key)
                .or_insert_with(|| std::sync::Arc::new(Histogram::new(self.bounds)))
                .clone()
        };
        histogram.observe(seconds);
    }
}

/// One scrape's text.
#[derive(Debug, Default)]
pub struct Exposition {
    text: String,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// `# HELP` and `# TYPE` of a family; its samples follow.
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {}", kind.as_str());
        self
    }

    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) -> &mut Self {
        self.text.push_str(name);
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(value));
        self
    }

    /// A whole family of one unlabelled value.
    pub fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) -> &mut Self {
        self.family(name, kind, help).sample(name, &[], value)
    }

    /// A family with a sample per `(label values, value)`, the values under `label_names`.
    pub fn labelled<V: AsRef<str>>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        label_names: &[&str],
        samples: impl IntoIterator<Item = (Vec<V>, f64)>,
    ) -> &mut Self {
        self.family(name, kind, help);
        for (values, value) in samples {
            let labels: Vec<(&str, &str)> = label_names
                .iter()
                .copied()
                .zip(values.iter().map(AsRef::as_ref))
                .collect();
            self.sample(name, &labels, value);
        }
        self
    }

    /// A family of counters under `label_names`.
    pub fn counters(
        &mut self,
        name: &str,
        help: &str,
        label_names: &[&str],
        counters: &Counters,
    ) -> &mut Self {
        let samples = counters.snapshot().into_iter();
        let samples = samples.map(|(values, n)| (values, n as f64));
        self.labelled(name, Kind::Counter, help, label_names, samples)
    }

    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        histogram: &Histogram,
    ) -> &mut Self {
        let mut cumulative = 0u64;
        for (i, count) in histogram.counts.iter().enumerate() {
            cumulative += count.load(Ordering::Relaxed);
            let le = histogram
                .bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), |b| number(*b));
            let _ = write!(self.text, "{name}_bucket");
            write_labels(&mut self.text, labels, Some(&le));
            let _ = writeln!(self.text, " {cumulative}");
        }
        let sum = histogram.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = write!(self.text, "{name}_sum");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {}", number(sum));
        let _ = write!(self.text, "{name}_count");
        write_labels(&mut self.text, labels, None);
        let _ = writeln!(self.text, " {cumulative}");
        self
    }

    /// A family of histograms under `label_names`.
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label_names: &[&str],
        histograms: &Histograms,
    ) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let series: Vec<(Vec<String>, std::sync::Arc<Histogram>)> = {
            let series = histograms.series.lock().unwrap_or_else(|p| p.into_inner());
            series.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        for (values, histogram) in series {
            let labels: Vec<(&str, &str)> = label_names
                .iter()
                .copied()
                .zip(values.iter().map(String::as_str))
                .collect();
            self.histogram(name, &labels, &histogram);
        }
        self
    }

    pub fn finish(self) -> String {
        self.text
    }
}

/// The content type of this format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (name, value) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(name);
        out.push_str("=\"");
        for c in value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    out.push('}');
}

fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_samples_and_escaped_labels() {
        let mut e = Exposition::new();
        e.single("verge_up", Kind::Gauge, "Whether it runs.", 1.0);
        e.family("verge_x_total", Kind::Counter, "Two\nlines \\ here.")
            .sample("verge_x_total", &[("a", "q\"uo\\te\n")], 2.5);
        assert_eq!(
            e.finish(),
            "# HELP verge_up Whether it runs.\n# TYPE verge_up gauge\nverge_up 1\n\
             # HELP verge_x_total Two\\nlines \\\\ here.\n# TYPE verge_x_total counter\n\
             verge_x_total{a=\"q\\\"uo\\\\te\\n\"} 2.5\n"
        );
    }

    #[test]
    fn histograms_are_cumulative_with_sum_and_count() {
        let h = Histogram::new(&[0.01, 0.1]);
        for s in [0.005, 0.05, 0.05, 3.0, f64::NAN] {
            h.observe(s);
        }
        let mut e = Exposition::new();
        e.histogram("rpc_seconds", &[("method", "ping")], &h);
        let text = e.finish();
        assert!(
            text.contains("rpc_seconds_bucket{method=\"ping\",le=\"0.01\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"ping\",le=\"0.1\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_bucket{method=\"ping\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_sum{method=\"ping\"} 3.105\n"),
            "{text}"
        );
        assert!(
            text.contains("rpc_seconds_count{method=\"ping\"} 5\n"),
            "{text}"
        );
    }

    #[test]
    fn label_sets_are_bounded() {
        let c = Counters::default();
        for i in 0..(MAX_SERIES + 10) {
            c.add(&[&format!("m{i}")], 1);
        }
        let snap = c.snapshot();
        assert_eq!(snap.len(), MAX_SERIES + 1);
        assert_eq!(
            snap.iter().find(|(k, _)| k[0] == "other").map(|(_, n)| *n),
            Some(10)
        );
    }
}
