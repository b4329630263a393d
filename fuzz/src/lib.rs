//! Shared by the fuzz targets: how one fuzz input carries several payloads.

/// The payloads in `data`: each is a little-endian u16 length and that many bytes (fewer when
/// the input ends first). `tests/fuzz_seeds.rs` of `theta-live` writes seeds the same way.
pub fn pieces(mut data: &[u8]) -> impl Iterator<Item = &[u8]> {
    std::iter::from_fn(move || {
        if data.len() < 2 {
            return None;
        }
        let n = (u16::from_le_bytes([data[0], data[1]]) as usize).min(data.len() - 2);
        let (piece, rest) = data[2..].split_at(n);
        data = rest;
        Some(piece)
    })
}
