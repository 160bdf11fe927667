//! The process-wide Prometheus recorder. Code records with the `metrics` macros; the
//! `/metrics` route renders this handle.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Histograms whose name ends so get these buckets (`_bucket` series); any other histogram
/// is rendered as a summary (quantiles, `_sum`, `_count`).
const BUCKETED_SUFFIX: &str = "_seconds";
const LATENCY_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Installs the recorder on first use and returns its handle. One recorder per process:
/// several apps started by one test share it, which only merges their counters.
pub fn handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix(BUCKETED_SUFFIX.into()), LATENCY_BUCKETS)
                .expect("the bucket list is not empty")
                .build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (e.g. by an embedding program);
            // then ours stays empty, which the /metrics output makes obvious.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

#[cfg(test)]
mod tests {
    //! The Grafana dashboard against the metrics the code records: a renamed metric, or a
    //! panel asking for `_bucket` of a summary, would otherwise leave a panel empty and
    //! nobody would notice until the day it is needed.

    use std::collections::BTreeSet;
    use std::path::{Path, PathBuf};

    use super::BUCKETED_SUFFIX;

    fn root() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
    }

    /// Every series name a `counter!`, `gauge!` or `histogram!` with a literal name in
    /// `cmd/` or `internal/` (tests excluded) puts on /metrics.
    fn recorded_series() -> BTreeSet<String> {
        let mut files = Vec::new();
        for dir in ["cmd", "internal"] {
            rust_files(&root().join(dir), &mut files);
        }
        let mut series = BTreeSet::new();
        for file in files {
            let code = std::fs::read_to_string(&file).unwrap();
            for kind in ["counter!(", "gauge!(", "histogram!("] {
                for (at, _) in code.match_indices(kind) {
                    let Some(name) = code[at + kind.len()..].trim_start().strip_prefix('"') else { continue };
                    let name = &name[..name.find('"').unwrap()];
                    series.insert(name.to_owned());
                    if kind == "histogram!(" {
                        series.insert(format!("{name}_sum"));
                        series.insert(format!("{name}_count"));
                        if name.ends_with(BUCKETED_SUFFIX) {
                            series.insert(format!("{name}_bucket"));
                        }
                    }
                }
            }
        }
        series
    }

    fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() && path.file_name().is_some_and(|n| n != "tests" && n != "target") {
                rust_files(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    /// Every PromQL expression of the dashboard, panels in rows included.
    fn dashboard_queries() -> Vec<String> {
        let text = std::fs::read_to_string(root().join("deploy/grafana/dashboards/spike.json")).unwrap();
        let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
        let mut queries = Vec::new();
        collect_exprs(&dashboard, &mut queries);
        queries
    }

    fn collect_exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(expr)) = map.get("expr") {
                    out.push(expr.clone());
                }
                map.values().for_each(|v| collect_exprs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
            _ => {}
        }
    }

    /// The metric names in a PromQL expression: identifiers that are not functions (followed
    /// by `(`), keywords or aggregations, or inside label matchers `{..}`, ranges `[..]`, strings or the
    /// label lists of `by (..)` / `without (..)`.
    fn metric_names(expr: &str) -> Vec<String> {
        // Aggregations may put `by (..)` between their name and their `(`.
        const KEYWORDS: &[&str] = &[
            "by",
            "without",
            "on",
            "ignoring",
            "group_left",
            "group_right",
            "bool",
            "and",
            "or",
            "unless",
            "offset",
            "sum",
            "avg",
            "min",
            "max",
            "count",
            "group",
            "stddev",
            "stdvar",
            "topk",
            "bottomk",
            "quantile",
        ];
        let chars: Vec<char> = expr.chars().collect();
        let (mut names, mut i, mut skip_parens) = (Vec::new(), 0, false);
        while i < chars.len() {
            let c = chars[i];
            if let Some(close) = match c {
                '{' => Some('}'),
                '[' => Some(']'),
                '"' => Some('"'),
                '(' if skip_parens => Some(')'),
                _ => None,
            } {
                i += 1 + chars[i + 1..].iter().position(|&x| x == close).unwrap();
                skip_parens = false;
            } else if c.is_ascii_alphabetic() || c == '_' {
                let start = i;
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let next = chars[i..].iter().find(|c| !c.is_whitespace());
                skip_parens = word == "by" || word == "without";
                if next != Some(&'(') && !KEYWORDS.contains(&word.as_str()) {
                    names.push(word);
                }
                continue;
            }
            i += 1;
        }
        names
    }

    #[test]
    fn metric_names_skip_functions_labels_and_ranges() {
        let expr = r#"histogram_quantile(0.99, sum by (le, route) (rate(x_seconds_bucket{a="b"}[1m]))) / y"#;
        assert_eq!(metric_names(expr), ["x_seconds_bucket", "y"]);
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_code_records() {
        let recorded = recorded_series();
        assert!(recorded.contains("http_requests_total") && recorded.contains("http_request_duration_seconds_bucket"));
        let queries = dashboard_queries();
        assert!(queries.len() >= 10, "the dashboard has {} queries", queries.len());
        let mut missing = Vec::new();
        for query in &queries {
            for name in metric_names(query) {
                if !recorded.contains(&name) {
                    missing.push(format!("{name} (in `{query}`)"));
                }
            }
        }
        assert!(missing.is_empty(), "the dashboard asks for series nothing records: {missing:#?}");
    }
}
