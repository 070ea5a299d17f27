//! Turning the finished namespace into SquashFS tables.
//!
//! Order matters twice. Inodes are written children first (a directory's listing must know
//! where its children's inodes are, and its own inode where its listing is), so inode numbers
//! are assigned in a first pass over the same order, because a directory inode also names its
//! parent. And the tables are laid out in the order the kernel checks: inodes, directories,
//! fragments, export, ids, xattrs.

use std::collections::HashMap;
use std::io;

use super::super::compress::Compressor;
use super::super::format::{
    DIR_HEADER_MAX_ENTRIES, METADATA_SIZE, MetaRef, NO_FRAGMENT, NO_TABLE, NO_XATTR, Superblock,
    inode_type, put_u16, put_u32, put_u64,
};
use super::super::metadata::{MetaWriter, lookup_table};
use super::super::{Special, Xattr};
use super::WriterOptions;
use super::data::{DataLayout, FileData};
use super::tree::{InodeIdx, Kind, ROOT, Tree};

pub(crate) enum BuildError {
    Io(io::Error),
    Limit(String),
}

impl From<io::Error> for BuildError {
    fn from(e: io::Error) -> Self {
        BuildError::Io(e)
    }
}

type BResult<T> = std::result::Result<T, BuildError>;

pub(crate) struct Built {
    pub superblock: Superblock,
    pub tables: Tables,
}

pub(crate) struct Tables {
    compressor: Compressor,
    inodes: Vec<u8>,
    dirs: Vec<u8>,
    fragments: Vec<u8>,
    export: Option<Vec<u8>>,
    ids: Vec<u8>,
    xattrs: Option<XattrBytes>,
}

/// The xattr key/value stream, the raw id entries, and how many ids there are.
struct XattrBytes {
    kv: Vec<u8>,
    ids: Vec<u8>,
    count: u32,
}

#[derive(Clone, Copy)]
enum Visit {
    Leaf(InodeIdx),
    DirDone(InodeIdx),
}

/// Children of every directory, visited in name order; each directory after its contents.
fn post_order(tree: &Tree) -> (Vec<Visit>, HashMap<InodeIdx, InodeIdx>) {
    let mut order = Vec::with_capacity(tree.inodes.len());
    let mut parent = HashMap::new();
    let children_of = |idx: InodeIdx| -> Vec<InodeIdx> {
        match &tree.inodes[idx].kind {
            Kind::Dir(c) => c.values().copied().collect(),
            _ => Vec::new(),
        }
    };
    let mut stack = vec![(ROOT, children_of(ROOT), 0usize)];
    while let Some((dir, children, pos)) = stack.last_mut() {
        if *pos == children.len() {
            order.push(Visit::DirDone(*dir));
            stack.pop();
            continue;
        }
        let child = children[*pos];
        *pos += 1;
        if matches!(tree.inodes[child].kind, Kind::Dir(_)) {
            parent.insert(child, *dir);
            let grandchildren = children_of(child);
            stack.push((child, grandchildren, 0));
        } else {
            order.push(Visit::Leaf(child));
        }
    }
    (order, parent)
}

fn basic_type(kind: &Kind) -> u16 {
    match kind {
        Kind::Dir(_) => inode_type::DIR,
        Kind::File(_) => inode_type::FILE,
        Kind::Symlink(_) => inode_type::SYMLINK,
        Kind::Special(Special::BlockDevice { .. }) => inode_type::BLKDEV,
        Kind::Special(Special::CharDevice { .. }) => inode_type::CHRDEV,
        Kind::Special(Special::Fifo) => inode_type::FIFO,
        Kind::Special(Special::Socket) => inode_type::SOCKET,
    }
}

struct Builder<'a> {
    tree: &'a Tree,
    layout: &'a DataLayout,
    opts: &'a WriterOptions,
    numbers: Vec<u32>,
    refs: Vec<Option<MetaRef>>,
    inode_w: MetaWriter,
    dir_w: MetaWriter,
    ids: Vec<u32>,
    id_index: HashMap<u32, u16>,
    xattrs: XattrTable,
}

pub(crate) fn build(tree: &Tree, layout: &DataLayout, opts: &WriterOptions) -> BResult<Built> {
    let (order, parent) = post_order(tree);
    let mut b = Builder {
        tree,
        layout,
        opts,
        numbers: vec![0; tree.inodes.len()],
        refs: vec![None; tree.inodes.len()],
        inode_w: MetaWriter::new(Some(opts.compressor)),
        dir_w: MetaWriter::new(Some(opts.compressor)),
        ids: Vec::new(),
        id_index: HashMap::new(),
        xattrs: XattrTable::new(opts.compressor),
    };
    let mut count = 0u32;
    for v in &order {
        let (Visit::Leaf(idx) | Visit::DirDone(idx)) = *v;
        if b.numbers[idx] == 0 {
            count += 1;
            b.numbers[idx] = count;
        }
    }
    for v in &order {
        match *v {
            Visit::Leaf(idx) if b.refs[idx].is_none() => {
                b.refs[idx] = Some(b.inode_w.position());
                b.write_leaf(idx)?;
            }
            Visit::Leaf(_) => {}
            Visit::DirDone(idx) => {
                let parent_number = parent.get(&idx).map_or(count + 1, |p| b.numbers[*p]);
                b.write_dir(idx, parent_number)?;
            }
        }
    }
    let root = b.refs[ROOT].unwrap_or_default();
    let export = if opts.exportable {
        let mut e = vec![0u8; count as usize * 8];
        for (idx, r) in b.refs.iter().enumerate() {
            if let Some(r) = r {
                let n = b.numbers[idx] as usize - 1;
                e[n * 8..n * 8 + 8].copy_from_slice(&r.pack().to_le_bytes());
            }
        }
        Some(e)
    } else {
        None
    };
    let mut fragments = Vec::with_capacity(layout.fragments.len() * 16);
    for f in &layout.fragments {
        put_u64(&mut fragments, f.start);
        put_u32(&mut fragments, f.size);
        put_u32(&mut fragments, 0);
    }
    let mut ids = Vec::with_capacity(b.ids.len() * 4);
    for id in &b.ids {
        put_u32(&mut ids, *id);
    }
    let superblock = Superblock {
        inode_count: count,
        fragment_count: layout.fragments.len() as u32,
        id_count: b.ids.len() as u16,
        root_inode: root.pack(),
        ..Superblock::default()
    };
    let id_count = b.ids.len();
    if id_count > 65536 {
        return Err(BuildError::Limit(format!(
            "{id_count} distinct uids/gids; SquashFS stores at most 65536"
        )));
    }
    let xattrs = b.xattrs.finish()?;
    Ok(Built {
        superblock,
        tables: Tables {
            compressor: opts.compressor,
            inodes: b.inode_w.finish()?,
            dirs: b.dir_w.finish()?,
            fragments,
            export,
            ids,
            xattrs,
        },
    })
}

impl Builder<'_> {
    fn id(&mut self, id: u32) -> u16 {
        if let Some(&i) = self.id_index.get(&id) {
            return i;
        }
        let i = self.ids.len() as u16;
        self.ids.push(id);
        self.id_index.insert(id, i);
        i
    }

    /// The 16-byte header every inode starts with.
    fn header(&mut self, idx: InodeIdx, itype: u16) -> Vec<u8> {
        let inode = &self.tree.inodes[idx];
        let meta = &inode.meta;
        // Permission bits only, as mksquashfs writes them: the inode type says what it is, and
        // recent kernels reject inodes whose mode carries type bits.
        let mode = meta.mode & 0o7777;
        let (uid, gid, mtime) = (meta.uid, meta.gid, meta.mtime);
        let mut b = Vec::with_capacity(64);
        put_u16(&mut b, itype);
        put_u16(&mut b, mode);
        let uid_i = self.id(uid);
        let gid_i = self.id(gid);
        put_u16(&mut b, uid_i);
        put_u16(&mut b, gid_i);
        put_u32(&mut b, mtime);
        put_u32(&mut b, self.numbers[idx]);
        b
    }

    fn xattr_id(&mut self, idx: InodeIdx) -> BResult<u32> {
        let x = &self.tree.inodes[idx].meta.xattrs;
        if !self.opts.xattrs || x.is_empty() {
            return Ok(NO_XATTR);
        }
        self.xattrs.id_for(x)
    }

    fn write_leaf(&mut self, idx: InodeIdx) -> BResult<()> {
        let xattr = self.xattr_id(idx)?;
        let inode = &self.tree.inodes[idx];
        let nlink = inode.names.max(1);
        let basic = basic_type(&inode.kind);
        let extended = xattr != NO_XATTR;
        let rec = match &inode.kind {
            Kind::File(f) => self.file_inode(idx, f, nlink, xattr),
            Kind::Symlink(target) => {
                let target = target.clone();
                let mut b = self.header(
                    idx,
                    if extended {
                        inode_type::LSYMLINK
                    } else {
                        basic
                    },
                );
                put_u32(&mut b, nlink);
                put_u32(&mut b, target.len() as u32);
                b.extend_from_slice(&target);
                if extended {
                    put_u32(&mut b, xattr);
                }
                b
            }
            Kind::Special(s) => {
                let s = *s;
                let mut b = self.header(idx, if extended { basic + 7 } else { basic });
                put_u32(&mut b, nlink);
                match s {
                    Special::BlockDevice { major, minor }
                    | Special::CharDevice { major, minor } => {
                        put_u32(&mut b, super::super::format::encode_dev(major, minor));
                    }
                    Special::Fifo | Special::Socket => {}
                }
                if extended {
                    put_u32(&mut b, xattr);
                }
                b
            }
            Kind::Dir(_) => unreachable!("directories are written by write_dir"),
        };
        self.inode_w.write(&rec)?;
        Ok(())
    }

    fn file_inode(&mut self, idx: InodeIdx, f: &FileData, nlink: u32, xattr: u32) -> Vec<u8> {
        let (start, sizes) = match f.run {
            Some(r) => {
                let run = &self.layout.runs[r as usize];
                (run.start, run.sizes.as_slice())
            }
            None => (0, &[][..]),
        };
        let (frag_index, frag_offset) = f
            .fragment
            .map_or((NO_FRAGMENT, 0), |fr| (fr.index, fr.offset));
        let basic = nlink == 1
            && xattr == NO_XATTR
            && f.sparse == 0
            && start <= u64::from(u32::MAX)
            && f.size <= u64::from(u32::MAX);
        let mut b;
        if basic {
            b = self.header(idx, inode_type::FILE);
            put_u32(&mut b, start as u32);
            put_u32(&mut b, frag_index);
            put_u32(&mut b, frag_offset);
            put_u32(&mut b, f.size as u32);
        } else {
            b = self.header(idx, inode_type::LREG);
            put_u64(&mut b, start);
            put_u64(&mut b, f.size);
            put_u64(&mut b, f.sparse);
            put_u32(&mut b, nlink);
            put_u32(&mut b, frag_index);
            put_u32(&mut b, frag_offset);
            put_u32(&mut b, xattr);
        }
        for s in sizes {
            put_u32(&mut b, *s);
        }
        b
    }

    fn write_dir(&mut self, idx: InodeIdx, parent: u32) -> BResult<()> {
        let Kind::Dir(children) = &self.tree.inodes[idx].kind else {
            unreachable!("DirDone visits only directories")
        };
        let mut entries = Vec::with_capacity(children.len());
        let mut subdirs = 0u32;
        for (name, &child) in children {
            let Some(r) = self.refs[child] else {
                return Err(BuildError::Limit(
                    "internal: child inode not written before its directory".into(),
                ));
            };
            let t = basic_type(&self.tree.inodes[child].kind);
            subdirs += u32::from(t == inode_type::DIR);
            entries.push(DirEntry {
                name: name.as_slice(),
                inode: r,
                number: self.numbers[child],
                itype: t,
            });
        }
        let start = self.dir_w.position();
        let (index, listing_len) = write_listing(&mut self.dir_w, &entries)?;
        let xattr = self.xattr_id(idx)?;
        let nlink = 2 + subdirs;
        let file_size = listing_len + 3;
        let extended = xattr != NO_XATTR
            || !index.is_empty()
            || file_size > 0xFFFF
            || start.block > u64::from(u32::MAX);
        let mut b;
        if extended {
            b = self.header(idx, inode_type::LDIR);
            put_u32(&mut b, nlink);
            put_u32(&mut b, file_size);
            put_u32(&mut b, start.block as u32);
            put_u32(&mut b, parent);
            put_u16(&mut b, index.len() as u16);
            put_u16(&mut b, start.offset);
            put_u32(&mut b, xattr);
            for i in &index {
                put_u32(&mut b, i.offset);
                put_u32(&mut b, i.block);
                put_u32(&mut b, i.name.len() as u32 - 1);
                b.extend_from_slice(i.name);
            }
        } else {
            b = self.header(idx, inode_type::DIR);
            put_u32(&mut b, start.block as u32);
            put_u32(&mut b, nlink);
            put_u16(&mut b, file_size as u16);
            put_u16(&mut b, start.offset);
            put_u32(&mut b, parent);
        }
        self.refs[idx] = Some(self.inode_w.position());
        self.inode_w.write(&b)?;
        Ok(())
    }
}

struct DirEntry<'a> {
    name: &'a [u8],
    inode: MetaRef,
    number: u32,
    itype: u16,
}

struct IndexEntry<'a> {
    offset: u32,
    block: u32,
    name: &'a [u8],
}

/// Write a directory listing: runs of entries behind headers. A header covers at most 256
/// entries whose inodes share one metadata block and whose numbers are within ±32767 of its
/// base. As mksquashfs does, a new header also starts whenever the listing since the last
/// indexed header would exceed 8 KiB, and that header gets an index entry, so the kernel can
/// skip to it in big directories. Returns the index and the listing's length.
fn write_listing<'a>(
    w: &mut MetaWriter,
    entries: &[DirEntry<'a>],
) -> BResult<(Vec<IndexEntry<'a>>, u32)> {
    let mut listing = Vec::new();
    let mut marks: Vec<(u32, &'a [u8])> = Vec::new();
    let mut header: Option<(usize, MetaRef, u32, u32)> = None; // (count field at, inode block, base, count)
    let mut indexed_at = 0usize;
    for e in entries {
        let entry_end = listing.len() + 8 + e.name.len();
        let too_long = header.is_some() && entry_end - indexed_at > METADATA_SIZE;
        let fits = header.is_some_and(|(_, r, base, count)| {
            let diff = i64::from(e.number) - i64::from(base);
            (count as usize) < DIR_HEADER_MAX_ENTRIES
                && r.block == e.inode.block
                && (-32768..=32767).contains(&diff)
        });
        if !fits || too_long {
            if too_long {
                marks.push((listing.len() as u32, e.name));
                indexed_at = listing.len();
            }
            let at = listing.len();
            put_u32(&mut listing, 0);
            put_u32(&mut listing, e.inode.block as u32);
            put_u32(&mut listing, e.number);
            header = Some((at, e.inode, e.number, 0));
        }
        let Some((at, _, base, count)) = header.as_mut() else {
            unreachable!("a header was just opened")
        };
        put_u16(&mut listing, e.inode.offset);
        listing.extend_from_slice(&((i64::from(e.number) - i64::from(*base)) as i16).to_le_bytes());
        put_u16(&mut listing, e.itype);
        put_u16(&mut listing, e.name.len() as u16 - 1);
        listing.extend_from_slice(e.name);
        // The stored count is one less than the number of entries.
        listing[*at..*at + 4].copy_from_slice(&count.to_le_bytes());
        *count += 1;
    }
    // Write in pieces so each indexed header's metadata block is known when it is reached.
    let mut index = Vec::with_capacity(marks.len());
    let mut written = 0usize;
    for (offset, name) in marks {
        w.write(&listing[written..offset as usize])?;
        written = offset as usize;
        index.push(IndexEntry {
            offset,
            block: w.position().block as u32,
            name,
        });
    }
    w.write(&listing[written..])?;
    Ok((index, listing.len() as u32))
}

/// Xattr sets, deduplicated, with values that occur more than once stored out of line.
struct XattrTable {
    kv: MetaWriter,
    ids: Vec<u8>,
    sets: HashMap<Vec<Xattr>, u32>,
    values: HashMap<Vec<u8>, MetaRef>,
    count: u32,
}

fn split_prefix(name: &[u8]) -> Option<(u16, &[u8])> {
    use super::super::format::xattr_type::{SECURITY, TRUSTED, USER};
    for (prefix, t) in [
        (&b"user."[..], USER),
        (b"trusted.", TRUSTED),
        (b"security.", SECURITY),
    ] {
        if let Some(rest) = name.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return Some((t, rest));
        }
    }
    None
}

impl XattrTable {
    fn new(compressor: Compressor) -> Self {
        XattrTable {
            kv: MetaWriter::new(Some(compressor)),
            ids: Vec::new(),
            sets: HashMap::new(),
            values: HashMap::new(),
            count: 0,
        }
    }

    fn id_for(&mut self, set: &[Xattr]) -> BResult<u32> {
        if let Some(&id) = self.sets.get(set) {
            return Ok(id);
        }
        let start = self.kv.position();
        let mut size = 0u32;
        for x in set {
            let Some((t, key)) = split_prefix(&x.name) else {
                return Err(BuildError::Limit(format!(
                    "xattr '{}' is outside the user., trusted. and security. namespaces SquashFS can store",
                    String::from_utf8_lossy(&x.name)
                )));
            };
            let mut b = Vec::with_capacity(16 + key.len() + x.value.len());
            let earlier = self.values.get(&x.value).copied();
            let ool = earlier.is_some() && x.value.len() > 8;
            put_u16(
                &mut b,
                if ool {
                    t | super::super::format::xattr_type::VALUE_OOL
                } else {
                    t
                },
            );
            put_u16(&mut b, key.len() as u16);
            b.extend_from_slice(key);
            self.kv.write(&b)?;
            match earlier {
                Some(r) if ool => {
                    let mut v = Vec::with_capacity(12);
                    put_u32(&mut v, 8);
                    put_u64(&mut v, r.pack());
                    self.kv.write(&v)?;
                }
                _ => {
                    let at = self.kv.position();
                    let mut v = Vec::with_capacity(4 + x.value.len());
                    put_u32(&mut v, x.value.len() as u32);
                    v.extend_from_slice(&x.value);
                    self.kv.write(&v)?;
                    self.values.entry(x.value.clone()).or_insert(at);
                }
            }
            size += (x.name.len() + x.value.len()) as u32;
        }
        let id = self.count;
        put_u64(&mut self.ids, start.pack());
        put_u32(&mut self.ids, set.len() as u32);
        put_u32(&mut self.ids, size);
        self.count += 1;
        self.sets.insert(set.to_vec(), id);
        Ok(id)
    }

    fn finish(self) -> BResult<Option<XattrBytes>> {
        if self.count == 0 {
            return Ok(None);
        }
        Ok(Some(XattrBytes {
            kv: self.kv.finish()?,
            ids: self.ids,
            count: self.count,
        }))
    }
}

impl Tables {
    /// Lay the tables out from absolute offset `start`, returning their bytes and filling in
    /// the superblock's table offsets.
    pub fn place(&self, start: u64, sb: &mut Superblock) -> io::Result<Vec<u8>> {
        let c = Some(self.compressor);
        let mut out = Vec::new();
        sb.inode_table = start;
        out.extend_from_slice(&self.inodes);
        sb.directory_table = start + out.len() as u64;
        out.extend_from_slice(&self.dirs);
        // With no fragments the table is empty but its offset is still set, as mksquashfs does.
        let (frag, at) = lookup_table(&self.fragments, start + out.len() as u64, c)?;
        out.extend_from_slice(&frag);
        sb.fragment_table = at;
        sb.export_table = NO_TABLE;
        if let Some(export) = &self.export {
            let (bytes, at) = lookup_table(export, start + out.len() as u64, c)?;
            out.extend_from_slice(&bytes);
            sb.export_table = at;
        }
        let (ids, at) = lookup_table(&self.ids, start + out.len() as u64, c)?;
        out.extend_from_slice(&ids);
        sb.id_table = at;
        sb.xattr_table = NO_TABLE;
        if let Some(XattrBytes {
            kv,
            ids: id_entries,
            count,
        }) = &self.xattrs
        {
            let kv_start = start + out.len() as u64;
            out.extend_from_slice(kv);
            let (blocks, _) = lookup_table(id_entries, start + out.len() as u64, c)?;
            let pointers_len = id_entries.len().div_ceil(METADATA_SIZE) * 8;
            let entries_len = blocks.len() - pointers_len;
            out.extend_from_slice(&blocks[..entries_len]);
            sb.xattr_table = start + out.len() as u64;
            put_u64(&mut out, kv_start);
            put_u32(&mut out, *count);
            put_u32(&mut out, 0);
            out.extend_from_slice(&blocks[entries_len..]);
        }
        Ok(out)
    }
}
