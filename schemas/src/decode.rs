//! Checked decoding of outside bytes: verifier limits and the typed decode error.

use flatbuffers::{InvalidFlatbuffer, VerifierOptions};

use crate::MAX_ENVELOPE_BYTES;

/// Why bytes from outside were not accepted as a FlatBuffers message of the catalog.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    /// The buffer is larger than the limit for its kind.
    #[error("buffer of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Length of the offered buffer.
        len: usize,
        /// The limit for this kind of buffer.
        max: usize,
    },
    /// The buffer does not carry the file identifier of the expected root table.
    #[error("expected a {expected} buffer (file identifier {identifier:?})")]
    WrongIdentifier {
        /// The expected root table.
        expected: &'static str,
        /// The expected 4-byte file identifier.
        identifier: &'static str,
    },
    /// The FlatBuffers verifier rejected the buffer (bad offsets, truncation, depth, ...).
    #[error("malformed {table} buffer: {source}")]
    Malformed {
        /// The root table being decoded.
        table: &'static str,
        /// The verifier's finding.
        #[source]
        source: InvalidFlatbuffer,
    },
    /// A required field is absent.
    #[error("{table}.{field} is missing")]
    MissingField {
        /// Table holding the field.
        table: &'static str,
        /// Field name.
        field: &'static str,
    },
    /// A fixed-length byte field has the wrong length.
    #[error("{field} must be {expected} bytes, got {actual}")]
    BadLength {
        /// Field name.
        field: &'static str,
        /// Required length.
        expected: usize,
        /// Length found.
        actual: usize,
    },
    /// A union tag outside the catalog (or NONE where a value is required).
    #[error("unknown {union} variant {tag}")]
    UnknownVariant {
        /// Union name.
        union: &'static str,
        /// The tag found.
        tag: u8,
    },
    /// An enum value outside the catalog.
    #[error("unknown {enum_name} value {value}")]
    UnknownEnum {
        /// Enum name.
        enum_name: &'static str,
        /// The value found.
        value: u8,
    },
    /// A field holds a value Theta never accepts (non-finite float, mismatched lengths, ...).
    #[error("invalid {field}: {reason}")]
    InvalidValue {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// Verifier limits for one kind of buffer.
///
/// Defaults are tight: the FlatBuffers crate's own defaults (1 GiB apparent size, a million
/// tables, depth 64) are far above anything Theta sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted buffer, in bytes.
    pub max_bytes: usize,
    /// Deepest nesting of tables (FlatBuffers verifier `max_depth`).
    pub max_depth: usize,
    /// Most tables in one buffer (FlatBuffers verifier `max_tables`).
    pub max_tables: usize,
}

impl Limits {
    /// Limits for a command body or envelope: 64 KiB, depth 8, 64 tables.
    pub const COMMAND: Limits = Limits { max_bytes: MAX_ENVELOPE_BYTES, max_depth: 8, max_tables: 64 };
    /// Limits for a stored log entry: the envelope plus 1 KiB of framing.
    pub const LOG_ENTRY: Limits = Limits { max_bytes: MAX_ENVELOPE_BYTES + 1024, max_depth: 4, max_tables: 8 };
    /// Limits for a component value: 64 KiB, depth 8, 4096 tables.
    pub const COMPONENT: Limits = Limits { max_bytes: MAX_ENVELOPE_BYTES, max_depth: 8, max_tables: 4096 };
    /// Limits for a live frame: 64 KiB, depth 8, 16384 tables.
    pub const FRAME: Limits = Limits { max_bytes: MAX_ENVELOPE_BYTES, max_depth: 8, max_tables: 16384 };

    pub(crate) fn verifier(&self) -> VerifierOptions {
        VerifierOptions {
            max_depth: self.max_depth,
            max_tables: self.max_tables,
            max_apparent_size: self.max_bytes,
            ignore_missing_null_terminator: false,
        }
    }

    /// Verifies `buf` as a root `T` with a file identifier, within these limits.
    pub(crate) fn root<'b, T>(
        &self,
        buf: &'b [u8],
        table: &'static str,
        identifier: Option<&'static str>,
    ) -> Result<T::Inner, DecodeError>
    where
        T: flatbuffers::Follow<'b> + flatbuffers::Verifiable + 'b,
    {
        if buf.len() > self.max_bytes {
            return Err(DecodeError::TooLarge { len: buf.len(), max: self.max_bytes });
        }
        if let Some(identifier) = identifier {
            // Root offset (4 bytes) then the 4-byte identifier.
            if buf.len() < 8 || &buf[4..8] != identifier.as_bytes() {
                return Err(DecodeError::WrongIdentifier { expected: table, identifier });
            }
        }
        flatbuffers::root_with_opts::<T>(&self.verifier(), buf)
            .map_err(|source| DecodeError::Malformed { table, source })
    }
}

/// Reads a required fixed-length byte vector.
pub(crate) fn fixed<const N: usize>(
    v: Option<flatbuffers::Vector<'_, u8>>,
    table: &'static str,
    field: &'static str,
) -> Result<[u8; N], DecodeError> {
    let v = v.ok_or(DecodeError::MissingField { table, field })?;
    v.bytes().try_into().map_err(|_| DecodeError::BadLength { field, expected: N, actual: v.len() })
}

/// Reads a required string.
pub(crate) fn string(v: Option<&str>, table: &'static str, field: &'static str) -> Result<String, DecodeError> {
    v.map(str::to_owned).ok_or(DecodeError::MissingField { table, field })
}

/// Rejects NaN and infinities, which would make state hashes ambiguous.
pub(crate) fn finite(values: &[f32], field: &'static str) -> Result<(), DecodeError> {
    if values.iter().all(|v| v.is_finite()) {
        Ok(())
    } else {
        Err(DecodeError::InvalidValue { field, reason: "must be finite" })
    }
}
