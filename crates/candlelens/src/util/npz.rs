//! Checking a NumPy `.npz` archive before reading it: every array's header (its dtype and
//! shape) must describe exactly the bytes the archive holds for it, so that a header that lies
//! about its shape is refused instead of asking for any amount of memory.

use std::io::{BufReader, Read};
use std::path::Path;

use crate::error::{LensError, Result};

fn bad(path: &Path, detail: impl Into<String>) -> LensError {
    LensError::CorruptFile {
        path: path.to_path_buf(),
        detail: detail.into(),
    }
}

/// The bytes per value of a NumPy dtype string (`<f4`, `<f2`, `|u1`, ...), if it is one a
/// tensor can hold.
fn width(descr: &str) -> Option<u64> {
    let d = descr.trim_start_matches(['<', '|', '=']);
    match d {
        "f8" | "i8" | "u8" => Some(8),
        "f4" | "i4" | "u4" => Some(4),
        "f2" | "i2" | "u2" => Some(2),
        "u1" | "i1" | "b1" => Some(1),
        _ => None,
    }
}

/// The quoted value after `'key':` in an npy header dictionary.
fn header_str<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let rest = &header[header.find(&format!("'{key}'"))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let rest = &rest[1..];
    Some(&rest[..rest.find(quote)?])
}

/// The shape tuple after `'shape':` in an npy header dictionary.
fn header_shape(header: &str) -> Option<Vec<u64>> {
    let rest = &header[header.find("'shape'")? + 7..];
    let rest = rest
        .trim_start()
        .strip_prefix(':')?
        .trim_start()
        .strip_prefix('(')?;
    rest[..rest.find(')')?]
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.trim_end_matches('L').parse().ok())
        .collect()
}

/// One array's header: its dtype string, shape and the header's length in bytes.
fn read_header(r: &mut impl Read) -> std::result::Result<(String, Vec<u64>, u64), String> {
    let mut pre = [0u8; 8];
    r.read_exact(&mut pre).map_err(|e| e.to_string())?;
    if &pre[..6] != b"\x93NUMPY" {
        return Err("not an npy array (no \\x93NUMPY magic)".into());
    }
    let (len, fixed) = if pre[6] == 1 {
        let mut b = [0u8; 2];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        (u64::from(u16::from_le_bytes(b)), 10)
    } else {
        let mut b = [0u8; 4];
        r.read_exact(&mut b).map_err(|e| e.to_string())?;
        (u64::from(u32::from_le_bytes(b)), 12)
    };
    // numpy writes headers of a few hundred bytes
    if len > 1 << 20 {
        return Err(format!("a header of {len} bytes"));
    }
    let mut header = Vec::new();
    r.take(len)
        .read_to_end(&mut header)
        .map_err(|e| e.to_string())?;
    let header = String::from_utf8_lossy(&header);
    let descr = header_str(&header, "descr").ok_or("a header without 'descr'")?;
    let shape = header_shape(&header).ok_or("a header without a readable 'shape'")?;
    Ok((descr.to_string(), shape, fixed + len))
}

/// Checks every array of the `.npz` at `path` against the bytes the archive stores for it.
///
/// # Errors
/// [`LensError::CorruptFile`] naming the array whose header and bytes disagree (or that cannot be
/// read); [`LensError::Unsupported`] for a compressed archive (`np.savez_compressed`), which
/// Candlelens does not read — re-save it with `np.savez`.
pub(crate) fn check(path: &Path) -> Result<()> {
    let file = crate::util::fs::open(path, "the npz file is missing")?;
    let file_len = file.metadata().map(|m| m.len()).unwrap_or(u64::MAX);
    let mut zip = zip::ZipArchive::new(BufReader::new(file))
        .map_err(|e| bad(path, format!("not a readable npz (zip) archive: {e}")))?;
    for i in 0..zip.len() {
        let mut entry = zip
            .by_index_raw(i)
            .map_err(|e| bad(path, format!("entry {i}: {e}")))?;
        let name = entry
            .name()
            .map(|n| n.to_string())
            .unwrap_or_else(|_| format!("entry {i}"));
        if entry.compression() != zip::CompressionMethod::Stored {
            return Err(LensError::Unsupported {
                what: format!("{}: {name} is compressed", path.display()),
                fix: "Candlelens reads npz files written by numpy.savez (uncompressed); load it with numpy and save it again with np.savez".into(),
            });
        }
        let size = entry.size();
        if size > file_len || size != entry.compressed_size() {
            return Err(bad(
                path,
                format!("{name} claims {size} bytes but the file has {file_len}"),
            ));
        }
        read_header(&mut entry)
            .and_then(|h| fits(h, size))
            .map_err(|e| bad(path, format!("{name}: {e}")))?;
    }
    Ok(())
}

/// Errors unless an array's header (dtype, shape, header length) describes exactly `stored`
/// bytes.
fn fits(
    (descr, shape, header): (String, Vec<u64>, u64),
    stored: u64,
) -> std::result::Result<(), String> {
    let w = width(&descr)
        .ok_or_else(|| format!("dtype {descr} is not a number type a tensor can hold"))?;
    let need = shape
        .iter()
        .try_fold(w, |acc, &d| acc.checked_mul(d))
        .and_then(|b| b.checked_add(header));
    if need == Some(stored) {
        return Ok(());
    }
    Err(format!(
        "the header says shape {shape:?} of {descr} ({} bytes with the header), but {stored} bytes are stored; the file is damaged or was not written by numpy: download or save it again",
        need.map_or("more than 2^64".to_string(), |n| n.to_string())
    ))
}

/// Checks that the `.npy` at `path` holds exactly the bytes its header describes, before a
/// reader allocates from that header.
///
/// # Errors
/// [`LensError::MissingFile`]; [`LensError::CorruptFile`] naming what disagrees.
pub(crate) fn check_npy(path: &Path) -> Result<()> {
    let file = crate::util::fs::open(path, "the .npy file is missing")?;
    let size = file.metadata().map_err(|e| LensError::io(path, e))?.len();
    read_header(&mut BufReader::new(file))
        .and_then(|h| fits(h, size))
        .map_err(|e| bad(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_read() {
        let h = "{'descr': '<f4', 'fortran_order': False, 'shape': (16384, 2304), }";
        assert_eq!(header_str(h, "descr"), Some("<f4"));
        assert_eq!(header_shape(h), Some(vec![16384, 2304]));
        assert_eq!(header_shape("{'shape': (7,), }"), Some(vec![7]));
        assert_eq!(header_shape("{'shape': (), }"), Some(vec![]));
        assert_eq!(width("<f2"), Some(2));
        assert_eq!(width("<U8"), None);
    }
}
