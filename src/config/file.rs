//! The TOML config file: read once, every key checked against the settings of the role that
//! reads it (a typo names the closest key), each option group deserialized from its own keys.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::de::DeserializeOwned;

use super::{env_nonempty, ConfigError, Env};
use crate::cli::{
    AdminOptions, CommonOptions, GatewayTransportOptions, ListenOptions, RelayTransportOptions,
    UpstreamOptions,
};

/// The roles, for telling which file keys a command uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FileRole {
    Serve,
    Gateway,
    Relay,
}

impl FileRole {
    fn name(self) -> &'static str {
        match self {
            FileRole::Serve => "serve",
            FileRole::Gateway => "gateway",
            FileRole::Relay => "relay",
        }
    }

    /// The option groups the role reads from the file.
    fn groups(self) -> Vec<Vec<String>> {
        match self {
            FileRole::Serve => vec![
                keys::<CommonOptions>(),
                keys::<ListenOptions>(),
                keys::<AdminOptions>(),
                keys::<UpstreamOptions>(),
            ],
            FileRole::Gateway => vec![
                keys::<CommonOptions>(),
                keys::<ListenOptions>(),
                keys::<AdminOptions>(),
                keys::<GatewayTransportOptions>(),
            ],
            FileRole::Relay => vec![
                keys::<CommonOptions>(),
                keys::<AdminOptions>(),
                keys::<UpstreamOptions>(),
                keys::<RelayTransportOptions>(),
            ],
        }
    }
}

/// The file keys of an option group: its clap ids (the field names), less `config`.
fn keys<G: Args>() -> Vec<String> {
    G::augment_args(clap::Command::new("keys"))
        .get_arguments()
        .map(|a| a.get_id().as_str().to_owned())
        .filter(|k| k != "config")
        .collect()
}

/// The TOML file, read once, or an empty table when none is configured.
#[derive(Debug, Default)]
pub(super) struct ConfigFile {
    pub(super) path: PathBuf,
    pub(super) table: toml::Table,
}

impl ConfigFile {
    fn read(path: &Path) -> Result<ConfigFile, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
            path: path.to_owned(),
            source,
        })?;
        let table: toml::Table = toml::from_str(&text).map_err(|e| ConfigError::ParseFile {
            path: path.to_owned(),
            message: one_line(&e.to_string()),
        })?;
        Ok(ConfigFile {
            path: path.to_owned(),
            table,
        })
    }

    /// Every key must be a setting of `role`: an unknown key names the closest known one; a key
    /// of another role is refused (a gateway given an upstream credential key says why).
    pub(super) fn check_keys(&self, role: FileRole) -> Result<(), ConfigError> {
        // Without a file there is nothing to check (and no clap command to build at start-up).
        if self.table.is_empty() {
            return Ok(());
        }
        let used: Vec<String> = role.groups().into_iter().flatten().collect();
        let all: Vec<String> = [FileRole::Serve, FileRole::Gateway, FileRole::Relay]
            .into_iter()
            .flat_map(FileRole::groups)
            .flatten()
            .collect();
        for key in self.table.keys() {
            if used.iter().any(|k| k == key) {
                continue;
            }
            let message = if role == FileRole::Gateway && key.starts_with("upstream_token") {
                format!(
                    "{key}: gateway runs inside the sandbox and must never hold the upstream \
                     credential; give it to the relay (or serve) instead"
                )
            } else if all.iter().any(|k| k == key) {
                format!("{key} is not a setting of `{}`", role.name())
            } else {
                let closest = all
                    .iter()
                    .map(|k| (strsim::jaro_winkler(k, key), k))
                    .max_by(|a, b| a.0.total_cmp(&b.0))
                    .filter(|(score, _)| *score > 0.8);
                match closest {
                    Some((_, k)) => format!("unknown key {key:?} (did you mean {k:?}?)"),
                    None => format!("unknown key {key:?}"),
                }
            };
            return Err(ConfigError::ParseFile {
                path: self.path.clone(),
                message,
            });
        }
        Ok(())
    }

    /// One option group from the file's keys of that group.
    pub(super) fn group<G: Args + DeserializeOwned + Default>(&self) -> Result<G, ConfigError> {
        if self.table.is_empty() {
            return Ok(G::default());
        }
        let names = keys::<G>();
        let subset: toml::Table = self
            .table
            .iter()
            .filter(|(k, _)| names.iter().any(|n| n == *k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if subset.is_empty() {
            return Ok(G::default());
        }
        G::deserialize(subset).map_err(|e| ConfigError::ParseFile {
            path: self.path.clone(),
            message: one_line(&e.to_string()),
        })
    }

    /// The upstream options from the file; `upstream_ca_file` and `upstream_token_file` are
    /// resolved against the file's directory.
    pub(super) fn upstream_group(&self) -> Result<UpstreamOptions, ConfigError> {
        let mut group: UpstreamOptions = self.group()?;
        group.upstream_ca_file = group.upstream_ca_file.map(|p| self.resolve(p));
        group.upstream_token_file = group.upstream_token_file.map(|p| self.resolve(p));
        Ok(group)
    }

    /// Resolves a path given in the file against the file's directory.
    fn resolve(&self, path: PathBuf) -> PathBuf {
        match self.path.parent() {
            Some(dir) if path.is_relative() => dir.join(path),
            _ => path,
        }
    }
}

/// The common options merged (flags/env over file), before validation.
pub(super) struct MergedCommon {
    pub(super) merged: CommonOptions,
}

/// Reads the file named by `--config` (if any), checks its keys for `role` and merges the common
/// options; the caller merges its other groups from the returned file.
pub(super) fn with_file(
    flags: CommonOptions,
    role: FileRole,
    env: Env<'_>,
) -> Result<(MergedCommon, ConfigFile), ConfigError> {
    let file = match &flags.config {
        Some(path) => ConfigFile::read(path)?,
        None => ConfigFile::default(),
    };
    file.check_keys(role)?;
    let mut flags = flags;
    // `RUST_LOG` ranks with the environment: below an explicit level, above the file.
    if flags.log_level.is_none() {
        flags.log_level = env_nonempty(env, "RUST_LOG");
    }
    let mut from_file: CommonOptions = file.group()?;
    from_file.routes = from_file.routes.map(|p| file.resolve(p));
    from_file.token_file = from_file.token_file.map(|p| file.resolve(p));
    from_file.ready_file = from_file.ready_file.map(|p| file.resolve(p));
    let mut merged = flags.or(from_file);
    if merged.max_body_bytes.is_none() {
        merged.max_body_bytes = super::attachment_body_limit(env)?;
    }
    // Paperclip's run id ranks below every source of `run_id`.
    if merged.run_id.as_deref().map_or(true, str::is_empty) {
        merged.run_id = env_nonempty(env, "PAPERCLIP_RUN_ID");
    }
    Ok((MergedCommon { merged }, file))
}

/// Collapses a multi-line library error (toml prints a snippet) into one line.
pub(super) fn one_line(s: &str) -> String {
    let lines: Vec<&str> = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|') && !l.chars().all(|c| c == '^'))
        .collect();
    lines.join(" ")
}
