//! Drift guard for `deploy/observability/METRICS.md`, used by the user-service and edge-gateway
//! integration tests. It reads the contract's table rows for one component and compares them with
//! a real `/metrics` scrape: same family, same type, exactly the listed label names, and values
//! inside any closed set the contract declares. [`value`] reads one sample of a scrape, for
//! tests that check what was counted.

use std::collections::{BTreeMap, BTreeSet};

/// The contract, compiled in so that editing it re-runs the guards.
pub const CONTRACT: &str = include_str!("../../deploy/observability/METRICS.md");

/// One row of a contract table.
#[derive(Debug)]
pub struct Row {
    pub name: String,
    pub kind: String,
    /// Label name, and the allowed values when the contract lists a closed set.
    pub labels: BTreeMap<String, Option<BTreeSet<String>>>,
}

/// The rows whose `exported by` cell starts with `component`.
pub fn rows_for(component: &str) -> Vec<Row> {
    CONTRACT
        .lines()
        .filter(|line| line.starts_with("| `"))
        .filter_map(|line| {
            // `\|` separates values inside a cell; hide it before splitting the row.
            let cells: Vec<String> = line
                .replace("\\|", "\u{1}")
                .split('|')
                .map(|cell| cell.trim().to_owned())
                .collect();
            let [_, name, kind, labels, exported_by, ..] = cells.as_slice() else {
                return None;
            };
            if exported_by.split_whitespace().next() != Some(component) {
                return None;
            }
            Some(Row {
                name: backticked(name).first()?.clone(),
                kind: kind.clone(),
                labels: parse_labels(labels),
            })
        })
        .collect()
}

/// `` `a`, `b` = `x` \| `y` `` (with `\|` already hidden) -> {a: any, b: {x, y}}; `—` -> {}.
fn parse_labels(cell: &str) -> BTreeMap<String, Option<BTreeSet<String>>> {
    cell.split(',')
        .filter_map(|part| {
            let mut names = backticked(part).into_iter();
            let label = names.next()?;
            let values: BTreeSet<String> = names.collect();
            Some((label, part.contains('=').then_some(values)))
        })
        .collect()
}

fn backticked(text: &str) -> Vec<String> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_owned)
        .collect()
}

/// One sample line of the text exposition format.
#[derive(Debug)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// `NaN` when the line has no readable value.
    pub value: f64,
}

/// The value of the sample of `scrape` named `name` whose labels include `labels` (others may
/// be there too); `None` when no sample matches.
pub fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    parse_exposition(scrape)
        .1
        .into_iter()
        .find(|sample| {
            sample.name == name
                && labels
                    .iter()
                    .all(|(key, value)| sample.labels.get(*key).map(String::as_str) == Some(*value))
        })
        .map(|sample| sample.value)
}

/// `# TYPE` lines (family -> type) and the samples of a scrape.
pub fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            if let Some((name, kind)) = rest.split_once(' ') {
                types.insert(name.to_owned(), kind.trim().to_owned());
            }
        } else if !line.starts_with('#') && !line.trim().is_empty() {
            samples.push(parse_sample(line));
        }
    }
    (types, samples)
}

fn parse_sample(line: &str) -> Sample {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let mut labels = BTreeMap::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        // Label values may hold spaces, braces and commas (`GET /v1/users/{id}`): walk the quotes.
        rest = inner;
        loop {
            let next = rest.trim_start_matches(',').trim_start();
            if let Some(after) = next.strip_prefix('}') {
                rest = after;
                break;
            }
            let Some((key, after_key)) = next.split_once('=') else {
                rest = "";
                break;
            };
            let mut chars = after_key.chars();
            chars.next(); // the opening quote
            let mut value = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '"' => break,
                    c => value.push(c),
                }
            }
            labels.insert(key.trim().to_owned(), value);
            rest = chars.as_str();
        }
    }
    Sample {
        name: line[..name_end].to_owned(),
        labels,
        // `value [timestamp]`
        value: rest
            .split_whitespace()
            .next()
            .and_then(|value| value.parse().ok())
            .unwrap_or(f64::NAN),
    }
}

/// Everything in `scrape` that contradicts the contract rows of `component` (empty when true).
pub fn check(component: &str, scrape: &str) -> Vec<String> {
    let rows = rows_for(component);
    if rows.is_empty() {
        return vec![format!("METRICS.md has no rows exported by {component}")];
    }
    let (types, samples) = parse_exposition(scrape);
    let mut problems = Vec::new();
    for row in rows {
        let name = &row.name;
        if types.get(name) != Some(&row.kind) {
            problems.push(format!(
                "{name}: contract says {}, scrape says {:?}",
                row.kind,
                types.get(name)
            ));
        }
        // A histogram's labelled series are its buckets; `le` is the histogram's own label.
        let series = if row.kind == "histogram" {
            format!("{name}_bucket")
        } else {
            name.clone()
        };
        let matching: Vec<&Sample> = samples.iter().filter(|s| s.name == series).collect();
        if matching.is_empty() {
            problems.push(format!("{name}: no {series} sample scraped"));
        }
        let wanted: BTreeSet<&String> = row.labels.keys().collect();
        for sample in matching {
            let got: BTreeSet<&String> = sample.labels.keys().filter(|k| *k != "le").collect();
            if got != wanted {
                problems.push(format!("{name}: labels {got:?}, contract {wanted:?}"));
            }
            for (label, allowed) in &row.labels {
                let (Some(allowed), Some(value)) = (allowed, sample.labels.get(label)) else {
                    continue;
                };
                if !allowed.contains(value) {
                    problems.push(format!(
                        "{name}: {label}=\"{value}\" is not in the contract's {allowed:?}"
                    ));
                }
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contract_parser_reads_labels_and_closed_sets() {
        let labels = parse_labels("`cache` = `user` \u{1} `list`, `operation`");
        assert_eq!(labels["cache"].as_ref().unwrap().len(), 2);
        assert_eq!(labels["operation"], None);
        assert!(parse_labels("—").is_empty());
        let sample =
            parse_sample(r#"x_total{route="GET /v1/users/{id}",q="a\"b,c",protocol="rest"} 3"#);
        assert_eq!(sample.name, "x_total");
        assert_eq!(sample.labels["route"], "GET /v1/users/{id}");
        assert_eq!(sample.labels["q"], "a\"b,c");
        assert_eq!(sample.labels["protocol"], "rest");
        assert_eq!(sample.value, 3.0);
        let scrape = "# TYPE a counter\na{x=\"1\",y=\"2\"} 5\na{x=\"2\"} 7\nb 1.5e3\n";
        assert_eq!(value(scrape, "a", &[("x", "2")]), Some(7.0));
        assert_eq!(value(scrape, "a", &[("y", "2")]), Some(5.0));
        assert_eq!(value(scrape, "b", &[]), Some(1500.0));
        assert_eq!(value(scrape, "a", &[("x", "3")]), None);
        let problems = check(
            "edge-gateway",
            "# TYPE meshgate_gateway_retries_total counter\nmeshgate_gateway_retries_total{outcome=\"gave_up\"} 1\n",
        );
        assert!(
            problems.iter().any(|p| p.contains("gave_up")),
            "{problems:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.contains("meshgate_gateway_requests_total")),
            "{problems:?}"
        );
    }
}
