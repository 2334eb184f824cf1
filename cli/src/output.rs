//! One place that decides how reports look: JSON for scripts, `key: value` lines for people.

use std::process::ExitCode;

use serde_json::Value;

/// Where command results go.
pub struct Output {
    json: bool,
}

impl Output {
    pub fn new(json: bool) -> Self {
        Output { json }
    }

    /// Whether reports are JSON (`--json`).
    pub fn is_json(&self) -> bool {
        self.json
    }

    /// Prints a report object.
    pub fn report(&self, value: &Value) {
        if self.json {
            println!("{value}");
        } else {
            let mut lines = Vec::new();
            flatten("", value, &mut lines);
            let width = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
            for (key, val) in lines {
                println!("{key:width$}  {val}");
            }
        }
    }

    /// Prints a report and returns the exit code for a check that passed or failed.
    pub fn verdict(&self, ok: bool, value: &Value) -> ExitCode {
        self.report(value);
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(1)
        }
    }

    /// Prints a failure on stderr (as JSON on stdout with `--json`, so scripts see it).
    pub fn error(&self, err: &anyhow::Error) {
        if self.json {
            println!("{}", serde_json::json!({ "error": format!("{err:#}") }));
        } else {
            eprintln!("error: {err:#}");
        }
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::Array(items) if items.iter().any(|v| v.is_object()) => {
            for (i, v) in items.iter().enumerate() {
                flatten(&format!("{prefix}[{i}]"), v, out);
            }
        }
        Value::Array(items) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            out.push((prefix.to_string(), parts.join(", ")));
        }
        other => out.push((prefix.to_string(), scalar(other))),
    }
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        Value::Null => "-".to_string(),
        other => other.to_string(),
    }
}
