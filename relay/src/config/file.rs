//! The optional TOML file (`--config`): its values become the defaults of the matching
//! flags, so flags and the environment still override them.

use std::path::PathBuf;

use super::ConfigError;

/// Finds `--config PATH`, `--config=PATH` or `RMB_CONFIG` before clap runs.
pub(super) fn config_path(args: &[std::ffi::OsString]) -> Option<PathBuf> {
    let mut iter = args.iter().skip(1);
    while let Some(arg) = iter.next() {
        let arg = arg.to_string_lossy();
        if arg == "--config" {
            return iter.next().map(PathBuf::from);
        }
        if let Some(path) = arg.strip_prefix("--config=") {
            return Some(PathBuf::from(path));
        }
    }
    std::env::var_os("RMB_CONFIG").map(PathBuf::from)
}

/// Installs the file's values as the defaults of the matching flags, so flags and the
/// environment still override them.
pub(super) fn apply_file_defaults(
    mut cmd: clap::Command,
    path: &std::path::Path,
) -> Result<clap::Command, ConfigError> {
    let file_error = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(path).map_err(|e| file_error(format!("cannot read: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_error(e.to_string()))?;
    for (key, value) in table {
        let long = key.replace('_', "-");
        let long = if long == "domains" {
            "domain".to_string()
        } else {
            long
        };
        let Some(id) = cmd
            .get_arguments()
            .find(|a| a.get_long() == Some(long.as_str()))
            .map(|a| a.get_id().clone())
        else {
            return Err(file_error(format!("unknown setting `{key}`")));
        };
        if matches!(long.as_str(), "config" | "check-config" | "debug") {
            return Err(file_error(format!(
                "`{key}` cannot be set in the config file{}",
                if long == "debug" { " (set `log`)" } else { "" }
            )));
        }
        let values = toml_values(&value)
            .ok_or_else(|| file_error(format!("setting `{key}`: unsupported value {value}")))?;
        cmd = cmd.mut_arg(id, |a| a.default_values(values));
    }
    Ok(cmd)
}

fn toml_values(value: &toml::Value) -> Option<Vec<String>> {
    match value {
        toml::Value::String(s) => Some(vec![s.clone()]),
        toml::Value::Integer(i) => Some(vec![i.to_string()]),
        toml::Value::Float(f) => Some(vec![f.to_string()]),
        toml::Value::Boolean(b) => Some(vec![b.to_string()]),
        toml::Value::Array(items) => items
            .iter()
            .map(|v| toml_values(v).and_then(|mut v| v.pop()))
            .collect(),
        _ => None,
    }
}
