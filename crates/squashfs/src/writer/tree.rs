//! The image's namespace as the writer builds it: inodes in an arena, directories mapping names
//! to inode indexes. Hardlinks are several names for one inode; re-adding a path replaces the
//! earlier entry, as tar extraction does.

use std::collections::BTreeMap;

use super::super::{Error, Meta, Result, Special};
use super::data::FileData;

pub(crate) type InodeIdx = usize;
pub(crate) const ROOT: InodeIdx = 0;

pub(crate) enum Kind {
    Dir(BTreeMap<Vec<u8>, InodeIdx>),
    File(FileData),
    Symlink(Vec<u8>),
    Special(Special),
}

pub(crate) struct Inode {
    pub meta: Meta,
    pub kind: Kind,
    /// Names pointing at this inode (non-directories); directories count subdirectories later.
    pub names: u32,
}

pub(crate) struct Tree {
    pub inodes: Vec<Inode>,
}

/// Split a relative path into its components, rejecting anything that could address outside
/// the root or that SquashFS cannot store.
pub(crate) fn components(path: &[u8]) -> Result<Vec<&[u8]>> {
    if path.is_empty() || path[0] == b'/' {
        return Err(Error::bad_entry(
            path,
            "path must be relative and not empty",
        ));
    }
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|c| !c.is_empty())
        .collect();
    for c in &parts {
        if *c == b"." || *c == b".." {
            return Err(Error::bad_entry(path, "path has a '.' or '..' component"));
        }
        // NAME_MAX: SquashFS could hold 256, but no Linux filesystem (nor lookup) takes it.
        if c.len() > 255 {
            return Err(Error::bad_entry(
                path,
                "a name is longer than 255 bytes (NAME_MAX)",
            ));
        }
        if c.contains(&0) {
            return Err(Error::bad_entry(path, "a name contains a NUL byte"));
        }
    }
    if parts.is_empty() {
        return Err(Error::bad_entry(path, "path names no entry"));
    }
    Ok(parts)
}

impl Tree {
    pub fn new() -> Self {
        let root = Inode {
            meta: Meta {
                mode: 0o755,
                ..Meta::default()
            },
            kind: Kind::Dir(BTreeMap::new()),
            names: 1,
        };
        Tree { inodes: vec![root] }
    }

    pub fn root_meta(&mut self, meta: Meta) {
        self.inodes[ROOT].meta = meta;
    }

    /// The directory that will hold `path`'s last component, creating missing parents.
    fn parent_dir(&mut self, path: &[u8], parts: &[&[u8]]) -> Result<InodeIdx> {
        let mut dir = ROOT;
        for name in &parts[..parts.len() - 1] {
            let existing = self.children(dir).get(*name).copied();
            dir = match existing {
                Some(idx) if matches!(self.inodes[idx].kind, Kind::Dir(_)) => idx,
                Some(_) => {
                    return Err(Error::bad_entry(
                        path,
                        format!("'{}' is not a directory", String::from_utf8_lossy(name)),
                    ));
                }
                None => {
                    let meta = Meta {
                        mode: 0o755,
                        ..Meta::default()
                    };
                    self.link_new(
                        dir,
                        name,
                        Inode {
                            meta,
                            kind: Kind::Dir(BTreeMap::new()),
                            names: 1,
                        },
                    )
                }
            };
        }
        Ok(dir)
    }

    fn children(&mut self, dir: InodeIdx) -> &mut BTreeMap<Vec<u8>, InodeIdx> {
        match &mut self.inodes[dir].kind {
            Kind::Dir(children) => children,
            _ => unreachable!("parent_dir only walks directories"),
        }
    }

    fn link_new(&mut self, dir: InodeIdx, name: &[u8], inode: Inode) -> InodeIdx {
        let idx = self.inodes.len();
        self.inodes.push(inode);
        self.children(dir).insert(name.to_vec(), idx);
        idx
    }

    /// Add a directory, or update the metadata of one that exists (implicitly created or not).
    pub fn add_dir(&mut self, path: &[u8], meta: Meta) -> Result<()> {
        let parts = components(path)?;
        let dir = self.parent_dir(path, &parts)?;
        let name = parts[parts.len() - 1];
        if let Some(&idx) = self.children(dir).get(name)
            && matches!(self.inodes[idx].kind, Kind::Dir(_))
        {
            self.inodes[idx].meta = meta;
            return Ok(());
        }
        self.unlink(dir, name);
        self.link_new(
            dir,
            name,
            Inode {
                meta,
                kind: Kind::Dir(BTreeMap::new()),
                names: 1,
            },
        );
        Ok(())
    }

    /// Add a non-directory entry, replacing whatever had that name.
    pub fn add_leaf(&mut self, path: &[u8], meta: Meta, kind: Kind) -> Result<()> {
        let parts = components(path)?;
        let dir = self.parent_dir(path, &parts)?;
        let name = parts[parts.len() - 1];
        self.unlink(dir, name);
        self.link_new(
            dir,
            name,
            Inode {
                meta,
                kind,
                names: 1,
            },
        );
        Ok(())
    }

    pub fn add_hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let target_idx = self.lookup(target)?.ok_or_else(|| {
            Error::bad_entry(
                path,
                format!(
                    "hardlink target '{}' does not exist",
                    String::from_utf8_lossy(target)
                ),
            )
        })?;
        if matches!(self.inodes[target_idx].kind, Kind::Dir(_)) {
            return Err(Error::bad_entry(path, "hardlink to a directory"));
        }
        let parts = components(path)?;
        let dir = self.parent_dir(path, &parts)?;
        let name = parts[parts.len() - 1];
        if self.children(dir).get(name) == Some(&target_idx) {
            return Ok(());
        }
        self.unlink(dir, name);
        self.children(dir).insert(name.to_vec(), target_idx);
        self.inodes[target_idx].names += 1;
        Ok(())
    }

    fn lookup(&mut self, path: &[u8]) -> Result<Option<InodeIdx>> {
        let mut cur = ROOT;
        for name in components(path)? {
            match &self.inodes[cur].kind {
                Kind::Dir(children) => match children.get(name) {
                    Some(&idx) => cur = idx,
                    None => return Ok(None),
                },
                _ => return Ok(None),
            }
        }
        Ok(Some(cur))
    }

    /// Drop a name. The inode stays in the arena (unreachable ones are never written).
    fn unlink(&mut self, dir: InodeIdx, name: &[u8]) {
        if let Some(old) = self.children(dir).remove(name) {
            self.inodes[old].names = self.inodes[old].names.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(mode: u16) -> Meta {
        Meta {
            mode,
            ..Meta::default()
        }
    }

    fn names(tree: &Tree, dir: InodeIdx) -> Vec<String> {
        match &tree.inodes[dir].kind {
            Kind::Dir(c) => c
                .keys()
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect(),
            _ => panic!("not a dir"),
        }
    }

    #[test]
    fn rejects_escaping_and_absolute_paths() {
        for bad in [&b"../x"[..], b"/etc", b"a/../b", b"a/./b", b"", b"a\0b"] {
            assert!(
                components(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        assert_eq!(components(b"a//b/").unwrap(), vec![&b"a"[..], b"b"]);
    }

    #[test]
    fn implicit_parents_take_later_metadata() {
        let mut t = Tree::new();
        t.add_leaf(b"usr/bin/ls", meta(0o755), Kind::Symlink(b"x".to_vec()))
            .unwrap();
        t.add_dir(b"usr", meta(0o700)).unwrap();
        let usr = *match &t.inodes[ROOT].kind {
            Kind::Dir(c) => c.get(&b"usr"[..]).unwrap(),
            _ => unreachable!(),
        };
        assert_eq!(t.inodes[usr].meta.mode, 0o700);
        assert_eq!(names(&t, usr), ["bin"]);
    }

    #[test]
    fn hardlinks_share_an_inode_and_count_names() {
        let mut t = Tree::new();
        t.add_leaf(b"a", meta(0o644), Kind::Symlink(b"t".to_vec()))
            .unwrap();
        t.add_hardlink(b"b", b"a").unwrap();
        t.add_hardlink(b"d/c", b"a").unwrap();
        let a = t.lookup(b"a").unwrap().unwrap();
        assert_eq!(t.lookup(b"d/c").unwrap(), Some(a));
        assert_eq!(t.inodes[a].names, 3);
        assert!(t.add_hardlink(b"x", b"missing").is_err());
        assert!(t.add_hardlink(b"y", b"d").is_err());
        // Replacing one name drops the count.
        t.add_leaf(b"b", meta(0o600), Kind::Symlink(b"u".to_vec()))
            .unwrap();
        assert_eq!(t.inodes[a].names, 2);
    }

    #[test]
    fn a_file_in_the_way_of_a_parent_is_an_error() {
        let mut t = Tree::new();
        t.add_leaf(b"f", meta(0o644), Kind::Symlink(b"t".to_vec()))
            .unwrap();
        let err = t.add_dir(b"f/sub", meta(0o755)).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }
}
