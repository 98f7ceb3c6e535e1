//! Command line: `fastgate [serve]`, `check-config`, `migrate`, `import-mfastgate`,
//! `keys create|list|revoke|enable|delete|rotate`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// FastGate: an API gateway for OpenAI-compatible LLM backends.
#[derive(Debug, Parser)]
#[command(name = "fastgate", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (M-FastGate's YAML format). Default: `config/$ENVIRONMENT.yaml` when
    /// `ENVIRONMENT` is set (M-FastGate's way of choosing it), else `config/development.yaml`.
    /// An empty value (`FASTGATE_CONFIG=`) counts as not set.
    #[arg(
        long,
        short,
        env = "FASTGATE_CONFIG",
        global = true,
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub config: Option<PathBuf>,
    /// Listen address, overriding `app.host` (as uvicorn's `--host`).
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Listen port, overriding `app.port` (as uvicorn's `--port`).
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// What to do (default: serve).
    #[command(subcommand)]
    pub command: Option<Command>,
}

impl Cli {
    /// The configuration file to load: `--config` / `FASTGATE_CONFIG`, else the one
    /// `ENVIRONMENT` names, else `config/development.yaml`.
    pub fn config_path(&self) -> Result<PathBuf, String> {
        match self.explicit_config() {
            Some(path) => Ok(path.to_owned()),
            None => environment_config(std::env::var("ENVIRONMENT").ok().as_deref()),
        }
    }

    /// How the file was chosen when neither `--config` nor `FASTGATE_CONFIG` named it: a hint
    /// for the error shown when it cannot be loaded.
    pub fn config_hint(&self) -> Option<String> {
        if self.explicit_config().is_some() {
            return None;
        }
        let environment = std::env::var("ENVIRONMENT").ok().filter(|e| !e.is_empty());
        let path = environment_config(environment.as_deref()).ok()?;
        Some(match environment {
            Some(e) => format!(
                "{} was chosen by ENVIRONMENT={e}; pass --config PATH or set FASTGATE_CONFIG to load another file",
                path.display()
            ),
            None => format!(
                "{} is the default; pass --config PATH, set FASTGATE_CONFIG, or set ENVIRONMENT=<name> for config/<name>.yaml",
                path.display()
            ),
        })
    }

    fn explicit_config(&self) -> Option<&std::path::Path> {
        self.config.as_deref().filter(|p| !p.as_os_str().is_empty())
    }
}

/// `config/<environment>.yaml` as M-FastGate chose it (`development` when unset or empty).
fn environment_config(environment: Option<&str>) -> Result<PathBuf, String> {
    let name = environment
        .filter(|e| !e.is_empty())
        .unwrap_or("development");
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(format!(
            "ENVIRONMENT={name:?}: expected a name such as production (it selects \
             config/<name>.yaml); or pass --config"
        ));
    }
    Ok(PathBuf::from(format!("config/{name}.yaml")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_selects_the_config_file_as_in_mfastgate() {
        let path = |e| environment_config(e).map(|p| p.display().to_string());
        assert_eq!(path(None).unwrap(), "config/development.yaml");
        assert_eq!(path(Some("")).unwrap(), "config/development.yaml");
        assert_eq!(path(Some("production")).unwrap(), "config/production.yaml");
        assert!(path(Some("../etc/x")).unwrap_err().contains("ENVIRONMENT"));
    }

    #[test]
    fn control_characters_are_escaped_for_the_terminal() {
        assert!(matches!(
            printable("user1 / 团队"),
            std::borrow::Cow::Borrowed("user1 / 团队")
        ));
        assert_eq!(
            printable("a\u{1b}]0;pwned\u{7}b\0\n\u{9b}\u{202e}"),
            "a\\u{1b}]0;pwned\\u{7}b\\u{0}\\n\\u{9b}\\u{202e}"
        );
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the gateway (the default).
    Serve,
    /// Validate the configuration (and routes file) without starting.
    CheckConfig,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI spec of the admin API as JSON.
    Openapi,
    /// Import the keys (clients keep their secrets) and audit log of an M-FastGate SQLite
    /// database into the configured database. The old file is only read; running it again
    /// skips what is already there.
    ImportMfastgate {
        /// The M-FastGate database file (its `fastgate.db`).
        #[arg(long = "from", value_name = "FILE")]
        from: PathBuf,
    },
    /// Manage gateway API keys in the configured database (works while the server runs).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// `fastgate keys ...`
#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print it once.
    Create(CreateArgs),
    /// List keys.
    List {
        /// Only keys of this owner.
        #[arg(long)]
        source_path: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Disable a key at once (`keys enable` undoes it).
    Revoke {
        /// Key id (`k_…`).
        id: String,
    },
    /// Enable a disabled key again.
    Enable {
        /// Key id (`k_…`).
        id: String,
    },
    /// Delete a key for good (its audit records stay).
    Delete {
        /// Key id (`k_…`).
        id: String,
    },
    /// Issue a new secret for a key and print it once.
    Rotate {
        /// Key id (`k_…`).
        id: String,
        /// Seconds the old secret keeps working.
        #[arg(long, default_value_t = 0)]
        grace_seconds: u64,
    },
}

/// `s` as it may be printed to a terminal: control characters (ESC, BEL, NUL, a line break: an
/// escape sequence could rewrite the screen or the window title) and the bidirectional
/// overrides that reorder text are written as Rust escapes (`\u{1b}`, `\n`). Borrowed unless
/// there is one. For values read from the database, which may have come from elsewhere (an
/// import) than the API, which refuses them.
pub fn printable(s: &str) -> std::borrow::Cow<'_, str> {
    let escaped =
        |c: char| c.is_control() || matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
    if !s.chars().any(escaped) {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if escaped(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// `fastgate keys create` arguments (the fields of `POST /admin/keys`).
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Owner / tenant label, e.g. `user1`.
    #[arg(long)]
    pub source_path: String,
    /// Permissions: repeatable, or comma-separated (`chat,embed`); each 1 to 64 characters of
    /// A-Z, a-z, 0-9, _ - . : *. Default: the unified endpoint's (`api_gateway.permission`).
    #[arg(long = "permission", value_name = "PERMISSION[,...]", value_delimiter = ',', value_parser = crate::api::permission)]
    pub permissions: Vec<String>,
    /// Days until expiry; default `security.default_expiry_days`.
    #[arg(long, conflicts_with = "never_expires", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub expires_days: Option<u32>,
    /// The key never expires.
    #[arg(long)]
    pub never_expires: bool,
    /// Optional label.
    #[arg(long)]
    pub name: Option<String>,
}
