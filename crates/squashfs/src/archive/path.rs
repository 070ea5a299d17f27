//! Path safety for archive members: every name a source hands to the writer is relative, has no
//! empty, `.` or `..` components, and cannot reach outside the image root.

use std::fmt;

/// Why a member name cannot be placed in an image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PathProblem {
    /// Starts with '/': GNU tar strips the slash with a warning; an image builder must not guess.
    Absolute,
    /// Has a `..` component. Even `a/../b`, which stays inside, is refused: after a symlink `a`
    /// it would not, and GNU tar refuses it too.
    Escapes,
    /// Contains a NUL byte (possible in pax records), which no filesystem name can hold.
    Nul,
    /// Has a component longer than NAME_MAX (255 bytes), which no Linux filesystem takes
    /// (GNU tar: "File name too long").
    TooLong,
}

/// The longest name one path component may have on Linux (NAME_MAX).
pub const NAME_MAX: usize = 255;

impl fmt::Display for PathProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PathProblem::Absolute => "absolute path escapes the image root",
            PathProblem::Escapes => "path escapes the image root",
            PathProblem::Nul => "path contains a NUL byte",
            PathProblem::TooLong => "a name in the path is longer than 255 bytes (NAME_MAX)",
        })
    }
}

/// Normalizes a member name: strips leading `./`, collapses `a//b` and `a/./b`, drops a trailing
/// `/`. Returns `None` for the root itself (`.`, `./`, ``), the normalized relative path otherwise.
pub fn normalize_member_path(raw: &[u8]) -> Result<Option<Vec<u8>>, PathProblem> {
    if raw.first() == Some(&b'/') {
        return Err(PathProblem::Absolute);
    }
    if raw.contains(&0) {
        return Err(PathProblem::Nul);
    }
    let mut out = Vec::with_capacity(raw.len());
    for component in raw.split(|&b| b == b'/') {
        match component {
            b"" | b"." => continue,
            b".." => return Err(PathProblem::Escapes),
            name if name.len() > NAME_MAX => return Err(PathProblem::TooLong),
            name => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(name);
            }
        }
    }
    Ok(if out.is_empty() { None } else { Some(out) })
}

/// The parent of a normalized path (`a/b/c` → `a/b`), `None` for a top-level name.
pub fn parent_of(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(raw: &str) -> Result<Option<String>, PathProblem> {
        normalize_member_path(raw.as_bytes())
            .map(|p| p.map(|p| String::from_utf8(p).expect("test paths are UTF-8")))
    }

    #[test]
    fn strips_dot_slash_and_collapses_separators() {
        assert_eq!(norm("./a/b"), Ok(Some("a/b".into())));
        assert_eq!(norm("././a//b/./c/"), Ok(Some("a/b/c".into())));
        assert_eq!(norm("a/"), Ok(Some("a".into())));
        assert_eq!(
            norm(".hidden/..dots/...x"),
            Ok(Some(".hidden/..dots/...x".into()))
        );
    }

    #[test]
    fn root_spellings_are_none() {
        for root in ["", ".", "./", ".//./"] {
            assert_eq!(norm(root), Ok(None), "{root:?}");
        }
    }

    #[test]
    fn refuses_escapes_absolute_and_nul() {
        assert_eq!(norm("../etc/passwd"), Err(PathProblem::Escapes));
        assert_eq!(norm("a/../../b"), Err(PathProblem::Escapes));
        assert_eq!(norm("a/.."), Err(PathProblem::Escapes));
        assert_eq!(norm("/etc/passwd"), Err(PathProblem::Absolute));
        assert_eq!(norm("//x"), Err(PathProblem::Absolute));
        assert_eq!(normalize_member_path(b"a\0b"), Err(PathProblem::Nul));
    }

    #[test]
    fn refuses_a_component_over_name_max() {
        let longest = "n".repeat(NAME_MAX);
        assert_eq!(
            norm(&format!("d/{longest}")),
            Ok(Some(format!("d/{longest}")))
        );
        assert_eq!(norm(&format!("d/{longest}x/f")), Err(PathProblem::TooLong));
    }

    #[test]
    fn parent() {
        assert_eq!(parent_of(b"a/b/c"), Some(&b"a/b"[..]));
        assert_eq!(parent_of(b"a"), None);
    }
}
