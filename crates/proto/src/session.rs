//! Sessions: what a person's lease does with its device through the agent (power, flash,
//! screenshot), and the public SSH keys a lease brings to its DUT.
//!
//! A *session* is the agent's side of a person's lease: from `StartSession` to `DropLease`
//! the agent keeps the device for the lease's holder and runs the [`SessionAction`]s the
//! controller forwards, each under a [`RequestId`] and answered by one [`SessionResult`].
//!
//! Invariants:
//! - Every value here that crosses the agent link is checked where it is used: a key line by
//!   [`check_public_key`] (controller at acquire, agent again before it writes the key), an
//!   artifact digest by [`check_digest`], a screenshot by [`MAX_SCREENSHOT`].
//! - A public key line is `TYPE BASE64 [COMMENT]` with `TYPE` one of [`KEY_TYPES`]: no
//!   `authorized_keys` options (`command=`, `from=` ...), no control characters, at most
//!   [`MAX_KEY_LINE`] bytes; at most [`MAX_KEYS`] keys per lease.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Number of one request of a session, given by the controller; unique per controller run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct RequestId(pub u64);

impl fmt::Display for RequestId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// What `dutlab power` asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    Off,
    /// Off, then on (a fresh boot).
    Cycle,
    /// Only report the state.
    Status,
}

impl PowerAction {
    pub fn as_str(self) -> &'static str {
        match self {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "cycle",
            PowerAction::Status => "status",
        }
    }
}

impl fmt::Display for PowerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A device's power as its driver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PowerState {
    On,
    Off,
    /// Powered but not running (QEMU stopped).
    Paused,
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PowerState::On => "on",
            PowerState::Off => "off",
            PowerState::Paused => "paused",
        })
    }
}

/// One thing the holder of a lease asks of its device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum SessionAction {
    Power {
        power: PowerAction,
    },
    /// Fetch this artifact (64 hex digits of its SHA-256) for the lease and make it the
    /// device's storage; the next power-on boots it.
    Flash {
        sha256: String,
        size: u64,
    },
    /// A PNG of the device's display.
    Screenshot,
    /// The DUT's own address on its network.
    Address,
    /// The end of the console output recorded in this session (at most [`MAX_SERIAL`]
    /// bytes), whether the DUT is on or off.
    Serial,
}

impl SessionAction {
    /// For messages: `power on`, `flash`, `screenshot`, ...
    pub fn describe(&self) -> String {
        match self {
            SessionAction::Power { power } => format!("power {power}"),
            SessionAction::Flash { .. } => "flash".to_owned(),
            SessionAction::Screenshot => "screenshot".to_owned(),
            SessionAction::Address => "address".to_owned(),
            SessionAction::Serial => "serial log".to_owned(),
        }
    }
}

/// The answer to one [`SessionAction`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum SessionResult {
    Power {
        state: PowerState,
    },
    /// The image is the device's storage now.
    Flashed {
        bytes: u64,
    },
    /// `png` is base64 of at most [`MAX_SCREENSHOT`] bytes of PNG.
    Screenshot {
        png: String,
    },
    /// The DUT's address on its own network (`10.0.2.15` for QEMU's user-mode network): what
    /// the DUT calls itself, not an address the client can route to.
    Address {
        address: String,
    },
    /// `log` is base64 of the last at most [`MAX_SERIAL`] bytes of the session's console
    /// output; `skipped` counts the bytes before them.
    Serial {
        log: String,
        skipped: u64,
    },
    /// The action could not be done; `reason` is for people.
    Failed {
        reason: String,
    },
}

/// Largest screenshot (PNG bytes) an agent sends: its base64 fits one link frame.
pub const MAX_SCREENSHOT: usize = 512 << 10;

/// Most console bytes an agent sends for [`SessionAction::Serial`]: its base64 fits one link
/// frame.
pub const MAX_SERIAL: usize = 512 << 10;

/// Key types accepted in a lease's SSH keys.
pub const KEY_TYPES: [&str; 5] = [
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
];

/// Longest key line accepted (an RSA key of 16384 bits is about 2.8 KB).
pub const MAX_KEY_LINE: usize = 8 << 10;

/// Most keys one lease brings.
pub const MAX_KEYS: usize = 8;

/// Longest key comment kept.
const MAX_COMMENT: usize = 256;

/// Checks one public key line and returns it normalised (`TYPE BASE64 [COMMENT]`, single
/// spaces, no line break), or why it is refused.
pub fn check_public_key(line: &str) -> Result<String, String> {
    if line.len() > MAX_KEY_LINE {
        return Err(format!(
            "{} bytes, more than the {MAX_KEY_LINE} allowed",
            line.len()
        ));
    }
    if line
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\r')
    {
        return Err("holds a control character".into());
    }
    let line = line.trim();
    if line.contains(['\n', '\r']) {
        return Err("holds more than one line (give one key per entry)".into());
    }
    let mut words = line.split_ascii_whitespace();
    let kind = words.next().ok_or("is empty")?;
    if !KEY_TYPES.contains(&kind) {
        return Err(format!(
            "key type {:?} is not one of {} (options such as command= are not accepted)",
            kind.chars().take(40).collect::<String>(),
            KEY_TYPES.join(", ")
        ));
    }
    let body = words.next().ok_or("has no key after its type")?;
    let base64 = body
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='));
    if body.len() < 16 || !body.len().is_multiple_of(4) || !base64 {
        return Err("the key is not base64".into());
    }
    let comment: Vec<&str> = words.collect();
    let comment = comment.join(" ");
    if comment.len() > MAX_COMMENT {
        return Err(format!("comment is longer than {MAX_COMMENT} bytes"));
    }
    Ok(if comment.is_empty() {
        format!("{kind} {body}")
    } else {
        format!("{kind} {body} {comment}")
    })
}

/// Checks a lease's keys (at most [`MAX_KEYS`]) and returns them normalised; the error names
/// the key's index.
pub fn check_public_keys(keys: &[String]) -> Result<Vec<String>, String> {
    if keys.len() > MAX_KEYS {
        return Err(format!("at most {MAX_KEYS} keys, not {}", keys.len()));
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| check_public_key(k).map_err(|e| format!("[{i}]: {e}")))
        .collect()
}

/// Whether `hex` is a SHA-256 digest as artifacts are named: 64 lower-case hex digits.
pub fn check_digest(hex: &str) -> bool {
    hex.len() == 64 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIHx4yS0cEn1Zx0s8Nn3yYwB7X2ZQd9w6R3ZlVnq1m1bQ";

    #[test]
    fn good_keys_are_normalised() {
        assert_eq!(
            check_public_key(&format!("  ssh-ed25519   {KEY}  me@host \n")),
            Ok(format!("ssh-ed25519 {KEY} me@host"))
        );
        assert_eq!(
            check_public_key(&format!("ssh-rsa {KEY}")),
            Ok(format!("ssh-rsa {KEY}"))
        );
    }

    #[test]
    fn hostile_keys_are_refused_with_a_reason() {
        for bad in [
            String::new(),
            format!("command=\"rm -rf /\" ssh-ed25519 {KEY}"),
            format!("ssh-dss {KEY}"),
            "ssh-ed25519".to_owned(),
            "ssh-ed25519 not$base64!".to_owned(),
            format!("ssh-ed25519 {KEY} a\nssh-ed25519 {KEY} b"),
            format!("ssh-ed25519 {KEY} bell\u{7}"),
            format!("ssh-ed25519 {KEY} {}", "x".repeat(300)),
            format!("ssh-ed25519 {}", "A".repeat(MAX_KEY_LINE + 4)),
        ] {
            let e = check_public_key(&bad).expect_err(&bad);
            assert!(!e.is_empty());
        }
        let many = vec![format!("ssh-ed25519 {KEY}"); MAX_KEYS + 1];
        assert!(check_public_keys(&many).is_err());
        let e =
            check_public_keys(&[format!("ssh-ed25519 {KEY}"), "x".into()]).expect_err("refused");
        assert!(e.starts_with("[1]: "), "{e}");
    }

    #[test]
    fn actions_and_results_are_tagged_json() {
        let a = SessionAction::Power {
            power: PowerAction::Cycle,
        };
        let json = serde_json::to_string(&a).expect("serialises");
        assert_eq!(json, r#"{"action":"power","power":"cycle"}"#);
        let r: SessionResult =
            serde_json::from_str(r#"{"result":"failed","reason":"no"}"#).expect("parses");
        assert_eq!(
            r,
            SessionResult::Failed {
                reason: "no".into()
            }
        );
        assert!(check_digest(&"a".repeat(64)));
        assert!(!check_digest(&"A".repeat(64)));
        assert!(!check_digest("../etc"));
    }
}
