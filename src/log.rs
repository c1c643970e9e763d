//! `[log]`: the format and level of stox's logs on stderr, one event per line.
//!
//! RUST_LOG, when set, wins over `log.level` (the admin's override at the command line),
//! except that tokio-xmpp's XML capture is always off: it would print the handshake digest.

use crate::config::ConfigError;

/// How each event is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// tracing-subscriber's text lines (for the journal and a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `fields.message` and the
    /// event's fields, `span`/`spans` with span fields (for log pipelines).
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An EnvFilter directive list: `info`, `stox=debug,warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(serde::Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

pub(crate) fn validate_log(raw: RawLog) -> Result<LogConfig, ConfigError> {
    let format = match raw.format.as_deref().map(str::trim) {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            return Err(ConfigError::invalid(
                "log.format",
                other,
                "expected \"text\" or \"json\"",
            ))
        }
    };
    let level = match raw.level {
        None => LogConfig::default().level,
        Some(l) => {
            let l = l.trim().to_string();
            if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&l) {
                return Err(ConfigError::invalid(
                    "log.level",
                    &l,
                    format!("expected a level (error, warn, info, debug, trace) or RUST_LOG directives: {e}"),
                ));
            }
            l
        }
    };
    Ok(LogConfig { format, level })
}

/// Installs the global subscriber: RUST_LOG if set and valid, else `log.level`.
pub fn init(cfg: &LogConfig) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::builder().parse(&cfg.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // tokio-xmpp traces every XML element sent, the component handshake (SHA-1 of stream
    // id and secret) included: off at every level, whatever RUST_LOG says.
    let filter = match "tokio_xmpp::xmlstream::capture=off".parse() {
        Ok(d) => filter.add_directive(d),
        Err(_) => filter,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cfg.format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(format: Option<&str>, level: Option<&str>) -> RawLog {
        RawLog {
            format: format.map(Into::into),
            level: level.map(Into::into),
        }
    }

    #[test]
    fn defaults_are_text_at_info() {
        assert_eq!(validate_log(raw(None, None)).unwrap(), LogConfig::default());
    }

    #[test]
    fn json_and_directives_are_taken() {
        let c = validate_log(raw(Some("json"), Some("stox=debug,warn"))).unwrap();
        assert_eq!(c.format, LogFormat::Json);
        assert_eq!(c.level, "stox=debug,warn");
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = validate_log(raw(Some("xml"), None)).unwrap_err();
        assert_eq!(e.key, "log.format");
        let e = validate_log(raw(None, Some("stox=loud"))).unwrap_err();
        assert_eq!(e.key, "log.level");
        assert!(!e.to_string().contains('\n'), "{e}");
    }
}
