//! Reading a safetensors file one tensor at a time: the header first, then each tensor's bytes
//! in file order. Loading a model this way peaks at the model plus its largest tensor, not at
//! twice the file (candle's `safetensors::load` reads the whole file into memory, then copies
//! every tensor out of it), and quantizing at load peaks at the quantized model plus one tensor.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use candle_core::{DType, Device, Tensor};
use serde::Deserialize;

use crate::{Error, Result};

/// Headers above this are refused (real ones are a few hundred KiB).
const MAX_HEADER_BYTES: u64 = 100 << 20;

#[derive(Deserialize)]
struct Entry {
    dtype: String,
    shape: Vec<usize>,
    data_offsets: (u64, u64),
}

fn dtype_of(name: &str) -> Option<DType> {
    Some(match name {
        "F32" => DType::F32,
        "F16" => DType::F16,
        "BF16" => DType::BF16,
        "F64" => DType::F64,
        "U8" => DType::U8,
        "U32" => DType::U32,
        "I64" => DType::I64,
        _ => return None,
    })
}

/// Calls `each` with every tensor of the file at `path`, in file order, on the CPU.
pub(crate) fn for_each_tensor(
    path: &Path,
    mut each: impl FnMut(String, Tensor) -> Result<()>,
) -> Result<()> {
    let bad = |reason: String| Error::Weights {
        path: path.to_path_buf(),
        reason,
    };
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes)
        .map_err(|e| bad(format!("no safetensors header: {e}")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > MAX_HEADER_BYTES || 8 + header_len > file_len {
        return Err(bad(format!(
            "header length {header_len} does not fit the file"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header)
        .map_err(|e| bad(format!("truncated header: {e}")))?;
    let mut entries: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    entries.remove("__metadata__");
    let mut tensors: Vec<(String, Entry)> = entries
        .into_iter()
        .map(|(name, value)| {
            serde_json::from_value::<Entry>(value)
                .map(|entry| (name.clone(), entry))
                .map_err(|e| bad(format!("header entry `{name}`: {e}")))
        })
        .collect::<Result<_>>()?;
    tensors.sort_by_key(|(_, entry)| entry.data_offsets.0);
    let data_start = 8 + header_len;
    for (name, entry) in tensors {
        let dtype = dtype_of(&entry.dtype)
            .ok_or_else(|| bad(format!("`{name}`: dtype {} is not supported", entry.dtype)))?;
        let (start, end) = entry.data_offsets;
        let elements: usize = entry.shape.iter().product();
        let expected = elements as u64 * dtype.size_in_bytes() as u64;
        if end < start || end - start != expected || data_start + end > file_len {
            return Err(bad(format!(
                "`{name}`: data offsets {start}..{end} do not hold a {:?} {} tensor in this file",
                entry.shape, entry.dtype
            )));
        }
        let mut bytes = vec![0u8; expected as usize];
        file.seek(SeekFrom::Start(data_start + start))
            .and_then(|_| file.read_exact(&mut bytes))
            .map_err(|e| bad(format!("`{name}`: {e}")))?;
        let tensor = Tensor::from_raw_buffer(&bytes, dtype, &entry.shape, &Device::Cpu)
            .map_err(|e| bad(format!("`{name}`: {e}")))?;
        drop(bytes);
        each(name, tensor)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_candle_writes_and_refuses_a_truncated_file() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let path = dir.path().join("t.safetensors");
        let a = Tensor::arange(0f32, 6.0, &Device::Cpu)?.reshape((2, 3))?;
        let b = Tensor::new(&[7u32, 8], &Device::Cpu)?;
        candle_core::safetensors::save(
            &std::collections::HashMap::from([("a".to_string(), a.clone()), ("b".to_string(), b)]),
            &path,
        )?;
        let mut seen = Vec::new();
        for_each_tensor(&path, |name, t| {
            seen.push((name, t.dims().to_vec()));
            Ok(())
        })?;
        seen.sort();
        assert_eq!(
            seen,
            [("a".to_string(), vec![2, 3]), ("b".to_string(), vec![2])]
        );
        let bytes = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
        std::fs::write(&path, &bytes[..bytes.len() - 4]).map_err(|e| Error::io(&path, e))?;
        assert!(for_each_tensor(&path, |_, _| Ok(())).is_err());
        Ok(())
    }
}
