//! The Ceph key of the daemon's rados user: `--ceph-key-file` (a file holding only the
//! key) wins; else `--ceph-keyring-file` is parsed as a Ceph keyring and the `key = …` entry of the
//! `[client.<user>]` section is taken. Unlike the Go provider, which takes the first line that contains
//! `key` anywhere (so a section such as `[client.keystone]` breaks it).
//!
//! Keys are wrapped in [`SecretString`], whose `Debug`/`Display` never show the value.

use std::fmt;
use std::path::Path;

use crate::error::{Error, Result};

/// A secret string (a cephx key). Formatting it shows `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretString(String);

impl SecretString {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> SecretString {
        SecretString(s.into())
    }
    /// The secret itself (hand it only to the backend).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for SecretString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The keyring section name of a rados user: `client.<user>` (a leading `client.` is kept once).
pub fn section_name(user: &str) -> String {
    if user.starts_with("client.") {
        user.to_string()
    } else {
        format!("client.{user}")
    }
}

/// Finds the key of `user` in keyring text.
///
/// Sections are `[name]` lines; entries are `name = value`; `#` and `;` start comments. The entry
/// named exactly `key` of section `client.<user>` is returned. When `user` is empty and the keyring
/// has exactly one section with a key, that key is returned.
pub fn parse_keyring(text: &str, user: &str) -> std::result::Result<SecretString, String> {
    let mut section: Option<String> = None;
    let mut keys: Vec<(String, String)> = Vec::new();
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = Some(name.trim().to_string());
            continue;
        }
        let Some((name, value)) = line.split_once('=') else {
            continue;
        };
        if name.trim() != "key" {
            continue;
        }
        if let Some(s) = &section {
            keys.push((s.clone(), value.trim().to_string()));
        }
    }
    let found = if user.is_empty() {
        match keys.as_slice() {
            [(_, key)] => Some(key.clone()),
            [] => return Err("keyring has no key entry".to_string()),
            _ => return Err("keyring has several sections; set --ceph-user".to_string()),
        }
    } else {
        let want = section_name(user);
        keys.into_iter().find(|(s, _)| *s == want).map(|(_, k)| k)
    };
    match found {
        Some(k) if !k.is_empty() => Ok(SecretString::new(k)),
        Some(_) => Err(format!("the key of [{}] is empty", section_name(user))),
        None => Err(format!(
            "keyring has no key in section [{}]",
            section_name(user)
        )),
    }
}

/// Resolves the daemon's key from `--ceph-key-file` or `--ceph-keyring-file` (key file wins).
pub fn resolve_key(
    key_file: Option<&Path>,
    keyring_file: Option<&Path>,
    user: &str,
) -> Result<SecretString> {
    if let Some(p) = key_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::Key(format!("reading --ceph-key-file {}: {e}", p.display())))?;
        let key = text.trim();
        if key.is_empty() {
            return Err(Error::Key(format!(
                "--ceph-key-file {} is empty",
                p.display()
            )));
        }
        return Ok(SecretString::new(key));
    }
    if let Some(p) = keyring_file {
        let text = std::fs::read_to_string(p)
            .map_err(|e| Error::Key(format!("reading --ceph-keyring-file {}: {e}", p.display())))?;
        return parse_keyring(&text, user)
            .map_err(|e| Error::Key(format!("--ceph-keyring-file {}: {e}", p.display())));
    }
    Err(Error::Key(
        "one of --ceph-key-file or --ceph-keyring-file is required".to_string(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYRING: &str = "[client.keystone]\n\tkey = KEYSTONEKEY==\n\tcaps mon = \"allow r\"\n\
                           [client.admin]\n\tkey = ADMINKEY==\n\tcaps osd = \"allow *\"\n";

    #[test]
    fn the_key_of_the_users_section_is_taken_not_the_first_key_line() {
        assert_eq!(
            parse_keyring(KEYRING, "admin").expect("found").expose(),
            "ADMINKEY=="
        );
        assert_eq!(
            parse_keyring(KEYRING, "client.keystone")
                .expect("found")
                .expose(),
            "KEYSTONEKEY=="
        );
    }

    #[test]
    fn a_missing_section_is_an_error_naming_it() {
        let e = parse_keyring(KEYRING, "volumes").expect_err("must fail");
        assert!(e.contains("[client.volumes]"), "{e}");
    }

    #[test]
    fn keyring_entry_names_must_be_exactly_key() {
        let text = "[client.a]\n keyring = /x\n# key = COMMENT\n key=REAL\n";
        assert_eq!(parse_keyring(text, "a").expect("found").expose(), "REAL");
    }

    #[test]
    fn a_single_section_keyring_needs_no_user() {
        assert_eq!(
            parse_keyring("[client.x]\nkey = K\n", "")
                .expect("found")
                .expose(),
            "K"
        );
        assert!(parse_keyring(KEYRING, "").is_err());
    }

    #[test]
    fn the_key_file_wins_over_the_keyring_and_is_trimmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let kf = dir.path().join("key");
        let kr = dir.path().join("keyring");
        std::fs::write(&kf, "FILEKEY\n").expect("write");
        std::fs::write(&kr, KEYRING).expect("write");
        assert_eq!(
            resolve_key(Some(&kf), Some(&kr), "admin")
                .expect("ok")
                .expose(),
            "FILEKEY"
        );
        assert_eq!(
            resolve_key(None, Some(&kr), "admin").expect("ok").expose(),
            "ADMINKEY=="
        );
        assert!(resolve_key(None, None, "admin").is_err());
    }

    #[test]
    fn secrets_never_format_their_value() {
        let s = SecretString::new("hunter2");
        assert_eq!(format!("{s:?} {s}"), "*** ***");
    }
}
