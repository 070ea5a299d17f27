//! The xattr table: an id table (one entry per distinct xattr set) pointing into a stream of
//! key/value pairs. Keys store a namespace number plus the name without its prefix; values may
//! be stored once and referenced from elsewhere (the out-of-line flag).

use super::Image;
use crate::format::{MetaRef, NO_TABLE, XATTR_NAME_MAX, XATTR_SIZE_MAX, xattr_type};
use crate::{Result, Xattr};

pub(super) struct XattrTable {
    /// Absolute start of the key/value stream.
    kv_start: u64,
    count: u32,
    /// Absolute offset of the array of id-table block pointers.
    pointers: u64,
}

/// Linux's limits, which the writer enforces too: an image from us always reads back.
const MAX_NAME: usize = XATTR_NAME_MAX;
const MAX_VALUE: u32 = XATTR_SIZE_MAX as u32;

impl XattrTable {
    pub(super) fn open(image: &Image) -> Result<Option<XattrTable>> {
        let at = image.sb.xattr_table;
        if at == NO_TABLE {
            return Ok(None);
        }
        let mut raw = [0u8; 16];
        image.read_exact_at(&mut raw, at, "xattr table header")?;
        let kv_start = u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default());
        let count = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        if kv_start >= at {
            return Err(image.corrupt(format!(
                "xattr table: key/value start {kv_start} is not before its id table at {at}"
            )));
        }
        Ok(Some(XattrTable {
            kv_start,
            count,
            pointers: at + 16,
        }))
    }
}

impl Image {
    /// The xattrs of xattr id `index`, with full names, sorted by name.
    pub(crate) fn read_xattrs(&self, index: u32) -> Result<Vec<Xattr>> {
        let Some(table) = &self.xattrs else {
            return Err(self.corrupt(format!(
                "an inode refers to xattr set {index} but the image has no xattr table"
            )));
        };
        let raw = self.lookup_entry(
            table.pointers,
            u64::from(table.count),
            16,
            u64::from(index),
            "xattr id table",
        )?;
        let kv_ref = MetaRef::unpack(u64::from_le_bytes(raw[0..8].try_into().unwrap_or_default()));
        let count = u32::from_le_bytes(raw[8..12].try_into().unwrap_or_default());
        let limit = self.sb.xattr_table;
        let mut m = self.meta_reader(table.kv_start, kv_ref, limit, "xattr table")?;
        // Each pair takes at least 9 bytes; a count beyond what a set could hold is damage.
        if count > 65536 {
            return Err(self.corrupt(format!("xattr set {index} claims {count} attributes")));
        }
        let mut out = Vec::with_capacity(count as usize);
        for _ in 0..count {
            let kind = m.u16()?;
            let name_len = m.u16()? as usize;
            if name_len == 0 || name_len > MAX_NAME {
                return Err(self.corrupt(format!("xattr set {index}: bad name length {name_len}")));
            }
            let suffix = m.bytes(name_len)?;
            let prefix: &[u8] = match kind & !xattr_type::VALUE_OOL {
                xattr_type::USER => b"user.",
                xattr_type::TRUSTED => b"trusted.",
                xattr_type::SECURITY => b"security.",
                other => {
                    return Err(
                        self.corrupt(format!("xattr set {index}: unknown namespace {other}"))
                    );
                }
            };
            if prefix.len() + name_len > MAX_NAME {
                return Err(self.corrupt(format!(
                    "xattr set {index}: name of {} bytes (at most {MAX_NAME})",
                    prefix.len() + name_len
                )));
            }
            let mut name = prefix.to_vec();
            name.extend_from_slice(&suffix);
            let value = if kind & xattr_type::VALUE_OOL != 0 {
                let size = m.u32()?;
                if size != 8 {
                    return Err(self.corrupt(format!(
                        "xattr set {index}: out-of-line reference of size {size}"
                    )));
                }
                let at = MetaRef::unpack(m.u64()?);
                let mut v = self.meta_reader(table.kv_start, at, limit, "xattr table")?;
                self.read_value(&mut v, index)?
            } else {
                self.read_value(&mut m, index)?
            };
            out.push(Xattr { name, value });
        }
        out.sort();
        Ok(out)
    }

    fn read_value(&self, m: &mut super::meta::MetaReader<'_>, index: u32) -> Result<Vec<u8>> {
        let size = m.u32()?;
        if size > MAX_VALUE {
            return Err(self.corrupt(format!(
                "xattr set {index}: value of {size} bytes (at most {MAX_VALUE})"
            )));
        }
        m.bytes(size as usize)
    }
}
