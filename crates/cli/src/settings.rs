//! Where the remote commands find their controller and token.
//!
//! `DUTLAB_URL` and `DUTLAB_TOKEN` in the environment win over the settings file that
//! `dutlab login` writes: `$XDG_CONFIG_HOME/dutlab/client.json`, else
//! `$HOME/.config/dutlab/client.json`, holding `{"url": "...", "token": "..."}` and, for an
//! `https://` controller, `"ca_file"` (a CA to trust) or `"pin"` (the server certificate's
//! `sha256:HEX`); `DUTLAB_CA` and `DUTLAB_PIN` in the environment win over those.
//!
//! Invariants:
//! - The file is written atomically (temporary file, then rename) with mode 0600 in a
//!   directory created with mode 0700; a file readable by others is still used, with a warning.
//! - The token from the file goes only to the file's URL: when `DUTLAB_URL` names another
//!   controller, the token must come from `DUTLAB_TOKEN`. The same holds for the file's
//!   `ca_file` and `pin`: they trust the file's controller only.
//! - A token is never printed: `Debug` shows `<redacted>`.
//! - The environment is read through a function, so the rules are tested without touching
//!   the process environment.

use crate::exit::{self, Exit};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Environment variable naming the controller URL.
pub const URL_VAR: &str = "DUTLAB_URL";
/// Environment variable holding the token.
pub const TOKEN_VAR: &str = "DUTLAB_TOKEN";
/// Environment variable naming a CA file to trust for `https://`.
pub const CA_VAR: &str = "DUTLAB_CA";
/// Environment variable holding a pinned server-certificate fingerprint (`sha256:HEX`).
pub const PIN_VAR: &str = "DUTLAB_PIN";

/// Largest settings file read.
const MAX_FILE: u64 = 64 << 10;

/// The settings file's content.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettingsFile {
    pub url: String,
    pub token: String,
    /// A CA file to trust for the URL (absolute).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// The pinned server-certificate fingerprint of the URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
}

impl fmt::Debug for SettingsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettingsFile")
            .field("url", &self.url)
            .field("token", &"<redacted>")
            .field("ca_file", &self.ca_file)
            .field("pin", &self.pin)
            .finish()
    }
}

/// Where a setting came from, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Env(&'static str),
    File(PathBuf),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Env(var) => f.write_str(var),
            Source::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// The resolved settings: each may be missing.
#[derive(Clone, PartialEq, Eq)]
pub struct Settings {
    pub url: Option<(String, Source)>,
    pub token: Option<(String, Source)>,
    /// Why the file's token is not used, when it is not.
    pub token_note: Option<String>,
    /// A CA file to trust, and where that came from.
    pub ca_file: Option<(PathBuf, Source)>,
    /// A pinned fingerprint, and where that came from.
    pub pin: Option<(String, Source)>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("url", &self.url)
            .field(
                "token",
                &self
                    .token
                    .as_ref()
                    .map(|(_, source)| ("<redacted>", source)),
            )
            .field("token_note", &self.token_note)
            .field("ca_file", &self.ca_file)
            .field("pin", &self.pin)
            .finish()
    }
}

/// The settings file's path, from `XDG_CONFIG_HOME` (if absolute) or `HOME`.
pub fn settings_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    let nonempty = |var: &str| env(var).filter(|v| !v.is_empty());
    if let Some(config) = nonempty("XDG_CONFIG_HOME").map(PathBuf::from)
        && config.is_absolute()
    {
        return Some(config.join("dutlab").join("client.json"));
    }
    nonempty("HOME").map(|home| {
        PathBuf::from(home)
            .join(".config")
            .join("dutlab")
            .join("client.json")
    })
}

/// Two spellings of one controller URL (`http://lab:8080` and `http://lab:8080/`).
fn same_url(a: &str, b: &str) -> bool {
    a.trim().trim_end_matches('/') == b.trim().trim_end_matches('/')
}

impl Settings {
    /// The precedence rules, given the environment and the file's content.
    pub fn combine(
        env: &dyn Fn(&str) -> Option<String>,
        file: Option<(PathBuf, SettingsFile)>,
    ) -> Settings {
        let nonempty = |var: &str| env(var).filter(|v| !v.trim().is_empty());
        let env_url = nonempty(URL_VAR);
        let env_token = nonempty(TOKEN_VAR).map(|t| t.trim().to_string());
        let mut token_note = None;
        let mut file_trust = (None, None);
        let (file_url, file_token) = match file {
            None => (None, None),
            Some((path, content)) => {
                let url = Some((content.url.clone(), Source::File(path.clone())));
                let for_this_url = env_url
                    .as_ref()
                    .is_none_or(|env_url| same_url(env_url, &content.url));
                if for_this_url {
                    file_trust = (
                        content
                            .ca_file
                            .clone()
                            .map(|c| (c, Source::File(path.clone()))),
                        content.pin.clone().map(|p| (p, Source::File(path.clone()))),
                    );
                }
                let token = match &env_url {
                    Some(env_url) if !same_url(env_url, &content.url) => {
                        token_note = Some(format!(
                            "the token in {} is for {}, not {env_url}",
                            path.display(),
                            content.url
                        ));
                        None
                    }
                    _ if content.token.is_empty() => None,
                    _ => Some((content.token, Source::File(path))),
                };
                (url, token)
            }
        };
        let env_ca = nonempty(CA_VAR).map(|c| (PathBuf::from(c), Source::Env(CA_VAR)));
        let env_pin = nonempty(PIN_VAR).map(|p| (p.trim().to_string(), Source::Env(PIN_VAR)));
        // The environment's trust replaces the file's as a whole (a CA there and a pin here
        // would otherwise conflict).
        let (ca_file, pin) = if env_ca.is_some() || env_pin.is_some() {
            (env_ca, env_pin)
        } else {
            file_trust
        };
        Settings {
            url: env_url.map(|u| (u, Source::Env(URL_VAR))).or(file_url),
            token: env_token
                .map(|t| (t, Source::Env(TOKEN_VAR)))
                .or(file_token),
            token_note,
            ca_file,
            pin,
        }
    }

    /// Reads the environment and the settings file.
    pub fn load(env: &dyn Fn(&str) -> Option<String>) -> Result<Settings, Exit> {
        let file = match settings_path(env) {
            Some(path) => load_file(&path)?.map(|content| (path, content)),
            None => None,
        };
        Ok(Settings::combine(env, file))
    }

    /// The URL, or the usage error that says how to give one.
    pub fn url(&self) -> Result<&str, Exit> {
        match &self.url {
            Some((url, _)) => Ok(url),
            None => Err(Exit::new(
                exit::USAGE,
                format!("no controller URL: set {URL_VAR} or run `dutlab login --url URL`"),
            )),
        }
    }

    /// The token, or the error that says how to give one.
    pub fn token(&self) -> Result<&str, Exit> {
        match &self.token {
            Some((token, _)) => Ok(token),
            None => {
                let mut message =
                    format!("no token: set {TOKEN_VAR} or run `dutlab login --url URL`");
                if let Some(note) = &self.token_note {
                    message.push_str(&format!(" ({note})"));
                }
                Err(Exit::new(exit::NO_PERMISSION, message))
            }
        }
    }

    /// What `https://` trusts: the CA file, the pin, or the system's roots.
    pub fn trust(&self) -> Result<tls::Trust, Exit> {
        let sources: Vec<String> = [
            self.ca_file.as_ref().map(|(_, s)| s.to_string()),
            self.pin.as_ref().map(|(_, s)| s.to_string()),
        ]
        .into_iter()
        .flatten()
        .collect();
        tls::Trust::from_settings(
            self.ca_file.as_ref().map(|(c, _)| c.clone()),
            self.pin.as_ref().map(|(p, _)| p.as_str()),
        )
        .map_err(|e| Exit::new(exit::USAGE, format!("{}: {e}", sources.join(", "))))
    }

    /// A client with URL, token and trust.
    pub fn client(&self) -> Result<client::Client, anyhow::Error> {
        let url = self.url()?;
        let token = self.token()?;
        let trust = self.trust()?;
        let source = self
            .url
            .as_ref()
            .map(|(_, s)| s.to_string())
            .unwrap_or_default();
        client::Client::with_trust(url, Some(token.to_string()), trust)
            .map_err(|e| anyhow::Error::new(e).context(format!("settings from {source}")))
    }
}

/// The file's content, `None` when there is no file.
pub fn load_file(path: &Path) -> Result<Option<SettingsFile>, Exit> {
    let unreadable = |reason: String| {
        Exit::new(
            exit::USAGE,
            format!(
                "{}: {reason}; run `dutlab login --url URL` to write it again",
                path.display()
            ),
        )
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(unreadable(format!("cannot read: {e}"))),
    };
    if meta.len() > MAX_FILE {
        return Err(unreadable(format!("larger than {MAX_FILE} bytes")));
    }
    if meta.permissions().mode() & 0o077 != 0 {
        eprintln!(
            "dutlab: warning: {} holds a token and is readable by others; run chmod 600 on it",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).map_err(|e| unreadable(format!("cannot read: {e}")))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| unreadable(format!("not a settings file: {e}")))
}

/// Writes the file with mode 0600 (its directory 0700), replacing it atomically.
pub fn save_file(path: &Path, content: &SettingsFile) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "client.json".into());
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        let text = serde_json::to_string_pretty(content).expect("settings always serialise");
        file.write_all(text.as_bytes())?;
        file.write_all(b"\n")?;
        file.sync_all()?;
        std::fs::rename(&temp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> + use<> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k: &str| map.get(k).cloned()
    }

    fn file(url: &str, token: &str) -> Option<(PathBuf, SettingsFile)> {
        Some((
            PathBuf::from("/cfg/dutlab/client.json"),
            SettingsFile {
                url: url.into(),
                token: token.into(),
                ca_file: None,
                pin: None,
            },
        ))
    }

    #[test]
    fn the_environment_wins_over_the_file() {
        let s = Settings::combine(
            &env(&[(URL_VAR, "http://a:1"), (TOKEN_VAR, "env-token")]),
            file("http://a:1/", "file-token"),
        );
        assert_eq!(s.url().expect("url"), "http://a:1");
        assert_eq!(s.token().expect("token"), "env-token");
        assert_eq!(
            s.token.as_ref().map(|t| &t.1),
            Some(&Source::Env(TOKEN_VAR))
        );
    }

    #[test]
    fn the_file_fills_what_the_environment_does_not_give() {
        let s = Settings::combine(&env(&[(TOKEN_VAR, "env-token")]), file("http://f:1", "ft"));
        assert_eq!(s.url().expect("url"), "http://f:1");
        assert_eq!(s.token().expect("token"), "env-token");
        let s = Settings::combine(&env(&[(URL_VAR, "http://f:1/")]), file("http://f:1", "ft"));
        assert_eq!(s.token().expect("token"), "ft");
        let s = Settings::combine(
            &env(&[(URL_VAR, ""), (TOKEN_VAR, " ")]),
            file("http://f:1", "ft"),
        );
        assert_eq!(
            s.url().expect("empty variables count as unset"),
            "http://f:1"
        );
        assert_eq!(s.token().expect("token"), "ft");
    }

    #[test]
    fn the_file_token_never_goes_to_another_controller() {
        let s = Settings::combine(
            &env(&[(URL_VAR, "http://other:1")]),
            file("http://f:1", "ft"),
        );
        assert_eq!(s.url().expect("url"), "http://other:1");
        let e = s.token().expect_err("no token for another controller");
        assert_eq!(e.code, exit::NO_PERMISSION);
        assert!(e.message.contains("DUTLAB_TOKEN"), "{}", e.message);
        assert!(e.message.contains("is for http://f:1"), "{}", e.message);
        assert!(!e.message.contains("ft"), "{}", e.message);
    }

    #[test]
    fn missing_settings_say_how_to_give_them() {
        let s = Settings::combine(&env(&[]), None);
        let e = s.url().expect_err("no url");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("DUTLAB_URL") && e.message.contains("dutlab login"));
        let e = s.token().expect_err("no token");
        assert_eq!(e.code, exit::NO_PERMISSION);
        assert!(e.message.contains("DUTLAB_TOKEN"));
    }

    #[test]
    fn the_path_follows_xdg_then_home() {
        assert_eq!(
            settings_path(&env(&[("XDG_CONFIG_HOME", "/x"), ("HOME", "/h")])),
            Some(PathBuf::from("/x/dutlab/client.json"))
        );
        assert_eq!(
            settings_path(&env(&[("XDG_CONFIG_HOME", "relative"), ("HOME", "/h")])),
            Some(PathBuf::from("/h/.config/dutlab/client.json"))
        );
        assert_eq!(settings_path(&env(&[])), None);
    }

    #[test]
    fn debug_output_hides_the_token() {
        let s = Settings::combine(
            &env(&[(TOKEN_VAR, "sekrit-value")]),
            file("http://f", "f-sekrit"),
        );
        let text = format!("{s:?} {:?}", file("u", "f-sekrit"));
        assert!(!text.contains("sekrit"), "{text}");
    }

    #[test]
    fn the_file_is_written_0600_and_read_back_through_the_environment() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("config");
        let env = env(&[("XDG_CONFIG_HOME", config.to_str().expect("utf-8 path"))]);
        let path = settings_path(&env).expect("path");
        let content = SettingsFile {
            url: "http://lab:8080/".into(),
            token: "dutlab_abc".into(),
            ca_file: Some(PathBuf::from("/etc/dutlab/ca.pem")),
            pin: None,
        };
        save_file(&path, &content).expect("save");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let dir_mode = std::fs::metadata(path.parent().expect("dir"))
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(dir_mode & 0o777, 0o700);
        // Writing again replaces it and keeps the mode.
        save_file(&path, &content).expect("save again");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let s = Settings::load(&env).expect("load");
        assert_eq!(s.url().expect("url"), "http://lab:8080/");
        assert_eq!(s.token().expect("token"), "dutlab_abc");
        let leftovers: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .collect();
        assert_eq!(leftovers.len(), 1, "no temporary file is left behind");
    }

    #[test]
    fn a_broken_file_is_a_usage_error_naming_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("client.json");
        std::fs::write(&path, "{not json").expect("write");
        let e = load_file(&path).expect_err("broken");
        assert_eq!(e.code, exit::USAGE);
        assert!(e.message.contains("client.json"), "{}", e.message);
        assert!(
            load_file(&dir.path().join("absent.json"))
                .expect("absent is fine")
                .is_none()
        );
    }

    #[test]
    fn the_files_trust_goes_with_its_url_and_the_environment_wins() {
        let pin = tls::Fingerprint::of(b"x").to_string();
        let with_ca = || {
            file("https://lab:7780", "t").map(|(path, mut content)| {
                content.ca_file = Some(PathBuf::from("/etc/dutlab/ca.pem"));
                (path, content)
            })
        };
        let s = Settings::combine(&env(&[]), with_ca());
        assert_eq!(
            s.trust().ok(),
            Some(tls::Trust::CaFile(PathBuf::from("/etc/dutlab/ca.pem")))
        );
        // Another controller in the environment: the file's CA is not used for it.
        let s = Settings::combine(&env(&[(URL_VAR, "https://other:7780")]), with_ca());
        assert_eq!(s.trust().ok(), Some(tls::Trust::System));
        // The environment's pin replaces the file's CA (no conflict).
        let s = Settings::combine(&env(&[(PIN_VAR, &pin)]), with_ca());
        assert!(matches!(s.trust(), Ok(tls::Trust::Pin(_))));
        // Both in the environment: refused, naming both sources.
        let s = Settings::combine(&env(&[(PIN_VAR, &pin), (CA_VAR, "/ca.pem")]), None);
        let e = s.trust().expect_err("both");
        assert!(
            e.to_string().contains(CA_VAR) && e.to_string().contains(PIN_VAR),
            "{e}"
        );
    }
}
