//! Scraping a service's Prometheus `/metrics`: the text parsed (and checked) sample by sample, so scenarios can say by how much a counter moved.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// One scrape: each sample's value by its series (`name{label="value",…}` as exposed).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scrape(pub BTreeMap<String, f64>);

// === impl Scrape ===

impl Scrape {
    /// GETs `url` (a `/metrics` URL) and parses it; panics naming what is wrong.
    pub async fn get(url: &str) -> Scrape {
        let response = reqwest::Client::new()
            .get(url)
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        assert!(
            response.status().is_success(),
            "GET {url}: {}",
            response.status()
        );
        let text = response.text().await.expect("a text body");
        Scrape::parse(&text).unwrap_or_else(|e| panic!("{url} is not Prometheus text: {e}\n{text}"))
    }

    /// Parses the Prometheus / OpenMetrics text format: comment lines (`# TYPE`, `# HELP`,
    /// `# EOF`) and samples `name{labels} value`; the first bad line is the error.
    pub fn parse(text: &str) -> Result<Scrape, String> {
        let mut samples = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty()) {
            if let Some(comment) = line.strip_prefix('#') {
                let ok = comment == " EOF"
                    || comment.starts_with(" TYPE ")
                    || comment.starts_with(" HELP ")
                    || comment.starts_with(" UNIT ");
                if !ok {
                    return Err(format!("unknown comment line {line:?}"));
                }
                continue;
            }
            let (series, value) = line
                .rsplit_once(' ')
                .ok_or_else(|| format!("no value in {line:?}"))?;
            let name = series.split('{').next().unwrap_or_default();
            let valid_name = name.chars().enumerate().all(|(i, c)| {
                c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
            });
            if name.is_empty() || !valid_name {
                return Err(format!("bad metric name in {line:?}"));
            }
            if series.contains('{') && !series.ends_with('}') {
                return Err(format!("unclosed labels in {line:?}"));
            }
            let value: f64 = value
                .parse()
                .map_err(|e| format!("bad value in {line:?}: {e}"))?;
            samples.insert(series.to_string(), value);
        }
        Ok(Scrape(samples))
    }

    /// The value of `series` (0 when absent: a labelled counter appears on first use).
    pub fn value(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(0.0)
    }

    /// The sum of every series whose text starts with `prefix` (`name{label="x",` sums over
    /// the other labels).
    pub fn sum_starting(&self, prefix: &str) -> f64 {
        self.0
            .iter()
            .filter(|(series, _)| series.starts_with(prefix))
            .map(|(_, value)| value)
            .sum()
    }

    /// How much `series` moved since `before`.
    pub fn delta(&self, before: &Scrape, series: &str) -> f64 {
        self.value(series) - before.value(series)
    }
}

/// The `/metrics` URL a service logged it serves at (`serving metrics at <url>`), read from its
/// log at `log` within 20 s.
pub async fn metrics_url(log: &Path) -> String {
    crate::eventually(Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(log).ok()?;
        let (_, rest) = text.split_once(execmesh_runtime::metrics::SERVING)?;
        rest.split_whitespace().next().map(str::to_string)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_read_and_bad_lines_named() {
        let text = "# HELP execmesh_x X.\n# TYPE execmesh_x counter\nexecmesh_x_total{tool=\"bash\"} 3\nexecmesh_y 1.5\n# EOF\n";
        let scrape = Scrape::parse(text).expect("valid");
        assert_eq!(scrape.value("execmesh_x_total{tool=\"bash\"}"), 3.0);
        assert_eq!(scrape.value("execmesh_y"), 1.5);
        assert!(Scrape::parse("execmesh_x abc\n").is_err());
        assert!(Scrape::parse("9x 1\n").is_err());
    }
}
