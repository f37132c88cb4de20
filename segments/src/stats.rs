use serde::{Deserialize, Serialize};
use sluice_config::ColumnType;

use crate::types::{Key, KeyRef, Scalar};

/// Per-column statistics, kept live while consuming and stored with every
/// sealed segment; pruning decides from them alone.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ColumnStats {
    /// Smallest non-null value in the total order (None when all are NULL).
    pub min: Option<Scalar>,
    pub max: Option<Scalar>,
    pub null_count: u64,
    /// Exact number of distinct non-null values (sealed segments only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distinct_count: Option<u64>,
}

impl ColumnStats {
    /// `(min, max)` as index keys of a column of type `ty`.
    pub fn key_range(&self, ty: ColumnType) -> Option<(Key, Key)> {
        let min = self.min.as_ref()?.key_for(ty).ok()??;
        let max = self.max.as_ref()?.key_for(ty).ok()??;
        Some((min, max))
    }
}

/// Min/max tracking in key space, converted to scalars on demand.
#[derive(Debug, Clone, Default)]
pub(crate) struct LiveStats {
    pub min: Option<Key>,
    pub max: Option<Key>,
}

impl LiveStats {
    pub fn observe(&mut self, key: KeyRef<'_>) {
        if self.min.as_ref().is_none_or(|m| key < m.as_key_ref()) {
            self.min = Some(key.to_key());
        }
        if self.max.as_ref().is_none_or(|m| key > m.as_key_ref()) {
            self.max = Some(key.to_key());
        }
    }

    pub fn to_stats(&self, ty: ColumnType, null_count: u64) -> ColumnStats {
        ColumnStats {
            min: self.min.as_ref().map(|k| Scalar::from_key(k, ty)),
            max: self.max.as_ref().map(|k| Scalar::from_key(k, ty)),
            null_count,
            distinct_count: None,
        }
    }
}
