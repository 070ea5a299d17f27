//! `unsquashfs -lln`: one line per inode in directory order, byte for byte as squashfs-tools
//! 4.5 prints it (numeric owners, local time, paths under `squashfs-root`).

use std::io::Write;

use super::reader::{Image, Inode, InodeKind};
use super::{Error, Result, Special};

unsafe extern "C" {
    /// POSIX tzset(3); the libc crate does not declare it.
    fn tzset();
}

/// unsquashfs' TOTALCHARS: owner, group and size are padded to this width together.
const TOTAL_CHARS: usize = 25;

/// How names are written into a listing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Names {
    /// The bytes as stored, as unsquashfs prints them: for scripts and pipes.
    Exact,
    /// Control characters and bytes that are not UTF-8 escaped (`\n`, `\x1b`): for a
    /// terminal, which a name must not drive.
    Escaped,
}

/// Write the listing of `image` to `out` (the names exact).
pub fn list(image: &Image, out: &mut dyn Write) -> Result<()> {
    list_with(image, out, Names::Exact)
}

/// Write the listing of `image` to `out`, names as `names` says.
pub fn list_with(image: &Image, out: &mut dyn Write, names: Names) -> Result<()> {
    // localtime_r does not promise to read TZ by itself; tzset makes it honour the environment.
    // SAFETY: tzset only (re)reads the TZ variable into libc's globals.
    unsafe { tzset() };
    image.walk(&mut |path, inode| {
        let line = listing_line(path, inode, names);
        out.write_all(&line)
            .map_err(|e| Error::io("write listing of", image.path(), e))
    })
}

/// One line of the listing, with its newline.
pub fn listing_line(path: &[u8], inode: &Inode, names: Names) -> Vec<u8> {
    let name = |bytes: &[u8]| match names {
        Names::Exact => bytes.to_vec(),
        Names::Escaped => crate::names::escape_bytes(bytes).into_bytes(),
    };
    let owner = inode.meta.uid.to_string();
    let group = inode.meta.gid.to_string();
    let mut line = format!("{} {owner}/{group} ", mode_string(inode.st_mode()));
    let used = owner.len() + group.len();
    match &inode.kind {
        InodeKind::Special(
            Special::CharDevice { major, minor } | Special::BlockDevice { major, minor },
        ) => {
            // unsquashfs prints the raw 32-bit device word as `(int)data >> 8, data & 0xff`,
            // which differs from major,minor for large minors; we print what it prints.
            let raw = crate::format::encode_dev(*major, *minor) as i32;
            let pad = TOTAL_CHARS.saturating_sub(used + 7).max(1);
            line.push_str(&format!("{:>pad$}{:3},{:3} ", " ", raw >> 8, raw & 0xff));
        }
        other => {
            let size: u64 = match other {
                InodeKind::Dir(d) => u64::from(d.size),
                InodeKind::File(f) => f.size,
                InodeKind::Symlink(t) => t.len() as u64,
                InodeKind::Special(_) => 0,
            };
            let pad = TOTAL_CHARS.saturating_sub(used);
            line.push_str(&format!("{size:>pad$} "));
        }
    }
    line.push_str(&format_time(inode.meta.mtime));
    line.push_str(" squashfs-root");
    let mut line = line.into_bytes();
    if !path.is_empty() {
        line.push(b'/');
        line.extend(name(path));
    }
    if let InodeKind::Symlink(target) = &inode.kind {
        line.extend_from_slice(b" -> ");
        line.extend(name(target));
    }
    line.push(b'\n');
    line
}

/// `drwxr-xr-x`-style permissions, with s/S and t/T for setuid, setgid and sticky.
pub fn mode_string(mode: u32) -> String {
    let kind = match mode & libc::S_IFMT {
        libc::S_IFDIR => 'd',
        libc::S_IFLNK => 'l',
        libc::S_IFCHR => 'c',
        libc::S_IFBLK => 'b',
        libc::S_IFIFO => 'p',
        libc::S_IFSOCK => 's',
        _ => '-',
    };
    let bit = |mask: u32, c: char| if mode & mask != 0 { c } else { '-' };
    let exec =
        |x: u32, special: u32, set: char, unset: char| match (mode & x != 0, mode & special != 0) {
            (true, true) => set,
            (false, true) => unset,
            (true, false) => 'x',
            (false, false) => '-',
        };
    [
        kind,
        bit(0o400, 'r'),
        bit(0o200, 'w'),
        exec(0o100, 0o4000, 's', 'S'),
        bit(0o040, 'r'),
        bit(0o020, 'w'),
        exec(0o010, 0o2000, 's', 'S'),
        bit(0o004, 'r'),
        bit(0o002, 'w'),
        exec(0o001, 0o1000, 't', 'T'),
    ]
    .iter()
    .collect()
}

/// `YYYY-MM-DD HH:MM` in the local time zone, as unsquashfs prints it.
fn format_time(mtime: u32) -> String {
    let t = libc::time_t::from(mtime);
    // SAFETY: localtime_r writes only into the `tm` we pass; a zeroed tm is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        return format!("{mtime}");
    }
    format!(
        "{}-{:02}-{:02} {:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reader::testutil::{is_root, mknod, mksquashfs, unsquashfs_lln};

    #[test]
    fn mode_strings_match_ls() {
        assert_eq!(mode_string(libc::S_IFDIR | 0o755), "drwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o4755), "-rwsr-xr-x");
        assert_eq!(mode_string(libc::S_IFREG | 0o6644), "-rwSr-Sr--");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1777), "drwxrwxrwt");
        assert_eq!(mode_string(libc::S_IFDIR | 0o1776), "drwxrwxrwT");
        assert_eq!(mode_string(libc::S_IFSOCK | 0o755), "srwxr-xr-x");
        assert_eq!(mode_string(libc::S_IFLNK | 0o777), "lrwxrwxrwx");
    }

    /// Names with control characters or bytes that are not UTF-8: exact for a pipe (as
    /// unsquashfs prints them), escaped for a terminal.
    #[test]
    fn names_are_exact_in_a_pipe_and_escaped_on_a_terminal() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let odd = b"line\nbreak\x1b[31mred\xff";
        std::fs::write(tree.join(std::ffi::OsStr::from_bytes(odd)), b"x").unwrap();
        std::os::unix::fs::symlink(std::ffi::OsStr::from_bytes(b"to\tthere"), tree.join("link"))
            .unwrap();
        let img = dir.path().join("odd.sqsh");
        mksquashfs(&tree, &img, &[]);
        let image = Image::open(&img).unwrap();
        let mut exact = Vec::new();
        list_with(&image, &mut exact, Names::Exact).unwrap();
        let theirs = std::process::Command::new("unsquashfs")
            .arg("-lln")
            .arg(&img)
            .output()
            .unwrap();
        assert!(theirs.status.success());
        assert_eq!(
            exact, theirs.stdout,
            "byte for byte, as unsquashfs prints them"
        );
        let mut escaped = Vec::new();
        list_with(&image, &mut escaped, Names::Escaped).unwrap();
        let escaped = String::from_utf8(escaped).unwrap();
        assert!(
            escaped.contains("squashfs-root/line\\nbreak\\x1b[31mred\\xff\n"),
            "{escaped}"
        );
        assert!(
            escaped.contains("squashfs-root/link -> to\\tthere\n"),
            "{escaped}"
        );
        assert_eq!(escaped.lines().count(), 3, "one line per entry: {escaped}");
        assert!(!escaped.contains('\x1b'));
    }

    /// Owner and group so long that unsquashfs' padding goes negative, devices with large
    /// numbers, a big sparse file: the columns still match byte for byte.
    #[test]
    fn wide_columns_match_unsquashfs() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir(&tree).unwrap();
        let big = std::fs::File::create(tree.join("big")).unwrap();
        big.set_len(5_000_000_000).unwrap();
        std::fs::write(tree.join("small"), b"x").unwrap();
        if is_root() {
            mknod(&tree.join("dev"), libc::S_IFCHR, 0o600, 4095, 1_000_000);
            mknod(&tree.join("dev2"), libc::S_IFBLK, 0o600, 0, 0);
            for (name, id) in [
                ("big", 4_000_000_000),
                ("small", 12_345_678),
                ("dev", 4_294_967_294),
            ] {
                std::os::unix::fs::lchown(tree.join(name), Some(id), Some(id)).unwrap();
            }
        }
        let img = dir.path().join("img");
        mksquashfs(&tree, &img, &[]);
        let image = Image::open(&img).unwrap();
        let mut out = Vec::new();
        list(&image, &mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), unsquashfs_lln(&img));
    }
}
