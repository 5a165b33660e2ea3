//! Share names and file paths, validated once at the edge.
//!
//! A [`FilePath`] is a path inside a share: zero or more segments, none of them
//! empty, `.` or `..`, so it can never name anything outside its share.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest file or directory name, in bytes (as POSIX `NAME_MAX`).
pub const NAME_BYTES_MAX: usize = 255;
/// Longest path inside a share, in bytes (as POSIX `PATH_MAX`).
pub const PATH_BYTES_MAX: usize = 4096;
/// Longest share name, in bytes.
pub const SHARE_BYTES_MAX: usize = 63;

/// Why a path or share name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    #[error("path is longer than {PATH_BYTES_MAX} bytes")]
    PathTooLong,
    #[error("name is longer than {NAME_BYTES_MAX} bytes")]
    NameTooLong,
    #[error("path has an empty segment")]
    EmptySegment,
    #[error("path segments '.' and '..' are not allowed")]
    DotSegment,
    #[error("names may not contain NUL, '/', '\\' or control characters")]
    BadCharacter,
    #[error("segment is not valid percent-encoded UTF-8")]
    BadEncoding,
    #[error("share names are 1 to {SHARE_BYTES_MAX} characters of a-z, 0-9, '-' and '_'")]
    BadShareName,
}

/// The name of a share: `[a-z0-9][a-z0-9_-]*`, at most 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ShareName(String);

impl ShareName {
    pub fn parse(s: &str) -> Result<Self, PathError> {
        let ok_first = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        let ok_rest = |c: char| ok_first(c) || c == '-' || c == '_';
        let mut chars = s.chars();
        let valid =
            s.len() <= SHARE_BYTES_MAX && chars.next().is_some_and(ok_first) && chars.all(ok_rest);
        if valid {
            Ok(Self(s.to_owned()))
        } else {
            Err(PathError::BadShareName)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ShareName {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<ShareName> for String {
    fn from(s: ShareName) -> Self {
        s.0
    }
}

impl fmt::Display for ShareName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated path inside a share, segments joined by `/`; empty for the root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct FilePath(String);

impl FilePath {
    /// The share's root directory.
    pub fn root() -> Self {
        Self(String::new())
    }

    /// Parses `a/b/c` (no leading or trailing slash; empty means the root).
    pub fn parse(s: &str) -> Result<Self, PathError> {
        if s.is_empty() {
            return Ok(Self::root());
        }
        if s.len() > PATH_BYTES_MAX {
            return Err(PathError::PathTooLong);
        }
        for segment in s.split('/') {
            check_name(segment)?;
        }
        Ok(Self(s.to_owned()))
    }

    /// Parses a URL path tail whose segments are percent-encoded. A `%2F`
    /// decodes to a '/' inside a name and is refused, as is any '..'.
    pub fn parse_url(raw: &str) -> Result<Self, PathError> {
        if raw.is_empty() {
            return Ok(Self::root());
        }
        if raw.len() > 3 * PATH_BYTES_MAX {
            return Err(PathError::PathTooLong);
        }
        let mut out = String::with_capacity(raw.len());
        for (i, segment) in raw.split('/').enumerate() {
            let name = percent_decode(segment)?;
            check_name(&name)?;
            if i > 0 {
                out.push('/');
            }
            out.push_str(&name);
        }
        Self::parse(&out)
    }

    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's names, outermost first; none for the root.
    pub fn segments(&self) -> impl Iterator<Item = &str> {
        self.0.split('/').filter(|s| !s.is_empty())
    }

    /// The parent directory and the last name; `None` for the root.
    pub fn split_last(&self) -> Option<(FilePath, &str)> {
        if self.is_root() {
            return None;
        }
        match self.0.rsplit_once('/') {
            Some((parent, name)) => Some((Self(parent.to_owned()), name)),
            None => Some((Self::root(), &self.0)),
        }
    }

    /// The last name, or `""` for the root.
    pub fn file_name(&self) -> &str {
        self.split_last().map_or("", |(_, name)| name)
    }

    /// `self/name`, validated.
    pub fn join(&self, name: &str) -> Result<Self, PathError> {
        if self.is_root() {
            Self::parse(name)
        } else {
            Self::parse(&format!("{}/{}", self.0, name))
        }
    }

    /// True if `self` is `other` or lies below it.
    pub fn starts_with(&self, other: &FilePath) -> bool {
        other.is_root()
            || self.0 == other.0
            || (self.0.starts_with(&other.0) && self.0.as_bytes().get(other.0.len()) == Some(&b'/'))
    }
}

/// Checks one file or directory name.
pub fn check_name(name: &str) -> Result<(), PathError> {
    if name.is_empty() {
        return Err(PathError::EmptySegment);
    }
    if name == "." || name == ".." {
        return Err(PathError::DotSegment);
    }
    if name.len() > NAME_BYTES_MAX {
        return Err(PathError::NameTooLong);
    }
    if name
        .chars()
        .any(|c| c == '/' || c == '\\' || c.is_control())
    {
        return Err(PathError::BadCharacter);
    }
    Ok(())
}

fn percent_decode(segment: &str) -> Result<String, PathError> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(PathError::BadEncoding)?;
            let hi = hex_digit(hex[0])?;
            let lo = hex_digit(hex[1])?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PathError::BadEncoding)
}

fn hex_digit(c: u8) -> Result<u8, PathError> {
    char::from(c)
        .to_digit(16)
        .and_then(|d| u8::try_from(d).ok())
        .ok_or(PathError::BadEncoding)
}

impl TryFrom<String> for FilePath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::parse(&s)
    }
}

impl From<FilePath> for String {
    fn from(p: FilePath) -> Self {
        p.0
    }
}

impl fmt::Display for FilePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "/{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_ordinary_paths() {
        let p = FilePath::parse("bars/a.bin").unwrap();
        assert_eq!(p.segments().collect::<Vec<_>>(), ["bars", "a.bin"]);
        let (parent, name) = p.split_last().unwrap();
        assert_eq!(parent.as_str(), "bars");
        assert_eq!(name, "a.bin");
        assert!(FilePath::parse("").unwrap().is_root());
        assert!(FilePath::parse("ünïcode name.txt").is_ok());
    }

    #[test]
    fn refuses_escapes_and_junk() {
        for (bad, why) in [
            ("..", PathError::DotSegment),
            ("a/../b", PathError::DotSegment),
            ("./a", PathError::DotSegment),
            ("a//b", PathError::EmptySegment),
            ("/a", PathError::EmptySegment),
            ("a/", PathError::EmptySegment),
            ("a\0b", PathError::BadCharacter),
            ("a\\b", PathError::BadCharacter),
            ("a\nb", PathError::BadCharacter),
        ] {
            assert_eq!(FilePath::parse(bad), Err(why), "{bad:?}");
        }
        assert_eq!(
            FilePath::parse(&"x".repeat(256)),
            Err(PathError::NameTooLong)
        );
        assert!(FilePath::parse(&"x".repeat(255)).is_ok());
        let long = vec!["y".repeat(200); 21].join("/");
        assert_eq!(FilePath::parse(&long), Err(PathError::PathTooLong));
    }

    #[test]
    fn url_decoding_cannot_smuggle_separators() {
        assert_eq!(FilePath::parse_url("a%2Fb"), Err(PathError::BadCharacter));
        assert_eq!(FilePath::parse_url("%2E%2E"), Err(PathError::DotSegment));
        assert_eq!(FilePath::parse_url("a%00"), Err(PathError::BadCharacter));
        assert_eq!(FilePath::parse_url("a%zz"), Err(PathError::BadEncoding));
        assert_eq!(FilePath::parse_url("a%ff"), Err(PathError::BadEncoding));
        assert_eq!(FilePath::parse_url("a%2"), Err(PathError::BadEncoding));
        assert_eq!(
            FilePath::parse_url("sp%20ace/x").unwrap().as_str(),
            "sp ace/x"
        );
    }

    #[test]
    fn share_names() {
        assert!(ShareName::parse("default").is_ok());
        assert!(ShareName::parse("team-1_a").is_ok());
        for bad in ["", "-a", "A", "a/b", "a.b", &"a".repeat(64)] {
            assert!(ShareName::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn starts_with_respects_segment_boundaries() {
        let a = FilePath::parse("a").unwrap();
        assert!(FilePath::parse("a/b").unwrap().starts_with(&a));
        assert!(a.starts_with(&a));
        assert!(!FilePath::parse("ab").unwrap().starts_with(&a));
        assert!(a.starts_with(&FilePath::root()));
    }

    proptest! {
        /// Whatever a client sends, an accepted path has only clean segments
        /// and survives a round trip through its string form.
        #[test]
        fn accepted_paths_are_clean(raw in "[a-z./%\\\\0-9]{0,40}") {
            if let Ok(p) = FilePath::parse_url(&raw) {
                prop_assert!(p.as_str().len() <= PATH_BYTES_MAX);
                for s in p.segments() {
                    prop_assert!(s != "." && s != ".." && !s.is_empty());
                    prop_assert!(!s.contains('\\') && !s.contains('\0'));
                }
                prop_assert_eq!(FilePath::parse(p.as_str()), Ok(p.clone()));
            }
        }

        #[test]
        fn parse_never_panics(raw in any::<String>()) {
            let _ = FilePath::parse(&raw);
            let _ = FilePath::parse_url(&raw);
            let _ = ShareName::parse(&raw);
        }
    }
}
