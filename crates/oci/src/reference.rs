//! Image references parsed the way containerd's `reference.Parse` does: the first path segment is
//! always the registry host (no `docker.io` / `library/` normalisation), the object is `:tag`,
//! `@digest` or both (the digest wins when resolving).

use std::fmt;

use crate::Error;

/// A parsed image reference `host/repository[:tag][@sha256:<hex>]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    host: String,
    repository: String,
    tag: Option<String>,
    digest: Option<String>,
}

impl Reference {
    /// Parses `s`. A reference without an explicit host (`ubuntu:22.04`), without a tag or digest, or
    /// with a digest other than `sha256:<64 lowercase hex>` is an [`Error::InvalidReference`].
    pub fn parse(s: &str) -> Result<Reference, Error> {
        let invalid = |why: &str| Error::InvalidReference(format!("{s:?}: {why}"));
        if s.is_empty() {
            return Err(invalid("empty reference"));
        }
        if s.contains("://") {
            return Err(invalid("a reference has no URL scheme"));
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid("whitespace in reference"));
        }
        let Some((host, rest)) = s.split_once('/') else {
            return Err(invalid(
                "reference needs an explicit registry host (host/repository:tag)",
            ));
        };
        validate_host(host).map_err(|why| invalid(&why))?;

        // As containerd: the object starts at the first ':' or '@' of the path.
        let (path, object) = match rest.find([':', '@']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        validate_repository(path).map_err(|why| invalid(&why))?;
        let object = object.strip_prefix(':').unwrap_or(object);
        let (tag, digest) = match object.split_once('@') {
            Some((tag, digest)) => (tag, Some(digest)),
            None => (object, None),
        };
        let tag = if tag.is_empty() {
            None
        } else {
            validate_tag(tag).map_err(|why| invalid(&why))?;
            Some(tag.to_string())
        };
        let digest = match digest {
            Some(d) => {
                if !is_sha256_digest(d) {
                    return Err(invalid("digest must be sha256:<64 lowercase hex>"));
                }
                Some(d.to_string())
            }
            None => None,
        };
        if tag.is_none() && digest.is_none() {
            return Err(invalid("reference needs a tag or a digest"));
        }
        Ok(Reference {
            host: host.to_string(),
            repository: path.to_string(),
            tag,
            digest,
        })
    }

    /// Registry host, with port if any (`registry.example.com:5000`).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Repository path inside the registry (`ironcore/gardenlinux`).
    pub fn repository(&self) -> &str {
        &self.repository
    }

    /// Tag, if the reference has one.
    pub fn tag(&self) -> Option<&str> {
        self.tag.as_deref()
    }

    /// Digest, if the reference has one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// `host/repository`: the reference without tag and digest.
    pub fn locator(&self) -> String {
        format!("{}/{}", self.host, self.repository)
    }

    /// What to ask the registry for: the digest if present, else the tag.
    pub fn object(&self) -> &str {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d,
            (None, Some(t)) => t,
            (None, None) => "",
        }
    }

    /// The same repository pinned to `digest` (no tag).
    pub fn with_digest(&self, digest: &str) -> Reference {
        Reference {
            host: self.host.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest.to_string()),
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.host, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Whether `d` is `sha256:` followed by 64 lowercase hex digits.
pub(crate) fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("empty registry host".into());
    }
    // `[::1]:5000`, `host:5000`, `host`.
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let Some((v6, after)) = rest.split_once(']') else {
            return Err("unterminated IPv6 host".into());
        };
        if v6.is_empty() || !v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':') {
            return Err(format!("invalid IPv6 host {host:?}"));
        }
        match after {
            "" => (v6, None),
            p => match p.strip_prefix(':') {
                Some(p) => (v6, Some(p)),
                None => return Err(format!("invalid host {host:?}")),
            },
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n, Some(p)),
            None => (host, None),
        }
    };
    if !host.starts_with('[')
        && (name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            || name.starts_with(['.', '-'])
            || name.ends_with(['.', '-']))
    {
        return Err(format!("invalid registry host {host:?}"));
    }
    if let Some(p) = port {
        if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid port in {host:?}"));
        }
    }
    Ok(())
}

fn validate_repository(path: &str) -> Result<(), String> {
    if path.is_empty() {
        return Err("empty repository".into());
    }
    for comp in path.split('/') {
        let ok = !comp.is_empty()
            && comp
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && comp.as_bytes()[0].is_ascii_alphanumeric()
            && comp.as_bytes()[comp.len() - 1].is_ascii_alphanumeric();
        if !ok {
            return Err(format!(
                "invalid repository component {comp:?} (lowercase letters, digits, '.', '_', '-')"
            ));
        }
    }
    Ok(())
}

fn validate_tag(tag: &str) -> Result<(), String> {
    let ok = tag.len() <= 128
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
        && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid tag {tag:?}"))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn a_tagged_reference_splits_into_host_repository_and_tag() {
        let r = Reference::parse("ghcr.io/ironcore-dev/os-images/gardenlinux:1443.3").unwrap();
        assert_eq!(r.host(), "ghcr.io");
        assert_eq!(r.repository(), "ironcore-dev/os-images/gardenlinux");
        assert_eq!(r.tag(), Some("1443.3"));
        assert_eq!(r.digest(), None);
        assert_eq!(r.locator(), "ghcr.io/ironcore-dev/os-images/gardenlinux");
        assert_eq!(r.object(), "1443.3");
    }

    #[test]
    fn a_host_with_a_port_is_not_mistaken_for_a_tag() {
        let r = Reference::parse("127.0.0.1:5000/os/image:v1").unwrap();
        assert_eq!(r.host(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "os/image");
        assert_eq!(r.tag(), Some("v1"));
        let r = Reference::parse("[::1]:5000/os/image:v1").unwrap();
        assert_eq!(r.host(), "[::1]:5000");
    }

    #[test]
    fn the_digest_wins_over_the_tag_when_both_are_given() {
        let r = Reference::parse(&format!("localhost:5000/os/image:v1@{D}")).unwrap();
        assert_eq!(r.tag(), Some("v1"));
        assert_eq!(r.digest(), Some(D));
        assert_eq!(r.object(), D);
        assert_eq!(r.to_string(), format!("localhost:5000/os/image:v1@{D}"));
        let pinned = Reference::parse(&format!("localhost:5000/os/image@{D}")).unwrap();
        assert_eq!(pinned.tag(), None);
        assert_eq!(pinned, r.with_digest(D));
    }

    #[test]
    fn references_without_a_host_tag_or_valid_digest_are_invalid() {
        for bad in [
            "",
            "ubuntu:22.04",
            "ubuntu",
            "https://ghcr.io/os/image:v1",
            "ghcr.io/os/image",
            "ghcr.io/:v1",
            "ghcr.io/OS/image:v1",
            "ghcr.io//image:v1",
            "ghcr.io/os/image:v1@sha256:abc",
            "ghcr.io/os/image@sha512:0123",
            "ghcr.io/os/image:-bad",
            "ghcr.io/os/image:v 1",
            "gh cr.io/os/image:v1",
            "ghcr.io:port/os/image:v1",
        ] {
            assert!(
                matches!(Reference::parse(bad), Err(Error::InvalidReference(_))),
                "{bad:?} should be invalid"
            );
        }
    }

    #[test]
    fn docker_hub_style_references_are_not_normalised() {
        // containerd: the first segment is the host, even without a dot.
        let r = Reference::parse("library/ubuntu:22.04").unwrap();
        assert_eq!(r.host(), "library");
        assert_eq!(r.repository(), "ubuntu");
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod properties {
    use super::*;
    use proptest::prelude::*;

    fn host() -> impl Strategy<Value = String> {
        (
            "[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?(\\.[a-z0-9]{1,6}){0,2}",
            proptest::option::of(1u16..),
        )
            .prop_map(|(h, port)| match port {
                Some(p) => format!("{h}:{p}"),
                None => h,
            })
    }

    fn repository() -> impl Strategy<Value = String> {
        proptest::collection::vec("[a-z0-9]([a-z0-9._-]{0,6}[a-z0-9])?", 1..4)
            .prop_map(|parts| parts.join("/"))
    }

    proptest! {
        #[test]
        fn parsing_the_display_form_gives_back_the_reference(
            host in host(),
            repo in repository(),
            tag in proptest::option::of("[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}"),
            digest in proptest::option::of("[0-9a-f]{64}"),
        ) {
            prop_assume!(tag.is_some() || digest.is_some());
            let mut s = format!("{host}/{repo}");
            if let Some(t) = &tag {
                s.push(':');
                s.push_str(t);
            }
            if let Some(d) = &digest {
                s.push_str("@sha256:");
                s.push_str(d);
            }
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(r.host(), host.as_str());
            prop_assert_eq!(r.repository(), repo.as_str());
            prop_assert_eq!(r.tag(), tag.as_deref());
            prop_assert_eq!(r.digest().map(|d| d[7..].to_string()), digest);
            prop_assert_eq!(r.to_string(), s);
            prop_assert_eq!(r.locator(), format!("{host}/{repo}"));
        }

        #[test]
        fn parsing_never_panics(s in "\\PC{0,80}") {
            let _ = Reference::parse(&s);
        }
    }
}
