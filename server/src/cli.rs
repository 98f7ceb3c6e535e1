//! Command line: `fastgate [serve]`, `check-config`, `migrate`, `import-mfastgate`,
//! `keys create|list|revoke|enable|delete|rotate`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// FastGate: an API gateway for OpenAI-compatible LLM backends, with an admin API and dashboard
///
/// Without a command, `fastgate` serves (as `fastgate serve`).
#[derive(Debug, Parser)]
#[command(name = "fastgate", version)]
pub struct Cli {
    /// Configuration file (M-FastGate's YAML format). Default: `config/$ENVIRONMENT.yaml` when
    /// `ENVIRONMENT` is set (M-FastGate's way of choosing it), else `config/development.yaml`.
    /// An empty value (`FASTGATE_CONFIG=`) counts as not set.
    #[arg(
        long,
        short,
        env = "FASTGATE_CONFIG",
        global = true,
        value_name = "FILE",
        value_parser = clap::builder::TypedValueParser::map(clap::builder::OsStringValueParser::new(), PathBuf::from)
    )]
    pub config: Option<PathBuf>,
    /// Where to listen (`fastgate --port 8514` as `fastgate serve --port 8514`).
    #[command(flatten)]
    pub listen: Listen,
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

    /// `--host` / `--port`, given before the command or after `serve` (the latter wins). An
    /// error for a command that does not listen (`fastgate --port 1 keys list`): they used to
    /// be accepted there (and shown in every command's help) and ignored.
    pub fn listen(&self) -> Result<Listen, String> {
        let top = &self.listen;
        match &self.command {
            None => Ok(top.clone()),
            Some(Command::Serve(own)) => Ok(Listen {
                host: own.host.clone().or_else(|| top.host.clone()),
                port: own.port.or(top.port),
            }),
            Some(_) if top.host.is_some() || top.port.is_some() => Err(
                "--host and --port set where the server listens: they go with `fastgate` or \
                 `fastgate serve` only, not with another command"
                    .to_owned(),
            ),
            Some(_) => Ok(Listen::default()),
        }
    }
}

/// `--host` / `--port`: where the server listens.
#[derive(Clone, Debug, Default, Args)]
pub struct Listen {
    /// Listen address, overriding `app.host` (as uvicorn's `--host`) [default: the config's
    /// `app.host`, `0.0.0.0` when not set]
    #[arg(long, value_name = "ADDRESS")]
    pub host: Option<String>,
    /// Listen port, overriding `app.port` (as uvicorn's `--port`) [default: the config's
    /// `app.port`, 8514 when not set]
    #[arg(long)]
    pub port: Option<u16>,
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
    fn host_and_port_go_with_serving_only() {
        use clap::CommandFactory as _;
        Cli::command().debug_assert();
        let listen = |args: &[&str]| {
            Cli::try_parse_from(args)
                .map_err(|e| e.to_string())?
                .listen()
                .map(|l| (l.host, l.port))
        };
        let host = Some("127.0.0.1".to_owned());
        assert_eq!(
            listen(&["fastgate", "--host", "127.0.0.1", "--port", "1"]).unwrap(),
            (host.clone(), Some(1))
        );
        assert_eq!(
            listen(&["fastgate", "serve", "--port", "2"]).unwrap(),
            (None, Some(2))
        );
        assert_eq!(
            listen(&[
                "fastgate",
                "--host",
                "127.0.0.1",
                "--port",
                "1",
                "serve",
                "--port",
                "2"
            ])
            .unwrap(),
            (host, Some(2))
        );
        // Not with a command that does not listen: before it, refused with a reason; after it,
        // unknown there.
        for args in [
            &["fastgate", "--port", "1", "keys", "list"][..],
            &["fastgate", "--host", "::1", "check-config"],
            &["fastgate", "--port", "1", "migrate"],
        ] {
            let e = listen(args).unwrap_err();
            assert!(e.contains("fastgate serve"), "{args:?}: {e}");
        }
        assert!(listen(&["fastgate", "keys", "list", "--port", "1"]).is_err());
        // Nor in such a command's help.
        let help = |args: &[&str]| Cli::try_parse_from(args).unwrap_err().to_string();
        for args in [
            &["fastgate", "keys", "--help"][..],
            &["fastgate", "keys", "create", "--help"],
            &["fastgate", "check-config", "--help"],
        ] {
            let text = help(args);
            assert!(text.contains("--config"), "{text}");
            assert!(
                !text.contains("--port") && !text.contains("--host"),
                "{text}"
            );
        }
        for args in [
            &["fastgate", "--help"][..],
            &["fastgate", "serve", "--help"],
        ] {
            let text = help(args);
            assert!(text.contains("--port") && text.contains("8514"), "{text}");
        }
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
    Serve(Listen),
    /// Validate the configuration (and routes file) without starting.
    CheckConfig,
    /// Apply database migrations and exit.
    Migrate,
    /// Print the OpenAPI spec of the admin API as JSON.
    Openapi,
    /// Import the keys and audit log of an M-FastGate SQLite database.
    ///
    /// Into the configured database; clients keep their secrets. The old file is only read;
    /// running it again skips what is already there.
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
    /// Create a key and print its secret once (on stdout; its id on stderr).
    Create(CreateArgs),
    /// List every key (the count is printed on stderr, also with `--json`).
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
        /// Key id (`k_…`; an imported M-FastGate key keeps its own), as `keys list` shows it.
        id: String,
    },
    /// Enable a disabled key again.
    Enable {
        /// Key id (`k_…`; an imported M-FastGate key keeps its own), as `keys list` shows it.
        id: String,
    },
    /// Delete a key for good (its audit records stay).
    Delete {
        /// Key id (`k_…`; an imported M-FastGate key keeps its own), as `keys list` shows it.
        id: String,
    },
    /// Issue a new secret for a key and print it once.
    Rotate {
        /// Key id (`k_…`; an imported M-FastGate key keeps its own), as `keys list` shows it.
        id: String,
        /// Seconds the old secret keeps working (at most 2592000, 30 days, as in the admin API).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=2_592_000))]
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
    /// A-Z, a-z, 0-9, _ - . : * [default: the unified endpoint's, `api_gateway.permission`]
    #[arg(long = "permission", value_name = "PERMISSION[,...]", value_delimiter = ',', value_parser = crate::api::permission)]
    pub permissions: Vec<String>,
    /// Days until expiry, 1 to 36500 [default: `security.default_expiry_days`, 365 when not set]
    #[arg(long, conflicts_with = "never_expires", value_parser = clap::value_parser!(u32).range(1..=36500))]
    pub expires_days: Option<u32>,
    /// The key never expires.
    #[arg(long)]
    pub never_expires: bool,
    /// Optional name for the key (a label for people; the id is generated)
    #[arg(long)]
    pub name: Option<String>,
}
